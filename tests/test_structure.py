"""The package's shape, read from its source: no import circle, no stage importing another,
every path in layout.py, public APIs of MLflow, Hydra and Keras only, and dvc.yaml listing every
module each stage runs."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT

PACKAGE = ROOT / "src/overfit"
# What each subpackage holds: the DVC stages' entry points, the operator's commands, and what
# they run. An entry point is run, never imported.
ENTRY_PACKAGES = ("stages", "commands")
# Code MLflow runs (models from code) rather than any module importing it: the stage that
# logs it depends on it all the same.
MODEL_CODE = {"register": {"tracking.classifier"}}
# Libraries whose private names (a leading underscore) the package must not touch.
LIBRARIES = ("mlflow", "hydra", "omegaconf", "keras", "tensorflow")
# Leading-underscore names that are public API: namedtuple methods.
PUBLIC_UNDERSCORED = {"_replace", "_asdict", "_fields"}


def module_name(path: Path) -> str:
    """`core.data` for src/overfit/core/data.py, `tracking` for src/overfit/tracking/__init__.py."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "__init__"


def module_path(module: str) -> Path:
    if module == "__init__":
        return PACKAGE / "__init__.py"
    base = PACKAGE.joinpath(*module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def modules() -> list[str]:
    return sorted(module_name(p) for p in PACKAGE.rglob("*.py"))


@cache
def tree(module: str) -> ast.Module:
    return ast.parse(module_path(module).read_text(encoding="utf-8"))


def _resolve(dotted: str) -> str:
    """A module of the package from `overfit.x.y` (its name, or a name in it: the module)."""
    name = dotted.removeprefix("overfit.")
    while name and name not in modules():
        name = name.rpartition(".")[0]
    return name or "__init__"


def imported(module: str) -> set[str]:
    """The package's modules this one imports, at the top or inside a function (with the
    packages that hold them: importing `core.data` runs core/__init__.py)."""
    found = set()
    for node in ast.walk(tree(module)):
        if isinstance(node, ast.Import):
            found |= {_resolve(a.name) for a in node.names if a.name.startswith("overfit.")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("overfit"):
            found |= {_resolve(f"{node.module}.{a.name}") for a in node.names}
    for name in list(found):
        parts = name.split(".")
        found |= {".".join(parts[:i]) for i in range(1, len(parts))}
    return found - {module, "__init__"}


def closure(module: str) -> set[str]:
    """The module and everything it imports, directly or not."""
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo += imported(current)
    return seen


def dvc_stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


def stage_module(stage: dict) -> str:
    found = re.match(r"python -m overfit\.([\w.]+)", stage["cmd"])
    assert found, stage["cmd"]
    return found.group(1)


def entry_modules() -> set[str]:
    return {m for m in modules() if m.split(".")[0] in ENTRY_PACKAGES and "." in m}


def test_every_stage_is_an_entry_module_and_every_entry_module_a_stage_or_command() -> None:
    stages = {stage_module(s) for s in dvc_stages().values()}
    assert stages == {m for m in entry_modules() if m.startswith("stages.")}
    for module in entry_modules():
        assert any(
            isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)
            for node in tree(module).body
        ), f"{module} has no __main__ entry"


def test_no_import_circle() -> None:
    for module in modules():
        for other in imported(module):
            if module.startswith(other + "."):  # a package's own __init__
                continue
            assert module not in closure(other), f"{module} -> {other} -> ... -> {module}"


def test_no_module_imports_a_stage_or_command() -> None:
    entries = entry_modules()
    for module in modules():
        assert not imported(module) & entries, f"{module} imports {imported(module) & entries}"


def test_the_core_knows_nothing_of_mlflow_dvc_or_the_train_stage() -> None:
    for module in (m for m in modules() if m.startswith("core")):
        libraries = {
            (a.name if isinstance(node, ast.Import) else node.module or "").split(".")[0]
            for node in ast.walk(tree(module))
            if isinstance(node, ast.Import | ast.ImportFrom)
            for a in node.names
        }
        assert not libraries & {"mlflow", "dvc"}, module
        assert not {m for m in closure(module) if m.startswith(("tracking", "sweep"))}, module


@pytest.mark.parametrize("name", list(dvc_stages()))
def test_dvc_yaml_lists_every_module_a_stage_runs(name: str) -> None:
    """A change to any module a stage imports, directly or not, reruns that stage."""
    stage = dvc_stages()[name]
    listed = {module_name(ROOT / d) for d in stage["deps"] if d.startswith("src/overfit/")}
    module = stage_module(stage)
    # `python -m overfit.stages.x` runs overfit/__init__.py and overfit/stages/__init__.py first.
    needed = closure(module) | {"__init__", module.rpartition(".")[0]} | MODEL_CODE.get(name, set())
    assert needed - listed == set(), f"dvc.yaml's {name} misses {sorted(needed - listed)}"
    assert listed - needed == set(), f"dvc.yaml's {name} lists unused {sorted(listed - needed)}"


def test_closure_sees_imports_inside_functions() -> None:
    # job.py imports the model only when it builds one; the train stage still depends on it.
    assert {"core.model", "core.trainer"} <= closure("stages.train")
    assert "core.figures" not in closure("stages.evaluate")


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__") and name not in PUBLIC_UNDERSCORED


def private_uses(source: ast.Module) -> list[str]:
    """Private modules or names imported from the libraries, and `_`-prefixed attributes."""
    found = []
    for node in ast.walk(source):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(LIBRARIES):
            names = [*node.module.split("."), *(a.name for a in node.names)]
            found += [f"from {node.module} import {n}" for n in names if n.startswith("_")]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if "._" in f".{a.name}"]
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            found.append(f".{node.attr}")
    return found


