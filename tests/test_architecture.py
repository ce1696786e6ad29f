"""The shape of the code, checked over the import graph (``ast`` over components/visionops, lazy imports
included): dependencies point one way, from adapters to the library, and functions stay short.

Adapters (what turns the library into a program or a service), named explicitly:
* every ``cli.py`` module and ``visionops.__main__`` (the Typer commands),
* the KFP component and pipeline modules under ``visionops.pipeline`` (found by their ``@dsl.component`` /
  ``@dsl.pipeline`` decorators, so a new one is covered without editing this file),
* the HTTP services: ``visionops.serving.service`` (BentoML) and ``visionops.drift.service`` (the drift
  sidecar),
* ``visionops.demo`` (the closed loop on a laptop).
Everything else is the library. The library never imports an adapter, with one stated exception: modules of
``visionops.pipeline`` compile, run and submit the pipeline definitions, so they may import those (never a
CLI, a service or the demo).
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "components"
PACKAGE = "visionops"
DEMO = "visionops.demo"
PIPELINE = "visionops.pipeline"

#: The HTTP service modules (adapters by name).
SERVICES = {
    "visionops.serving.service": "the BentoML service (`visionops serve`)",
    "visionops.drift.service": "the drift sidecar's HTTP service (`visionops monitor`)",
}

#: KFP decorators that make a module an adapter (``dsl.<name>``).
KFP_DECORATORS = {"component", "container_component", "pipeline"}

MAX_FUNCTION_LINES = 100

#: Functions allowed over MAX_FUNCTION_LINES: declarative tables only, each with the reason it reads as one.
LONG_FUNCTIONS = {
    "visionops.experiments.analysis.render_html": "HTML template of the experiment report: one section "
    "after another",
    "visionops.pipeline.training.build_training_pipeline": "the training pipeline's graph: one KFP task per "
    "stage wired to the previous one's outputs, in DAG order",
}


# -- the scan ---------------------------------------------------------------------------------------------------
@cache
def modules() -> dict[str, Path]:
    """Every module of the package: dotted name -> file (a package is named by its ``__init__.py``)."""
    out = {}
    for path in sorted((PACKAGE_ROOT / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(PACKAGE_ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` names (relative imports resolved against ``module``)."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imported_names(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module name an import in ``source`` may refer to, at any depth (``from a import b`` gives a
    and a.b: b may be a submodule)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, is_package, node)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _known(name: str) -> str | None:
    """The longest prefix of ``name`` that is a module of the package (``a.b.func`` -> ``a.b``)."""
    known = modules()
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


@cache
def import_graph() -> dict[str, frozenset[str]]:
    """module -> the package's modules it imports (itself excluded)."""
    graph = {}
    for name, path in modules().items():
        targets = {_known(n) for n in imported_names(path.read_text(), name, path.name == "__init__.py")}
        graph[name] = frozenset(t for t in targets if t and t != name)
    return graph


def _defines_kfp_component(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef):
            for decorator in node.decorator_list:
                target = decorator.func if isinstance(decorator, ast.Call) else decorator
                if (
                    isinstance(target, ast.Attribute)
                    and target.attr in KFP_DECORATORS
                    and isinstance(target.value, ast.Name)
                    and target.value.id == "dsl"
                ):
                    return True
    return False


@cache
def kfp_definition_modules() -> frozenset[str]:
    """The modules under visionops.pipeline that define KFP components or pipelines."""
    return frozenset(
        name
        for name, path in modules().items()
        if name.startswith(PIPELINE + ".") and _defines_kfp_component(path)
    )


def is_adapter(name: str) -> bool:
    """Whether module ``name`` is an adapter (see the module docstring)."""
    return (
        name.rpartition(".")[2] == "cli"
        or name == f"{PACKAGE}.__main__"
        or name == DEMO
        or name.startswith(DEMO + ".")
        or name in SERVICES
        or name in kfp_definition_modules()
    )


def _may_import(importer: str, adapter: str) -> bool:
    """The stated exception: pipeline modules compile, run and submit the pipeline definitions."""
    return importer.startswith(PIPELINE + ".") and adapter in kfp_definition_modules()


