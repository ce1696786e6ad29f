"""Declared dependencies match imports: every third-party module the library imports comes from a
distribution named in pyproject.toml's ``dependencies`` (or in an optional feature group other than ``dev``, for
a feature installed with ``pip install visionops[group]``), and every declared distribution is imported (or is
on an allow-list of runtime-only ones, each with its reason).

Imports are read with ``ast`` from every module under ``components/`` (function-level imports included, since
heavy packages are imported lazily); an import inside ``try: ... except ImportError`` is optional and need not
be declared. A module is mapped to the installed distribution whose files hold it (so ``from kfp import
kubernetes`` needs ``kfp-kubernetes``, not ``kfp``), falling back to
``importlib.metadata.packages_distributions()`` for modules without a ``.py`` file.
"""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import re
import sys
import tomllib
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMPONENTS = ROOT / "components"
FIRST_PARTY = {"visionops"}

#: Declared but never imported by name: what each is for at run time.
RUNTIME_ONLY = {
    "uv": "bentoml build calls the uv binary (and pip-installs it on first use, which fails offline)",
    "onnxscript": "torch.onnx's exporter (dynamo=True) imports it when visionops.onnx_runtime exports a model",
    "pyarrow": "pandas' parquet engine: drift/reference.parquet is written and read through pandas",
}


def normalise(name: str) -> str:
    """A distribution name in its PEP 503 form (``PyYAML`` -> ``pyyaml``, ``kfp_kubernetes`` -> ``kfp-kubernetes``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _names(requirements: list[str]) -> set[str]:
    names = set()
    for requirement in requirements:
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
        assert match, f"cannot read the requirement {requirement!r}"
        names.add(normalise(match.group(1)))
    return names


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def declared_dependencies() -> set[str]:
    """The distribution names in pyproject.toml's ``[project] dependencies`` (versions and extras dropped)."""
    return _names(_project()["dependencies"])


def installable_extras() -> set[str]:
    """Distributions of the optional feature groups (``pip install visionops[group]``), ``dev`` excluded:
    a test tool never satisfies a library import."""
    groups = _project().get("optional-dependencies", {})
    return set().union(*(_names(reqs) for group, reqs in groups.items() if group != "dev"))


def _catches_import_error(node: ast.Try) -> bool:
    """Whether a ``try`` statement handles ImportError (its body's imports are then optional)."""
    names = set()
    for handler in node.handlers:
        kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        names |= {k.id for k in kinds if isinstance(k, ast.Name)}
    return bool(names & {"ImportError", "ModuleNotFoundError"})


