"""docs/architecture.md and docs/extending.md are where a newcomer looks for where a change goes: every repository
path they name (``pipeline/...``, ``features/...``, ``training/...``, ``tools/...``, ``tests/...``, ``configs/...``,
``docs/...``) must exist, so a move or a rename that forgets them fails here."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = ("docs/architecture.md", "docs/extending.md")
# A repository path: one of our top-level folders at the start of a word (not inside a workdir path like W/features/).
PATH = re.compile(r"(?<![\w/.=-])((?:pipeline|features|training|tools|tests|configs|docs)/[\w./-]*)")


def named_paths(text: str) -> set[str]:
    return {match.rstrip(".-") for match in PATH.findall(text)}


def missing_paths(text: str) -> list[str]:
    return sorted(path for path in named_paths(text) if not (ROOT / path).exists())


@pytest.mark.parametrize("page", PAGES)
def test_every_path_the_page_names_exists(page):
    text = (ROOT / page).read_text()
    assert named_paths(text), f"{page} names no repository path: the pattern no longer matches how it writes them"
    assert missing_paths(text) == [], f"{page} names paths that do not exist"


def test_the_check_sees_a_moved_module_and_skips_workdir_paths():
    text = "see `pipeline/stages/score.py` and `pipeline/scoring.py`, and `W/features/cluster=C/runs/` in the workdir."
    assert named_paths(text) == {"pipeline/stages/score.py", "pipeline/scoring.py"}
    assert missing_paths(text) == ["pipeline/scoring.py"]


def test_no_page_names_a_temporary_path():
    """Every figure is rerun with a command in the repo: a page that names /tmp (a private run's workdir, a test's
    basetemp) describes a run no reader has."""
    pages = sorted(p for p in ROOT.glob("*.md")) + sorted((ROOT / "docs").rglob("*.md"))
    assert [str(p.relative_to(ROOT)) for p in pages if "/tmp/" in p.read_text()] == []