def function_lengths() -> dict[str, int]:
    """Qualified name (``module.Class.function``) -> lines from ``def`` to the last line of the body."""
    out = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                qualified = f"{prefix}.{child.name}"
                if not isinstance(child, ast.ClassDef):
                    out[qualified] = child.end_lineno - child.lineno + 1
                visit(child, qualified)
            else:
                visit(child, prefix)

    for name, path in modules().items():
        visit(ast.parse(path.read_text()), name)
    return out


# -- the scan itself is right -----------------------------------------------------------------------------------
def test_the_scan_resolves_relative_lazy_and_submodule_imports():
    source = (
        "from . import sibling\n"
        "from ..errors import ConfigError\n"
        "def f():\n"
        "    import visionops.demo.launcher\n"
        "    from visionops.pipeline import training\n"
    )
    names = imported_names(source, "visionops.drift.trigger")
    assert {"visionops.drift.sibling", "visionops.errors.ConfigError"} <= names
    assert {"visionops.demo.launcher", "visionops.pipeline.training"} <= names
    assert imported_names("from . import x\n", "visionops.drift", is_package=True) == {
        "visionops.drift",
        "visionops.drift.x",
    }
    assert _known("visionops.errors.ConfigError") == "visionops.errors"


def test_the_named_adapters_exist():
    """Every adapter named here is a real module, so the rules below are not vacuous."""
    known = modules()
    missing = sorted(name for name in SERVICES if name not in known)
    assert not missing, f"service modules named in SERVICES do not exist: {missing}"
    definitions = kfp_definition_modules()
    assert {f"{PIPELINE}.components", f"{PIPELINE}.training"} <= definitions, sorted(definitions)
    assert f"{PACKAGE}.cli" in known and DEMO in known
    assert all(is_adapter(name) for name in definitions | set(SERVICES))
    assert not is_adapter(f"{PACKAGE}.bundle") and not is_adapter(f"{PIPELINE}.submit")


# -- the rules ----------------------------------------------------------------------------------------------------
def test_nothing_outside_the_demo_imports_the_demo():
    offenders = sorted(
        f"{name} imports {target}"
        for name, targets in import_graph().items()
        if not (name == DEMO or name.startswith(DEMO + "."))
        for target in targets
        if target == DEMO or target.startswith(DEMO + ".")
    )
    assert not offenders, "only visionops.demo may import visionops.demo:\n  " + "\n  ".join(offenders)


def test_the_library_never_imports_an_adapter():
    offenders = sorted(
        f"{name} imports {target}"
        for name, targets in import_graph().items()
        if not is_adapter(name)
        for target in targets
        if is_adapter(target) and not _may_import(name, target)
    )
    assert not offenders, "library modules importing adapters (CLI, KFP components, services, demo):\n  " + (
        "\n  ".join(offenders)
    )


def test_no_function_is_over_100_lines_except_declarative_tables():
    lengths = function_lengths()
    too_long = sorted(
        f"{name}: {n} lines"
        for name, n in lengths.items()
        if n > MAX_FUNCTION_LINES and name not in LONG_FUNCTIONS
    )
    assert not too_long, (
        f"functions over {MAX_FUNCTION_LINES} lines (split them into named steps, or add a declarative "
        "table to LONG_FUNCTIONS with its reason):\n  " + "\n  ".join(too_long)
    )


def test_the_long_function_allow_list_is_current():
    """Every LONG_FUNCTIONS entry names a function that is still over the limit, and says why it may be."""
    lengths = function_lengths()
    stale = sorted(name for name in LONG_FUNCTIONS if lengths.get(name, 0) <= MAX_FUNCTION_LINES)
    assert not stale, f"LONG_FUNCTIONS entries that no longer exist or are short now (drop them): {stale}"
    assert all(len(reason.split()) >= 5 for reason in LONG_FUNCTIONS.values())


# -- each primitive exists once ---------------------------------------------------------------------------------
#: The one module that may build a queue for a background thread to drain (the bounded writer).
BACKGROUND_WRITER = "visionops.background"
#: The one module that reads settings from the environment (every role declares a Settings dataclass).
SETTINGS = "visionops.settings"
#: The one module that constructs a KFP client.
KFP_CLIENT = "visionops.pipeline.client"
#: The one module where product-policy constants are literals.
POLICY = "visionops.policy"

