"""The README stays short and its set-up exact; the docs' nav, pages and API page stay in step.

`make docs` (run by `make test`) builds the site with `mkdocs build --strict`; these checks are
the cheap part that needs no build.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

import memprobe

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_LIMIT_BYTES = 10 * 1024
SET_UP_COMMANDS = [
    "make run    # install into .venv, calibrate MedNeXt and suggest a batch for 128^3 (CUDA if present, else trace)",
    "make test   # install into .venv, run the tests, then the benchmarks (tables printed; the checkout stays clean)",
]


def _nav_pages(entries: list) -> list[str]:
    pages: list[str] = []
    for entry in entries:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


def _nav() -> list[str]:
    return _nav_pages(yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"])


def _section(path: Path, heading: str) -> str:
    """The text under a ``## heading``, up to the next heading of that level."""
    pattern = rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)"
    match = re.search(pattern, path.read_text(), re.DOTALL | re.MULTILINE)
    assert match, f"{path.name} has no '## {heading}' section"
    return match.group(1)


def test_readme_is_under_ten_kilobytes() -> None:
    assert len(README.read_bytes()) < README_LIMIT_BYTES


@pytest.mark.parametrize("path", [README, DOCS / "index.md"], ids=["README", "docs-index"])
def test_set_up_block_is_exactly_make_run_and_make_test(path: Path) -> None:
    blocks = re.findall(r"^```bash\n(.*?)^```", _section(path, "Set-up"), re.DOTALL | re.MULTILINE)
    assert blocks, "the Set-up section has no bash block"
    assert blocks[0].splitlines() == SET_UP_COMMANDS


def test_every_nav_page_exists() -> None:
    missing = [page for page in _nav() if not (DOCS / page).is_file()]
    assert missing == []


def test_every_docs_page_is_in_the_nav() -> None:
    pages = {path.relative_to(DOCS).as_posix() for path in DOCS.rglob("*.md")}
    assert sorted(pages - set(_nav())) == []


def test_readme_links_every_docs_page() -> None:
    linked = set(re.findall(r"\]\(docs/([^)#]+)", README.read_text()))
    assert sorted(set(_nav()) - linked) == []


def test_api_page_documents_every_public_name() -> None:
    """A name added to ``memprobe._EXPORTS`` is added to docs/api.md too, from its defining module."""
    documented = set(re.findall(r"^::: ([\w.]+)$", (DOCS / "api.md").read_text(), re.MULTILINE))
    public = {f"{module}.{name}" for name, module in memprobe._EXPORTS.items()}
    assert sorted(public - documented) == []
    assert sorted(documented - public) == []
