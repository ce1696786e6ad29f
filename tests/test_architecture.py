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
    "visionops.evaluation.gate.rules": "the gate's rule table: one _rule(name, description, value, limit, "
    "passed) record per rule, in report order",
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