#: Modules allowed to read named environment variables themselves, each with the reason it is not a setting.
ENV_READERS = {
    "visionops.training.cli": "sets OMP_WAIT_POLICY=PASSIVE for torch's OpenMP pool (a default for a "
    "library, not a visionops setting)",
    "visionops.pipeline.client": "KF_PIPELINES_SA_TOKEN_PATH is the KFP SDK's own variable, looked up in the "
    "SDK's order between an explicit path and the default projected-token path",
    "visionops.serving.monitor_process": "extends the parent's PYTHONPATH for the monitor child process (the "
    "interpreter's variable, not a setting)",
    "visionops.deploy.core": "KUBECONFIG is the Kubernetes client's own variable, handed to its loader",
}

#: The module whose batch scoring (``Bundle.score_uris``, ``Bundle.predict``) runs the model for inference.
BATCH_SCORING = "visionops.bundle"
#: Other modules that run a model under ``torch.inference_mode``/``no_grad``, each with the reason it is not
#: batch inference over image URIs.
INFERENCE_ELSEWHERE = {
    "visionops.training.loop": "validation epochs over the training DataLoader (tensors, not URIs)",
    "visionops.evaluation.ops": "latency, throughput and memory benchmarks of one forward pass",
    "visionops.onnx_runtime": "the PyTorch side of ONNX parity and package-time speed on tensor batches",
}

#: Literal policy values that appear only in POLICY: every other module uses its constants (POSITIVE_CLASS,
#: NEGATIVE_CLASS, S3_SECRET_NAME, default_positive_class), so a policy changes in one place.
POLICY_LITERALS = ("visionops-s3", "glasses", "no_glasses")

#: Parameters and fields whose default is the product's precision target or proof confidence: their default is
#: visionops.policy's TARGET_PRECISION / CONFIDENCE, never a number typed again.
POLICY_NUMBERS = frozenset({"target_precision", "confidence", "target"})
#: Modules allowed a numeric default there, with the reason.
POLICY_NUMBER_EXCEPTIONS = {
    "visionops.demo.sources": "held_out_metrics(confidence=0.95): demo code owned by concurrent work at the time "
    "of writing; to use policy.CONFIDENCE next",
}

_QUEUES = {("queue", "Queue"), ("queue", "SimpleQueue"), ("queue", "LifoQueue"), ("queue", "PriorityQueue"),
           ("asyncio", "Queue"), ("multiprocessing", "Queue")}  # fmt: skip


def _call_names(tree: ast.AST) -> set[tuple[str, str]]:
    """``(module, name)`` of every ``module.name(...)`` call, and ``("", name)`` of every bare ``name(...)``."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                out.add((func.value.id, func.attr))
            elif isinstance(func, ast.Name):
                out.add(("", func.id))
    return out


def _from_imports(tree: ast.AST) -> set[tuple[str, str]]:
    """``(module, name)`` of every ``from module import name``."""
    return {
        (node.module or "", alias.name)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }


def builds_a_queue(source: str) -> bool:
    """Whether ``source`` constructs a thread-safe queue (``queue.Queue()``, or ``Queue()`` imported from it)."""
    tree = ast.parse(source)
    calls, imported = _call_names(tree), _from_imports(tree)
    return bool(calls & _QUEUES) or any(("", name) in calls for module, name in imported & _QUEUES)


def constructs_kfp_client(source: str) -> bool:
    """Whether ``source`` calls ``kfp.Client(...)`` (or ``Client(...)`` imported from kfp)."""
    tree = ast.parse(source)
    calls = _call_names(tree)
    return ("kfp", "Client") in calls or (
        ("kfp", "Client") in _from_imports(tree) and ("", "Client") in calls
    )


def environment_reads(source: str) -> bool:
    """Whether ``source`` reads a named environment variable: ``os.environ.get/[...]/setdefault``,
    ``os.getenv``, ``"X" in os.environ`` (passing the whole environment on to a child process is not a read)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            target = node.func.value
            if node.func.attr == "getenv" and isinstance(target, ast.Name) and target.id == "os":
                return True
            if node.func.attr in ("get", "setdefault", "pop") and _is_environ(target):
                return True
        if isinstance(node, ast.Subscript) and _is_environ(node.value):
            return True
        if isinstance(node, ast.Compare) and any(_is_environ(c) for c in node.comparators):
            return True
    return False


