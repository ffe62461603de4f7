"""Plan a PyTorch Connectomics YAML config file, keeping its comments, key order and layout.

ruamel.yaml's round trip re-emits every comment and untouched key as written; only planned keys
change, and the file's line endings and byte-order mark are written back as they were. The
input file is never written, and an output file is only ever replaced whole (a temporary file
beside it, then ``os.replace``), so no reader sees half a config.

Aliases are checked before anything is built from them: a few anchors shared by sections are
a config, a billion values from nine lines (an alias bomb) or an anchor inside itself is not.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import CommentMark, MarkedYAMLError, YAMLError
from ruamel.yaml.events import (
    AliasEvent,
    CollectionEndEvent,
    CollectionStartEvent,
    DocumentStartEvent,
    ScalarEvent,
)
from ruamel.yaml.tokens import CommentToken
from ruamel.yaml.util import load_yaml_guess_indent

from memprobe.core.errors import InvalidInputError
from memprobe.core.input_files import read_input_text, shown
from memprobe.core.output_paths import check_output_path, write_atomically
from memprobe.integrations.pytc.config_file import ConfigPlan, apply_plan, lookup_node, plan_config
from memprobe.store.database import database_files

# Values that aliases may add to a config, counted expanded: a config shares a few sections,
# an alias bomb multiplies nine values nine times per line.
MAX_ALIASED_VALUES = 100_000
_BOM = "\ufeff"


@dataclass(frozen=True)
class _Layout:
    """How the file is written byte for byte where YAML does not say: line endings and a byte-order mark."""

    newline: str = "\n"
    bom: bool = False

    @classmethod
    def of(cls, text: str) -> _Layout:
        first_line = text.partition("\n")[0]
        return cls("\r\n" if first_line.endswith("\r") else "\n", text.startswith(_BOM))

    def apply(self, text: str) -> str:
        """``text`` (as ruamel writes it: ``\\n`` line endings, no mark) laid out as the input was."""
        if self.newline != "\n":
            text = text.replace("\n", self.newline)
        return _BOM + text if self.bom else text


@dataclass(frozen=True)
class PlannedFile:
    """The plan of a config file, the planned YAML, and where it was written (None: nowhere)."""

    source: Path
    plan: ConfigPlan
    text: str
    written: Path | None = None


def _round_trip(text: str) -> YAML:
    """A round-trip dumper indenting as ``text`` does, never re-wrapping long lines."""
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096
    try:
        _, indent, block_sequence_indent = load_yaml_guess_indent(text)
    except YAMLError:
        indent, block_sequence_indent = 2, 0
    indent = indent or 2
    yaml.indent(
        mapping=indent, sequence=indent + (block_sequence_indent or 0), offset=block_sequence_indent or 0
    )
    return yaml


def _check_aliases(text: str, path: object) -> None:
    """Refuse an anchor used inside itself, and aliases that expand past ``MAX_ALIASED_VALUES``.

    Walks the parser's events, so nothing is built: each anchored node's size is counted
    with its own aliases expanded, and each alias adds the size of the node it names.
    """
    open_nodes: list[tuple[str | None, int]] = []  # (anchor, values so far) of each open collection
    sizes: dict[str, int] = {}  # closed anchored nodes: their values, expanded
    aliased = 0

    def add(count: int) -> None:
        if open_nodes:
            anchor, size = open_nodes[-1]
            open_nodes[-1] = (anchor, size + count)

    for event in YAML().parse(text):
        line = event.start_mark.line + 1
        if isinstance(event, DocumentStartEvent):
            sizes.clear()  # anchors belong to their document
        elif isinstance(event, AliasEvent):
            if event.anchor in {anchor for anchor, _ in open_nodes} and event.anchor not in sizes:
                raise InvalidInputError(
                    f"{shown(path)}: the anchor &{shown(event.anchor, 40)} is used inside itself at line {line}: "
                    "a recursive config cannot be planned; the file is left untouched"
                )
            aliased += sizes.get(event.anchor, 1)
            if aliased > MAX_ALIASED_VALUES:
                raise InvalidInputError(
                    f"{shown(path)}: its aliases expand to more than {MAX_ALIASED_VALUES:,} values "
                    f"(at line {line}): not a config memprobe plans; the file is left untouched"
                )
            add(sizes.get(event.anchor, 1))
        elif isinstance(event, CollectionStartEvent):
            if event.anchor is not None:
                sizes.pop(event.anchor, None)  # redefined: aliases inside it name this node
            open_nodes.append((event.anchor, 1))
        elif isinstance(event, CollectionEndEvent):
            anchor, size = open_nodes.pop()
            if anchor is not None:
                sizes[anchor] = size
            add(size)
        elif isinstance(event, ScalarEvent):
            if event.anchor is not None:
                sizes[event.anchor] = 1
            add(1)


def _parsed(text: str, path: object) -> tuple[CommentedMap, YAML]:
    """``text`` loaded round trip after its aliases are checked, with the YAML that writes it back."""
    try:
        _check_aliases(text, path)
        yaml = _round_trip(text)
        config = yaml.load(text)
    except MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = shown(error.problem or error.context)
        raise InvalidInputError(
            f"{shown(path)}: not valid YAML{where}: {problem}; the file is left untouched"
        ) from error
    except YAMLError as error:
        raise InvalidInputError(
            f"{shown(path)}: not valid YAML: {shown(str(error).splitlines()[0])}"
        ) from error
    except RecursionError:
        raise InvalidInputError(f"{shown(path)}: nested too deeply to be a config") from None
    if not isinstance(config, CommentedMap):
        raise InvalidInputError(
            f"{shown(path)}: a config must be a mapping of sections (system, model, data, ...)"
        )
    return config, yaml


def _load(path: str | Path) -> tuple[CommentedMap, YAML, _Layout]:
    text = read_input_text(path, "--config")
    layout = _Layout.of(text)
    universal = text.removeprefix(_BOM).replace("\r\n", "\n").replace("\r", "\n")  # as open() reads text
    config, yaml = _parsed(universal, path)
    return config, yaml, layout


def load_config(path: str | Path) -> tuple[CommentedMap, YAML]:
    """The config at ``path`` as a round-trip mapping, and the YAML instance that writes it back.

    Raises:
        InvalidInputError: the file cannot be read (not a regular file, over the size cap), is not
            YAML (its line and column are named), has recursive or exploding aliases, or is not
            a mapping of sections.
    """
    config, yaml, _ = _load(path)
    return config, yaml


def _split_trailing_blank_lines(section: CommentedMap, key: Any) -> str:
    """Detach the blank lines after ``key``'s comments, so new keys go above them, not below."""
    token = section.ca.items.get(key, [None, None, None, None])[2]
    if not isinstance(token, CommentToken):
        return ""
    extra = len(token.value) - len(token.value.rstrip("\n")) - 1
    if extra <= 0:
        return ""
    token.value = token.value[:-extra]
    return "\n" * extra


