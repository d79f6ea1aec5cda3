"""Parsing and printing of sizes and durations as people write them (`16G`, `512Mi`, `90s`), and counts with their
noun in the form it takes (`1 node`, `2 nodes`)."""

from __future__ import annotations

import re

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?)b?\s*$", re.IGNORECASE)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}


def parse_size(text: str | int) -> int:
    """`16G`, `16GiB`, `512M`, `1.5g` or a plain byte count -> bytes.

    Suffixes are binary (`G` = 2**30), as memory sizes are in Slurm and Kubernetes' `Gi`.
    """
    if isinstance(text, int):
        if text < 0:
            raise ValueError("size must not be negative")
        return text
    match = _SIZE.match(str(text))
    if not match:
        raise ValueError(f"{text!r} is not a size; write e.g. 512M, 16G or 1T")
    number, unit, _ = match.groups()
    return int(float(number) * (1024 ** _POWERS[unit.lower()]))


def format_size(n_bytes: int) -> str:
    """Bytes -> a short human string such as `16.0G`."""
    value = float(n_bytes)
    for unit in ("B", "K", "M", "G", "T"):
        if abs(value) < 1024 or unit == "T":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}


def parse_duration(text: str) -> float:
    """Seconds of '90', '90s', '30m', '1h', '7d' or '2w'; ValueError otherwise."""
    raw = text.strip().lower()
    unit = raw[-1:] if raw[-1:] in _DURATION_UNITS else "s"
    number = raw[:-1] if raw[-1:] in _DURATION_UNITS else raw
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"{text!r} is not a duration; say e.g. 90s, 30m, 1h, 7d") from None
    if value < 0 or value != value:
        raise ValueError(f"{text!r} is not a duration; say e.g. 90s, 30m, 1h, 7d")
    return value * _DURATION_UNITS[unit]


def plural(count: int, word: str, words: str | None = None) -> str:
    """`1 node`, `2 nodes`, `0 nodes`: the count and the word in the form it takes (`words` when not `word` + s)."""
    return f"{count:,} {word if count == 1 else (words or word + 's')}"