def _is_environ(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "environ") or (
        isinstance(node, ast.Name) and node.id == "environ"
    )


def runs_inference(source: str) -> bool:
    """Whether ``source`` runs a model without gradients (``torch.inference_mode()`` / ``torch.no_grad()``)."""
    return bool(_call_names(ast.parse(source)) & {("torch", "inference_mode"), ("torch", "no_grad")})


def string_literals(source: str) -> set[str]:
    """Every string constant in ``source`` (docstrings included; a policy value is a whole constant)."""
    return {
        n.value
        for n in ast.walk(ast.parse(source))
        if isinstance(n, ast.Constant) and isinstance(n.value, str)
    }


def _float_default(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, float)


def policy_number_defaults(source: str) -> set[str]:
    """The POLICY_NUMBERS names that get a float literal default in ``source``: function parameters and
    (settings) dataclass fields, ``x: float = 0.95`` or ``x: float = setting(0.95, ...)``."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            args = node.args
            positional = [*args.posonlyargs, *args.args]
            pairs = [*zip(positional[len(positional) - len(args.defaults) :], args.defaults, strict=True)]
            pairs += [
                (arg, d) for arg, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is not None
            ]
            found.update(arg.arg for arg, d in pairs if arg.arg in POLICY_NUMBERS and _float_default(d))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            value = node.value
            if isinstance(value, ast.Call) and value.args:
                value = value.args[0]
            if node.target.id in POLICY_NUMBERS and _float_default(value):
                found.add(node.target.id)
    return found


def _modules_where(predicate) -> set[str]:
    return {name for name, path in modules().items() if predicate(path.read_text())}


def test_the_primitive_detectors_catch_a_copy():
    """Each detector fires on the copy it guards against (so the tests below can fail)."""
    assert builds_a_queue("import queue\nq = queue.Queue(maxsize=10)")
    assert builds_a_queue("from queue import SimpleQueue\nq = SimpleQueue()")
    assert not builds_a_queue("from collections import deque\nq = deque(maxlen=10)")
    assert constructs_kfp_client("import kfp\nc = kfp.Client(host=h)")
    assert constructs_kfp_client("from kfp import Client\nc = Client()")
    assert not constructs_kfp_client("from visionops.pipeline.client import connect\nc = connect(h)")
    for read in (
        'os.environ.get("VISIONOPS_X")',
        'os.environ["X"]',
        'os.getenv("X", "1")',
        '"X" in os.environ',
    ):
        assert environment_reads(f"import os\nv = {read}"), read
    assert not environment_reads('import os\nenv = {**os.environ, "PYTHONUNBUFFERED": "1"}')
    assert "visionops-s3" in string_literals('SECRET = "visionops-s3"')
    assert runs_inference("import torch\nwith torch.inference_mode():\n    probs = model(batch)")


def test_one_bounded_background_writer():
    """Only visionops.background builds a queue for a thread to drain: every background writer (prediction
    log, monitor events, router log) is a BackgroundWriter with its one shutdown contract."""
    assert _modules_where(builds_a_queue) == {BACKGROUND_WRITER}


def test_one_kfp_client():
    """Only visionops.pipeline.client constructs kfp.Client (connection, token, namespace, errors)."""
    assert _modules_where(constructs_kfp_client) == {KFP_CLIENT}


def test_one_settings_mechanism_reads_the_environment():
    """Named environment variables are read through a Settings dataclass (visionops.settings), except where
    ENV_READERS says why not."""
    readers = _modules_where(environment_reads)
    assert readers - {SETTINGS} - set(ENV_READERS) == set(), "declare the variable on a Settings dataclass"
    assert set(ENV_READERS) <= readers, "an ENV_READERS entry no longer reads the environment: remove it"


def policy_literal_holders(sources: dict[str, str]) -> dict[str, set[str]]:
    """Policy value -> the modules other than POLICY that hold it as a whole string constant."""
    return {
        value: {
            name for name, source in sources.items() if name != POLICY and value in string_literals(source)
        }
        for value in POLICY_LITERALS
    }


def _sources() -> dict[str, str]:
    return {name: path.read_text() for name, path in modules().items()}


def test_policy_constants_are_defined_once():
    """The secret name and the class names are literals only in visionops.policy."""
    sources = _sources()
    assert set(POLICY_LITERALS) <= string_literals(sources[POLICY]), f"a policy value left {POLICY}"
    assert policy_literal_holders(sources) == {value: set() for value in POLICY_LITERALS}, (
        "a policy value as a literal outside visionops.policy: use its constant"
    )


def test_a_glasses_literal_in_library_code_fails_the_policy_check():
    """The check above can fail: the old fallback put back into bundle.py is found (a docstring that only
    mentions glasses is not a literal of the value)."""
    sources = _sources()
    sources["visionops.bundle"] += '\nFALLBACK = "glasses" if "glasses" in CLASSES else CLASSES[-1]\n'
    sources["visionops.evaluation.gate"] += '\n"""The positive class is usually glasses."""\n'
    assert policy_literal_holders(sources)["glasses"] == {"visionops.bundle"}


def test_the_precision_target_and_confidence_are_never_typed_again():
    """Defaults of target_precision / confidence / target come from visionops.policy (the detector fires on a
    copy; the library holds none)."""
    assert policy_number_defaults("def f(*, confidence: float = 0.95): ...") == {"confidence"}
    assert policy_number_defaults("class P:\n    target_precision: float = setting(0.95, 'x')") == {
        "target_precision"
    }
    assert not policy_number_defaults("def f(*, confidence: float = CONFIDENCE, alpha: float = 0.05): ...")
    holders = _modules_where(lambda source: bool(policy_number_defaults(source)))
    assert holders - set(POLICY_NUMBER_EXCEPTIONS) == set(), "use policy.TARGET_PRECISION / policy.CONFIDENCE"


def test_one_batch_scoring_call():
    """Batch inference over image URIs (evaluation, pre-labelling, selection, the drift reference) goes through
    the bundle's batch scoring; no module keeps its own loop of decode, transform and forward."""
    assert _modules_where(runs_inference) - {BATCH_SCORING} == set(INFERENCE_ELSEWHERE)