def test_no_private_name_of_a_library() -> None:
    """No `_`-prefixed module, name or attribute: a minor upgrade may change those silently."""
    uses = {module: private_uses(tree(module)) for module in modules()}
    assert {module: found for module, found in uses.items() if found} == {}


def test_the_private_name_check_catches_them() -> None:
    sample = (
        "from hydra._internal.core_plugins.basic_sweeper import BasicSweeper\n"
        "import mlflow.store._private\n"
        "lr = opt._learning_rate\n"
        "parts = parts._replace(netloc='')\n"
    )
    assert private_uses(ast.parse(sample)) == [
        "from hydra._internal.core_plugins.basic_sweeper import _internal",
        "mlflow.store._private",
        "._learning_rate",
    ]


# A file's name or path, not a suffix: `result.json`, `reports/metrics.json`.
PATH_LITERAL = re.compile(r"^[\w-][\w./-]*\.(json|csv|npz|png|md|db|keras|yaml|lock)$")


def _path_literals(module: str) -> list[str]:
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree(module))
        if isinstance(node, ast.Module | ast.FunctionDef | ast.ClassDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
    }
    return [
        node.value
        for node in ast.walk(tree(module))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
        and PATH_LITERAL.match(node.value)
    ]


def test_every_file_name_is_spelled_in_layout_only() -> None:
    # server.py lays out the tracking server's own state folder (pid, logs, pgpass).
    found = {m: _path_literals(m) for m in modules() if m not in ("layout", "commands.server")}
    assert {m: names for m, names in found.items() if names} == {}


def test_dvc_yaml_names_layout_paths() -> None:
    from overfit import layout

    known = {
        str(value)
        for name, value in vars(layout).items()
        if name.isupper() and isinstance(value, Path | str)
    }
    for name, stage in dvc_stages().items():
        files = [d for d in stage.get("deps", []) if not d.startswith("src/")]
        for entry in stage.get("outs", []) + stage.get("metrics", []) + stage.get("plots", []):
            files.append(next(iter(entry)) if isinstance(entry, dict) else entry)
        for path in files:
            assert path in known or path.rsplit("/", 1)[0] in known, (name, path)
