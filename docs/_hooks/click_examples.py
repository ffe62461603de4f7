"""MkDocs hook: show the commands' examples in the generated CLI reference as code blocks.

Each click help text gives its examples in a `\\b` paragraph, which `--help` prints line by line.
mkdocs-click drops the `\\b` marker and copies the lines into Markdown, where they would run
together into one line of prose. This preprocessor runs right after mkdocs-click's, on the CLI
page only, and fences every paragraph outside a code block that starts with a `memprobe` command:
in the generated text, exactly the example paragraphs do.
"""

from __future__ import annotations

from typing import Any

from markdown import Extension, Markdown
from markdown.preprocessors import Preprocessor

CLI_PAGE = "cli.md"
EXAMPLE_START = "memprobe "
_AFTER_MKDOCS_CLICK = 140  # mkdocs-click's preprocessor has priority 141; fenced code, 25


def fence_examples(lines: list[str]) -> list[str]:
    """Put each paragraph that starts with an example command in a ``text`` code block."""
    out: list[str] = []
    in_code = in_example = False
    previous = ""
    for line in lines:
        if in_example and not line.strip():
            out.append("```")
            in_example = False
        elif not in_code and not in_example and not previous.strip() and line.startswith(EXAMPLE_START):
            out.append("```text")
            in_example = True
        if line.startswith("```") and not in_example:
            in_code = not in_code
        out.append(line)
        previous = line
    if in_example:
        out.append("```")
    return out


class _FenceExamples(Preprocessor):
    active = False

    def run(self, lines: list[str]) -> list[str]:
        return fence_examples(lines) if _FenceExamples.active else lines


class _ClickExamples(Extension):
    def extendMarkdown(self, md: Markdown) -> None:
        md.preprocessors.register(_FenceExamples(md), "click_examples", _AFTER_MKDOCS_CLICK)


def on_config(config: Any) -> Any:
    config.markdown_extensions.append(_ClickExamples())
    return config


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    _FenceExamples.active = page.file.src_uri == CLI_PAGE
    return markdown
