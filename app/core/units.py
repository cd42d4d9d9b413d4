"""Byte sizes: parse what people write ("12 GiB", "512MB", 1073741824) and format for humans."""

from __future__ import annotations

import re

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40

_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": KiB,
    "mib": MiB,
    "gib": GiB,
    "tib": TiB,
}

_SIZE_RE = re.compile(r"^\s*(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>[a-zA-Z]*)\s*$")


class SizeParseError(ValueError):
    """A size that is not a non-negative number of bytes with an optional unit."""


def parse_size(value: object) -> int:
    """Return a byte count from an int or a string such as "2 GiB", "1.5GB" or "512 MiB".

    Decimal units (KB, MB, GB, TB) are powers of 1000; binary units (KiB, MiB, GiB, TiB) powers of 1024,
    as in nvidia-smi (which prints MiB).
    """
    if isinstance(value, bool):
        raise SizeParseError(f'expected a size such as 2147483648 or "2 GiB", got the boolean {value}')
    if isinstance(value, int):
        if value < 0:
            raise SizeParseError(f"expected a size of 0 bytes or more, got {value}")
        return value
    if isinstance(value, float):
        raise SizeParseError(f'expected a whole number of bytes or a string such as "2 GiB", got {value}')
    if not isinstance(value, str):
        raise SizeParseError(f'expected a size such as 2147483648 or "2 GiB", got {type(value).__name__}')
    if value.strip().startswith("-"):
        raise SizeParseError(f"expected a size of 0 bytes or more, got {value!r}")
    match = _SIZE_RE.match(value)
    if not match:
        raise SizeParseError(f'expected a size such as "2 GiB", "512 MiB" or "1.5 GB", got {value!r}')
    unit = match["unit"].lower()
    if unit not in _UNITS:
        raise SizeParseError(
            f"unknown unit {match['unit']!r} in {value!r}; use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB"
        )
    return round(float(match["number"]) * _UNITS[unit])


def format_bytes(n: int | None, *, binary: bool = True) -> str:
    """Format a byte count for people: "1.5 GiB", "512.0 MiB", "0 B"; None means "not available" (N/A).

    This is the one way sizes are written for people (events, notifications, CLI, tray and dashboard):
    binary units, as nvidia-smi uses (its "MiB" is 1024 * 1024 bytes), one decimal."""
    if n is None:
        return "N/A"
    sign = "-" if n < 0 else ""
    n = abs(n)
    step = 1024 if binary else 1000
    names = ["B", "KiB", "MiB", "GiB", "TiB"] if binary else ["B", "KB", "MB", "GB", "TB"]
    value = float(n)
    for name in names:
        if value < step or name == names[-1]:
            if name == "B":
                return f"{sign}{int(value)} B"
            return f"{sign}{value:.1f} {name}"
        value /= step
    raise AssertionError("unreachable")


def format_usage(used_bytes: int, total_bytes: int) -> str:
    """Used of total, each as format_bytes says it, as nvidia-smi pairs them: "5.5 GiB / 12.0 GiB"."""
    return f"{format_bytes(used_bytes)} / {format_bytes(total_bytes)}"


def format_rate(bytes_per_s: float | None) -> str:
    """A transfer rate in the same binary units: "3.7 GiB/s". None means "not available" (N/A)."""
    if bytes_per_s is None:
        return "N/A"
    return f"{format_bytes(round(bytes_per_s))}/s"