def _imported_modules(node: ast.AST, optional: bool, found: dict[str, bool]) -> None:
    """Record every absolute import below ``node`` as module -> optional (False wins over True)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Try) and _catches_import_error(child):
            for part in child.body:
                _imported_modules_of(part, True, found)
            for part in [*child.handlers, *child.orelse, *child.finalbody]:
                _imported_modules_of(part, optional, found)
            continue
        _imported_modules_of(child, optional, found)


def _imported_modules_of(node: ast.AST, optional: bool, found: dict[str, bool]) -> None:
    """Record ``node`` itself when it is an absolute import, then look below it."""
    modules: list[str] = []
    if isinstance(node, ast.Import):
        modules = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        # a name imported from a package may be a submodule (``from kfp import kubernetes``)
        modules = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    for module in modules:
        found[module] = found.get(module, True) and optional
    _imported_modules(node, optional, found)


def imports_of(source: str, filename: str = "<source>") -> dict[str, bool]:
    """Every absolute import in ``source`` (at any depth) -> whether it is optional (only under ImportError)."""
    found: dict[str, bool] = {}
    _imported_modules(ast.parse(source, filename=filename), False, found)
    return found


@cache
def third_party_imports() -> dict[str, dict[str, bool]]:
    """module -> {source file: optional} for every absolute import of a non-stdlib, non-first-party module."""
    out: dict[str, dict[str, bool]] = {}
    for path in sorted(COMPONENTS.rglob("*.py")):
        for module, optional in imports_of(path.read_text(), str(path)).items():
            top = module.split(".")[0]
            if top in sys.stdlib_module_names or top in FIRST_PARTY:
                continue
            out.setdefault(module, {})[str(path.relative_to(ROOT))] = optional
    return out


@cache
def module_owners() -> dict[str, str]:
    """Dotted module name -> the installed distribution whose files hold it (only for imported top levels).

    Reads the RECORD of only the distributions that provide an imported top-level name (torch alone lists
    tens of thousands of files; parsing every installed RECORD through ``Distribution.files`` takes half a
    minute on a busy machine).
    """
    tops = {m.split(".")[0] for m in third_party_imports()}
    providers = metadata.packages_distributions()
    owners: dict[str, str] = {}
    for name in sorted({d for top in tops for d in providers.get(top, [])}):
        record = metadata.distribution(name).read_text("RECORD") or ""
        for line in record.splitlines():
            path = line.split(",", 1)[0]
            if path.endswith(".py") and path.split("/", 1)[0] in tops:
                owners[path[: -len(".py")].replace("/", ".").removesuffix(".__init__")] = normalise(name)
    return owners


def distribution_of(module: str) -> str | None:
    """The distribution that provides ``module`` (its longest importable prefix), or None if not installed."""
    owners = module_owners()
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        owner = owners.get(".".join(parts[:n]))
        if owner:
            return owner
    candidates = metadata.packages_distributions().get(parts[0], [])
    return normalise(candidates[0]) if candidates else None


def test_the_import_scan_sees_lazy_imports_and_submodule_imports():
    """The scan must not miss what this test exists for: function-level imports and ``from pkg import sub``."""
    imports = third_party_imports()
    assert "torch" in imports and "bentoml" in imports  # imported inside functions only
    assert "kfp.kubernetes" in imports
    assert distribution_of("kfp.kubernetes") == "kfp-kubernetes" and distribution_of("kfp.dsl") == "kfp"
    assert distribution_of("yaml") == "pyyaml" and distribution_of("PIL.Image") == "pillow"


def test_imports_under_an_import_error_handler_are_optional():
    source = (
        "import a\n"
        "def f():\n"
        "    from b.c import d\n"
        "    try:\n"
        "        import e\n"
        "    except ImportError:\n"
        "        import a\n"
        "    try:\n"
        "        import g\n"
        "    except ValueError:\n"
        "        pass\n"
        "from . import local\n"
    )
    assert imports_of(source) == {"a": False, "b.c": False, "b.c.d": False, "e": True, "g": False}


def test_every_third_party_import_is_declared():
    declared = declared_dependencies() | installable_extras()
    missing: dict[str, list[str]] = {}
    for module, files in sorted(third_party_imports().items()):
        required = [f for f, optional in files.items() if not optional]
        if not required:
            continue
        dist = distribution_of(module)
        if dist is None:
            missing.setdefault(f"{module} (not installed)", []).extend(required)
        elif dist not in declared:
            missing.setdefault(dist, []).extend(required)
    assert not missing, (
        "imported but not declared in pyproject.toml [project] dependencies (or a non-dev extra):\n"
        + "\n".join(
            f"  {dist}: {', '.join(sorted(set(files))[:4])}" for dist, files in sorted(missing.items())
        )
    )


def test_every_declared_dependency_is_imported_or_runtime_only():
    used = {distribution_of(module) for module in third_party_imports()}
    unused = sorted(declared_dependencies() - used - set(RUNTIME_ONLY))
    assert not unused, (
        f"declared in pyproject.toml but never imported under components/: {unused}; remove them, or add them "
        "to RUNTIME_ONLY with the reason they are needed"
    )
    stale = sorted(set(RUNTIME_ONLY) - declared_dependencies())
    assert not stale, f"RUNTIME_ONLY names distributions that are not declared: {stale}"
    imported_anyway = sorted(set(RUNTIME_ONLY) & used)
    assert not imported_anyway, f"RUNTIME_ONLY entries are imported after all (drop them): {imported_anyway}"
