"""The package's layers import one way: core <- training, viz <- commands <- ui (see README, Architecture)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vlviz"
COMMANDS = {"vlviz.report", "vlviz.__main__"}
ALLOWED = {  # what each layer may import from vlviz
    "core": {"core"},
    "training": {"core", "training"},
    "viz": {"core", "viz"},
    "commands": {"core", "training", "viz", "commands"},
    "ui": {"core", "training", "viz", "commands", "ui"},
}


def layer(module: str) -> str:
    """The layer of a vlviz module name."""
    if module in COMMANDS:
        return "commands"
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ("training", "viz", "ui") else "core"


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside functions (lazy imports count too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}: relative import"
            names.add(node.module)
    return names


MODULES = modules()


def test_every_module_belongs_to_a_layer() -> None:
    assert {layer(m) for m in MODULES} == set(ALLOWED)
    assert {"vlviz.towers", "vlviz.losses", "vlviz.data.inputs", "vlviz.checkpoints"} <= set(MODULES)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_one_way(module: str) -> None:
    own = layer(module)
    found = imports(MODULES[module])
    upward = sorted(m for m in found if m.startswith("vlviz") and layer(m) not in ALLOWED[own])
    assert not upward, f"{module} ({own}) imports {upward}"
    third_party = {m.split(".")[0] for m in found}
    if own != "ui":
        assert "gradio" not in third_party, f"{module}: only vlviz.ui imports gradio"
    if own in ("core", "training"):
        assert "plotly" not in third_party, f"{module}: the core and the training harness draw nothing"
