"""Reads the records file a run's SDK appends to, one complete line at a time, for the agent to ship.

The sequence number of a record is its 0-based line number in the file, so a line shipped twice is stored once
by the head. Every complete line consumes its number, also a line that is not valid JSON, has the wrong shape
or is longer than `max_line_bytes`: those yield no Record and are logged with their seq. A trailing line without
its newline is held back until the newline arrives. The line format is drawn in `runyard/sdk.py`.

What this module must not do: raise (the file is written by user code and may hold anything), block, hold an
overlong line in memory, or do unbounded work in one call. It does no validation of metric names: the head
applies its own rules to what it stores. Stdlib only; a RecordTail is used by one caller at a time.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

logger = logging.getLogger(__name__)

_CHUNK_BYTES = 1 << 20
_MIN_BYTES_PER_CALL = 32 << 20
_STEP_MIN, _STEP_MAX = -(2**63), 2**63 - 1
_ENDS = frozenset({"", "FINISHED", "FAILED", "KILLED"})


@dataclass(frozen=True, slots=True)
class Record:
    """One line of a records file, checked for shape."""

    seq: int  # 0-based line number in the file
    ts: float
    metrics: tuple[tuple[str, float, int], ...]  # (key, value, step)
    params: dict[str, str]
    tags: dict[str, str]
    run: str  # "" for the run itself, else the id of a child run
    child: tuple[str, str] | None  # (child_id, name) when this line announces a child of `run`
    end: str = ""  # FINISHED, FAILED or KILLED: the child run `run` ended


class _Malformed(ValueError):
    """A line is valid JSON but not a record."""


class RecordTail:
    """Follows one records file across calls, keeping its byte offset and line count.

    `read_new()` returns the records of the complete lines appended since the previous call, at most
    `max_lines_per_call` lines' worth and a bounded number of bytes; the next call goes on from there.
    """

    def __init__(self, path: Path, *, max_line_bytes: int = 1_000_000, max_lines_per_call: int = 10_000) -> None:
        if max_line_bytes < 1 or max_lines_per_call < 1:
            raise ValueError("max_line_bytes and max_lines_per_call must be positive")
        self.path = Path(path)
        self._max_line_bytes = max_line_bytes
        self._max_lines = max_lines_per_call
        # Enough to finish a line of the maximum length that began anywhere in the call.
        self._max_bytes_per_call = max(_MIN_BYTES_PER_CALL, 2 * (max_line_bytes + _CHUNK_BYTES))
        self._offset = 0  # bytes consumed: whole lines plus the discarded head of an overlong line
        self._next_seq = 0
        self._discarding = False  # inside an overlong line whose head has been read and thrown away

    @property
    def next_seq(self) -> int:
        """The seq the next complete line will get: the number of lines consumed so far."""
        return self._next_seq

    def read_new(self) -> list[Record]:
        """Records of the complete lines appended since the last call; [] while the file does not exist."""
        try:
            with open(self.path, "rb") as file:
                file.seek(self._offset)
                return self._read_lines(file)
        except FileNotFoundError:
            return []
        except OSError as err:
            logger.warning("cannot read records file %s: %s", self.path, err, extra={"records_path": str(self.path)})
            return []

    def _read_lines(self, file: BinaryIO) -> list[Record]:
        records: list[Record] = []
        lines = 0
        budget = self._max_bytes_per_call
        data = b""  # bytes from self._offset on that are not consumed yet
        start = scan = 0  # where the unconsumed bytes begin in data, and where to look for the next newline
        while lines < self._max_lines:
            newline = data.find(b"\n", scan)
            if newline < 0:
                data = self._keep_partial(data[start:])
                start, scan = 0, len(data)
                chunk = self._read_chunk(file) if budget > 0 else b""
                if not chunk:
                    break
                budget -= len(chunk)
                data += chunk
                continue
            line = data[start:newline]
            self._offset += newline + 1 - start
            start = scan = newline + 1
            lines += 1
            record = self._take_line(line)
            if record is not None:
                records.append(record)
        return records

    def _keep_partial(self, partial: bytes) -> bytes:
        """What to keep of a line without its newline yet: all of it, or nothing once it is too long."""
        if self._discarding or len(partial) > self._max_line_bytes:
            self._discarding = True
            self._offset += len(partial)
            return b""
        return partial

    def _read_chunk(self, file: BinaryIO) -> bytes:
        try:
            return file.read(_CHUNK_BYTES)
        except OSError as err:
            logger.warning("cannot read records file %s: %s", self.path, err, extra={"records_path": str(self.path)})
            return b""

    def _take_line(self, line: bytes) -> Record | None:
        seq = self._next_seq
        self._next_seq += 1
        if self._discarding or len(line) > self._max_line_bytes:
            self._discarding = False
            self._skip(seq, f"line longer than {self._max_line_bytes} bytes")
            return None
        try:
            return _parse(seq, line)
        except RecursionError:
            reason = "JSON nested too deeply"
        except ValueError as err:  # json.JSONDecodeError, UnicodeDecodeError and _Malformed are ValueErrors
            reason = str(err)[:200]
        self._skip(seq, reason)
        return None

    def _skip(self, seq: int, reason: str) -> None:
        logger.warning(
            "skipping record line seq=%d of %s: %s",
            seq,
            self.path,
            reason,
            extra={"records_path": str(self.path), "seq": seq, "reason": reason},
        )


def _parse(seq: int, line: bytes) -> Record:
    obj = json.loads(line)
    if not isinstance(obj, dict):
        raise _Malformed(f"expected a JSON object, got {type(obj).__name__}")
    child = obj.get("child")
    return Record(
        seq=seq,
        ts=_timestamp(obj.get("ts")),
        metrics=tuple(_metric(item) for item in _list(obj.get("metrics", []), "metrics")),
        params=_text_map(obj.get("params", {}), "params"),
        tags=_text_map(obj.get("tags", {}), "tags"),
        run=_text(obj.get("run", ""), "run"),
        child=None if child is None else _child(child),
        end=_end(obj.get("end", "")),
    )


def _end(value: Any) -> str:
    if value not in _ENDS:
        raise _Malformed(f"end must be one of {', '.join(sorted(_ENDS))}")
    return str(value)


def _timestamp(value: Any) -> float:
    ts = _number(value, "ts")
    if not math.isfinite(ts):
        raise _Malformed("ts must be a finite number")
    return ts


# Metric keys already seen valid: a script logs the same few keys again and again.
_GOOD_KEYS: set[str] = set()
_MAX_GOOD_KEYS = 10_000


def _metric(item: Any) -> tuple[str, float, int]:
    """(key, value, step) of one metric; the common shape (a known key, a float, an int step) checked at once."""
    if type(item) is dict:
        key, value, step = item.get("k"), item.get("v"), item.get("s")
        if type(key) is str and key in _GOOD_KEYS and type(value) is float and type(step) is int \
                and _STEP_MIN <= step <= _STEP_MAX:
            return key, value, step
    found = _checked_metric(item)
    if len(_GOOD_KEYS) < _MAX_GOOD_KEYS:
        _GOOD_KEYS.add(found[0])
    return found


def _checked_metric(item: Any) -> tuple[str, float, int]:
    if not isinstance(item, dict):
        raise _Malformed("each metric must be an object with k, v and s")
    key = _text(item.get("k"), "metric key")
    if not key:
        raise _Malformed("metric key must not be empty")
    step = item.get("s")
    if isinstance(step, bool) or not isinstance(step, int) or not _STEP_MIN <= step <= _STEP_MAX:
        raise _Malformed(f"metric {key!r}: step must be a signed 64-bit integer")
    return key, _number(item.get("v"), f"metric {key!r} value"), step


def _child(value: Any) -> tuple[str, str]:
    if not isinstance(value, dict):
        raise _Malformed("child must be an object with id and name")
    child_id = _text(value.get("id"), "child id")
    if not child_id:
        raise _Malformed("child id must not be empty")
    return child_id, _text(value.get("name"), "child name")


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Malformed(f"{what} must be a number")
    try:
        return float(value)
    except OverflowError as err:
        raise _Malformed(f"{what} is too large") from err


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise _Malformed(f"{what} must be a list")
    return value


def _text_map(value: Any, what: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise _Malformed(f"{what} must be an object of strings")
    return {_text(key, f"{what} key"): _text(text, f"{what} value") for key, text in value.items()}


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise _Malformed(f"{what} must be a string")
    try:
        value.encode("utf-8")  # a lone surrogate from a \ud800 escape cannot go on the wire
    except UnicodeEncodeError as err:
        raise _Malformed(f"{what} is not valid Unicode") from err
    return value