def _insert(config: CommentedMap, plan: ConfigPlan) -> None:
    """Apply ``plan``; new keys join their section after its comments, before its closing blank lines."""
    tails: dict[int, tuple[CommentedMap, str]] = {}
    for path in plan.planned:
        parent, _, key = path.rpartition(".")
        section = lookup_node(config, parent)
        if isinstance(section, CommentedMap) and key not in section and id(section) not in tails and section:
            tails[id(section)] = (section, _split_trailing_blank_lines(section, list(section)[-1]))
    flow = {path: _flow(value) for path, value in plan.planned.items()}
    apply_plan(config, ConfigPlan(flow, plan.kept, plan.notes, plan.result))
    for section, tail in tails.values():
        if tail:
            section.ca.items.setdefault(list(section)[-1], [None, None, None, None])[2] = CommentToken(
                "\n" + tail, CommentMark(0), None
            )


def _flow(value: Any) -> Any:
    """A list written inline (``[128, 128, 128]``), as configs write patch sizes."""
    if not isinstance(value, list):
        return value
    sequence = CommentedSeq(value)
    sequence.fa.set_flow_style()
    return sequence


def _dump(config: CommentedMap, yaml: YAML) -> str:
    stream = io.StringIO()
    yaml.dump(config, stream)
    return stream.getvalue()


def _same_file(first: Path, second: Path) -> bool:
    if first.exists() and second.exists():
        return os.path.samefile(first, second)
    return first.resolve() == second.resolve()


def plan_config_file(path: str | Path, out: str | Path | None = None, **planning: Any) -> PlannedFile:
    """Plan the config at ``path``; write the planned YAML to ``out`` if given. ``path`` is never written.

    Args:
        path: a PyTorch Connectomics YAML config.
        out: where to write the planned config; must not be ``path`` itself.
        **planning: ``gpu_memory_gb``, ``num_gpus``, ``safety_margin``, ``db``, ``device``.

    Raises:
        InvalidInputError: unreadable or invalid YAML, ``out`` is the input, or an unknown
            architecture; NoCalibrationError: the network has no calibration.
    """
    source = Path(path)
    if out is not None and _same_file(Path(out), source):
        raise InvalidInputError(f"--out {out} is the input config: write the plan to another file")
    if out is not None:
        check_output_path(out, reading=database_files(planning.get("db")))
    config, yaml, layout = _load(source)
    plan = plan_config(config, **planning)
    _insert(config, plan)
    text = layout.apply(_dump(config, yaml))
    if out is None:
        return PlannedFile(source, plan, text)
    try:
        write_atomically(out, text)
    except OSError as error:
        raise InvalidInputError(f"cannot write {out}: {error}") from error
    return PlannedFile(source, plan, text, Path(out))
