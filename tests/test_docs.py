"""The README and docs/: a short README, links and anchors that resolve, code names that exist, a snippet that runs."""

from __future__ import annotations

import ast
import re
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]
MAX_README_LINES = 200

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`([^`\n]+)`")
MODULE_PATH = re.compile(r"\bvlviz(?:\.\w+)+")
REPO_PATH = re.compile(r"(?:vlviz|tests|bench|assets|docs|\.ci)/[\w./-]*")


def prose(page: Path) -> str:
    """The page without its fenced code blocks (links and headings there are code, not Markdown)."""
    return re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: Counter[str] = Counter()
    found = set()
    for heading in re.findall(r"^#{1,6} (.+)$", prose(page), flags=re.M):
        base = slug(heading)
        found.add(base if seen[base] == 0 else f"{base}-{seen[base]}")
        seen[base] += 1
    return found


def relative_links(page: Path) -> list[str]:
    text = CODE_SPAN.sub("", prose(page))
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]  # http:, https:, mailto:


def test_the_readme_is_short() -> None:
    lines = len(README.read_text().splitlines())
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines (at most {MAX_README_LINES}): move text to docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_to_an_existing_file_and_heading(page: Path) -> None:
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(ROOT)}")
    assert not broken, broken


def test_every_docs_page_is_reachable_from_the_readme() -> None:
    reached, todo = set(), [README]
    while todo:
        page = todo.pop()
        for target in relative_links(page):
            file = (page.parent / target.partition("#")[0]).resolve()
            if file.suffix == ".md" and file.exists() and file not in reached:
                reached.add(file)
                todo.append(file)
    assert not set(PAGES[1:]) - reached, sorted(str(p.relative_to(ROOT)) for p in set(PAGES[1:]) - reached)


def top_level_names(module: Path) -> set[str]:
    names = set()
    for node in ast.parse(module.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.ImportFrom | ast.Import):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
    return names


def resolve(dotted: str) -> str | None:
    """Why `vlviz.a.b.name` names nothing in the code, or None when it does (a module, then a top-level name)."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        base = ROOT.joinpath(*parts[:end])
        module = base.with_suffix(".py") if base.with_suffix(".py").exists() else base / "__init__.py"
        if module.exists():
            rest = parts[end:]
            if rest and rest[0] not in top_level_names(module):
                return f"{'.'.join(parts[:end])} defines no {rest[0]}"
            return None
    return "no such module"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_code_names_and_paths_in_the_docs_exist(page: Path) -> None:
    """A module moved or renamed leaves no stale `vlviz.old.name` or `vlviz/old.py` behind in the docs."""
    missing = []
    for span in CODE_SPAN.findall(prose(page)):
        for dotted in MODULE_PATH.findall(span):
            if (why := resolve(dotted)) is not None:
                missing.append(f"`{dotted}`: {why}")
        if REPO_PATH.fullmatch(span) and not (ROOT / span).exists():
            missing.append(f"`{span}`: no such file")
    assert not missing, missing


def readme_block(after: str, language: str) -> str:
    """The first fenced block in `language` after the line `after` of the README."""
    text = README.read_text()
    found = re.search(rf"```{language}\n(.*?)```", text[text.index(after) :], flags=re.S)
    assert found, f"no {language} block after {after!r}"
    return found.group(1)


def test_the_readme_library_snippet_runs(capsys: pytest.CaptureFixture[str]) -> None:
    exec(compile(readme_block("## Library", "python"), "README.md", "exec"), {})
    assert "tensor" in capsys.readouterr().out


def test_the_test_command_sets_up_the_browser_then_runs_every_test() -> None:
    """.ci/run runs the first line below the marker that is neither a fence, a comment nor blank."""
    lines = README.read_text().split("<!-- ci: test command", 1)[1].splitlines()[1:]
    command = next(line for line in lines if line.strip() and not line.startswith(("```", "#")))
    steps = [step.strip() for step in command.split("&&")]
    assert steps[-2:] == [".venv/bin/python -m tests.browser_setup", ".venv/bin/python -m pytest"], steps
    assert "<!-- ci: test command" in (ROOT / ".ci" / "run").read_text()
