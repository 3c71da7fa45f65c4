"""The package's walls, checked on every import statement (function-local ones included), as an
import-linter contract would: a crossing fails CI and names the file and the import.

- guidance never imports a method, and methods never know they are guided;
- datasets know no method, no guidance and no model;
- reports read the run store: no method, no guidance, no runner, no base model;
- the toy world is a plugin: nothing outside `persobench/toyworld/` imports it, except the CLI's
  `toyworld` subcommands (train / eval / export / doctor); the registries load it by name;
- two layers: the bottom (`persobench/core/`: config types, Conditioning / StepContext / hooks, components,
  attention capture, atomic IO, seeding, Subject / Benchmark, the image loader, errors, registries) imports
  nothing outside itself; the middle (methods, guidance, datasets, reports, the toy world) imports the
  bottom and never the top (`persobench/harness/`: runner, CLI, gate, guidance glue, store, sharding;
  `persobench/api.py`), which is the only place that imports everything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "persobench"


def imports_of(path: Path) -> list[str]:
    """Absolute module names imported anywhere in `path` (relative imports resolved)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    if path.name == "__init__.py":
        module = package = module.removesuffix(".__init__")
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found += [target] + [f"{target}.{a.name}" for a in node.names]
    return [f for f in found if f.startswith("persobench")]


def modules(prefix: str) -> list[Path]:
    root = PACKAGE.joinpath(*prefix.split(".")[1:])
    return sorted(root.rglob("*.py")) if root.is_dir() else [root.with_suffix(".py")]


# (importers, forbidden targets, allowed exceptions as (file suffix, target prefix))
CONTRACTS = [
    ("persobench.guidance", ["persobench.methods"], []),
    ("persobench.methods", ["persobench.guidance", "persobench.harness.guided", "persobench.harness.runner"], []),
    ("persobench.datasets", ["persobench.methods", "persobench.guidance", "persobench.core.components", "persobench.toyworld",
                             "persobench.reports", "persobench.harness.runner"], []),
    ("persobench.reports", ["persobench.methods", "persobench.guidance", "persobench.harness.runner",
                            "persobench.core.components.load_components", "persobench.toyworld"], []),
    ("persobench.core.errors", ["persobench."], []),
]
TOP = ["persobench.harness", "persobench.api"]
MIDDLE = ["persobench.methods", "persobench.guidance", "persobench.datasets", "persobench.reports", "persobench.toyworld",
          "persobench.twins"]
BOTTOM = "persobench.core"
OUTSIDE_TOYWORLD = ["persobench.harness", "persobench.methods", "persobench.datasets", "persobench.reports",
                    "persobench.guidance", "persobench.core", "persobench.twins"]
TOYWORLD_ALLOWED = {"harness/cli.py"}  # the `toyworld` subcommands and `doctor`


def crossings(importer: str, forbidden: list[str], allowed: set[str] = frozenset()) -> list[str]:
    out = []
    for path in modules(importer):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel in allowed:
            continue
        for target in imports_of(path):
            if any(target == f or target.startswith(f + ".") or (f.endswith(".") and target.startswith(f)) for f in forbidden):
                out.append(f"{rel} imports {target}")
    return sorted(set(out))


@pytest.mark.parametrize("importer, forbidden, _", CONTRACTS, ids=[c[0] for c in CONTRACTS])
def test_layer_contract(importer, forbidden, _):
    assert crossings(importer, forbidden) == []


def test_the_bottom_layer_imports_nothing_above_it():
    """`persobench/core/` imports only `persobench.core` (and the package root's lazy `__init__` nothing)."""
    out = []
    for path in modules(BOTTOM):
        for target in imports_of(path):
            if not (target == BOTTOM or target.startswith(BOTTOM + ".")):
                out.append(f"{path.relative_to(PACKAGE).as_posix()} imports {target}")
    assert out == []


@pytest.mark.parametrize("importer", MIDDLE)
def test_the_middle_never_imports_the_top(importer):
    assert crossings(importer, TOP) == []


@pytest.mark.parametrize("importer", OUTSIDE_TOYWORLD)
def test_the_toy_world_is_a_plugin(importer):
    assert crossings(importer, ["persobench.toyworld"], TOYWORLD_ALLOWED) == []


def test_the_checker_sees_a_crossing(tmp_path, monkeypatch):
    """The contract can fail: a function-local relative import of a method from guidance is caught."""
    fake = PACKAGE / "guidance" / "_layer_probe.py"
    fake.write_text("def f():\n    from ..methods import methods\n    return methods\n")
    try:
        assert crossings("persobench.guidance", ["persobench.methods"]) == ["guidance/_layer_probe.py imports persobench.methods",
                                                                             "guidance/_layer_probe.py imports persobench.methods.methods"]
    finally:
        fake.unlink()