# -- the documented module map ----------------------------------------------------------------------------------
ARCHITECTURE_DOC = PACKAGE_ROOT.parent / "docs" / "ARCHITECTURE.md"


def module_map(text: str) -> list[str]:
    """The dotted module names listed by the module map of docs/ARCHITECTURE.md, in order.

    The map is the first fenced block after "## Module map": ``visionops/``, then lines of root modules and
    lines ``  pkg/  mod, mod (note), ...`` (deeper-indented lines continue the package above); notes in
    parentheses, over several lines too, are not names.
    """
    block = text.split("## Module map", 1)[1].split("```", 2)[1]
    while (stripped := re.sub(r"\([^()]*\)", " ", block)) != block:
        block = stripped
    names, package = [], PACKAGE
    for line in block.splitlines():
        tokens = re.split(r"[\s,]+", line.strip())
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if indent == 0:
            names.append(PACKAGE)
            continue
        if indent == 2:
            package = PACKAGE
            if tokens[0].endswith("/"):
                package = f"{PACKAGE}.{tokens.pop(0).rstrip('/')}"
                names.append(package)
        names.extend(f"{package}.{token}" for token in tokens if token)
    return names


def test_the_module_map_reader():
    text = "## Module map\n```\nvisionops/\n  cli errors (one\n  note)\n  data/   synth, ingest (x),\n          cli\n```\n"
    assert module_map(text) == [
        "visionops",
        "visionops.cli",
        "visionops.errors",
        "visionops.data",
        "visionops.data.synth",
        "visionops.data.ingest",
        "visionops.data.cli",
    ]


def test_the_documented_module_map_lists_every_module_once():
    """docs/ARCHITECTURE.md's module map names every module of the tree once and nothing that is gone."""
    listed = module_map(ARCHITECTURE_DOC.read_text())
    twice = sorted({name for name in listed if listed.count(name) > 1})
    assert not twice, f"listed more than once: {twice}"
    missing, gone = sorted(set(modules()) - set(listed)), sorted(set(listed) - set(modules()))
    assert (missing, gone) == ([], []), f"add to the module map: {missing}; remove from it: {gone}"
