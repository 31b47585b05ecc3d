"""The package's modules import one way, down a ranked order (docs/architecture.md):

data <- models, metrics <- grounding weights, keywords, embedding, compare <- losses <- loading a model with its
trained heads, the grounding maps <- training, viz <- the command line <- the Gradio UI.

A module may import modules of a lower rank, and modules of its own rank only inside its own package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vlviz"
RANKS = {  # a module's rank: its longest prefix here
    "vlviz.data": 0,
    "vlviz.models": 1,
    "vlviz.metrics": 1,
    "vlviz.grounding": 2,
    "vlviz.keywords": 2,
    "vlviz.embedding": 2,
    "vlviz.compare": 2,
    "vlviz.losses": 3,
    "vlviz.models.loading": 4,  # a checkpoint carries its trained PSL and XMM heads, which are losses
    "vlviz.grounding.maps": 4,  # reads the XMM head's cross-attention
    "vlviz": 5,  # the library's front door: `from vlviz import load_model`
    "vlviz.grounding.annotations": 5,  # scores the maps (rank 4) against the user's annotations
    "vlviz.training": 6,
    "vlviz.viz": 6,
    "vlviz.cli": 7,
    "vlviz.__main__": 8,  # `python -m vlviz`
    "vlviz.ui": 8,
    "vlviz.cli.explore": 9,  # starts the app; `vlviz.cli.main` hands the process over to it without importing it
}
CORE_RANK = 4  # the core (ranks 0-4) imports neither gradio nor plotly


def rank(module: str) -> tuple[int, str]:
    """A module's rank and the prefix that gives it (its package, for the same-rank rule)."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in RANKS:
            return RANKS[prefix], prefix
    raise KeyError(module)


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


def test_the_top_level_holds_packages_by_concept_not_a_drawer_of_modules() -> None:
    top = sorted(m for m in MODULES if m.count(".") == 1 and not (PACKAGE / m.split(".")[1]).is_dir())
    assert top == ["vlviz.__main__", "vlviz.keywords"], top


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_one_way(module: str) -> None:
    own, package = rank(module)
    found = sorted(m for m in imports(MODULES[module]) if m == "vlviz" or m.startswith("vlviz."))
    upward = [m for m in found if rank(m)[0] > own or (rank(m)[0] == own and rank(m)[1] != package)]
    assert not upward, f"{module} (rank {own}) imports {upward}"
    third_party = {m.split(".")[0] for m in imports(MODULES[module])}
    if own < rank("vlviz.ui")[0]:
        assert "gradio" not in third_party, f"{module}: only vlviz.ui imports gradio"
    if own <= CORE_RANK or package == "vlviz.training":
        assert "plotly" not in third_party, f"{module}: the core and the training harness draw nothing"
