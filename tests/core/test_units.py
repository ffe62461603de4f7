"""Tests of memprobe.core.units: reading and writing memory sizes."""

from __future__ import annotations

import pytest

from memprobe.core.errors import InvalidInputError, MemprobeError
from memprobe.core.units import GIB, MIB, format_bytes, parse_bytes


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("24GiB", 24 * 1024**3),
        ("24GB", 24 * 1000**3),
        ("24000MiB", 24000 * 1024**2),
        ("24", 24 * 1024**3),
        ("24 gib", 24 * 1024**3),
        (" 80GiB ", 80 * 1024**3),
        ("1.5GiB", 3 * 1024**3 // 2),
        ("512MB", 512 * 1000**2),
        ("2TiB", 2 * 1024**4),
        ("16G", 16 * 1024**3),
        ("4096B", 4096),
    ],
)
def test_parse_bytes_reads_binary_and_decimal_units(text: str, expected: int) -> None:
    """Binary units are powers of 1024, decimal ones of 1000, and bare text means GiB."""
    assert parse_bytes(text) == expected


def test_parse_bytes_takes_python_numbers_as_bytes() -> None:
    """A number from Python code is already a byte count (the CLI and API pass bytes on)."""
    assert parse_bytes(24 * GIB) == 24 * GIB
    assert parse_bytes(float(8 * GIB)) == 8 * GIB


@pytest.mark.parametrize("text", ["0", "-1", "abc", "24XB", "", "GiB", "0GiB", "1e3", "24 GiB GiB", True])
def test_parse_bytes_rejects_bad_sizes_in_one_line(text: object) -> None:
    """Zero, negative, non-numeric and unknown-unit sizes raise one-line InvalidInputErrors."""
    with pytest.raises(InvalidInputError) as caught:
        parse_bytes(text)  # type: ignore[arg-type]
    message = str(caught.value)
    assert message and "\n" not in message
    assert isinstance(caught.value, MemprobeError) and caught.value.exit_code == 2


def test_parse_bytes_error_shows_valid_examples() -> None:
    """An unreadable size is answered with examples of sizes that are read."""
    with pytest.raises(InvalidInputError, match="24GiB"):
        parse_bytes("24XB")


@pytest.mark.parametrize("number", [0, -5, 0.0, 0.5])
def test_parse_bytes_rejects_non_positive_numbers(number: float) -> None:
    """Zero and negative byte counts are refused, as they are as text."""
    with pytest.raises(InvalidInputError, match="greater than zero"):
        parse_bytes(number)


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (None, "-"),
        (0, "0 B"),
        (511, "511 B"),
        (1024, "1.00 KiB"),
        (MIB, "1.00 MiB"),
        (1.5 * GIB, "1.50 GiB"),
        (24 * GIB, "24.00 GiB"),
        (-2 * GIB, "-2.00 GiB"),
    ],
)
def test_format_bytes_picks_the_largest_binary_unit(size: float | None, text: str) -> None:
    """Sizes print with the largest binary unit they reach, two decimals."""
    assert format_bytes(size) == text


@pytest.mark.parametrize("text", ["24GiB", "1.50GiB", "300MiB", "7KiB"])
def test_format_then_parse_round_trips(text: str) -> None:
    """What format_bytes writes, parse_bytes reads back to the same size."""
    size = parse_bytes(text)
    assert parse_bytes(format_bytes(size).replace(" ", "")) == size


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
def test_parse_bytes_rejects_non_finite_numbers(number: float) -> None:
    """NaN and infinity are input errors, not crashes in int()."""
    with pytest.raises(InvalidInputError, match="memory size"):
        parse_bytes(number)
