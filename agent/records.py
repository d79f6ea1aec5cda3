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
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

logger = logging.getLogger(__name__)

_CHUNK_BYTES = 1 << 20
_MIN_BYTES_PER_CALL = 32 << 20
_STEP_MIN, _STEP_MAX = -(2**63), 2**63 - 1
_ENDS = frozenset({"", "FINISHED", "FAILED", "KILLED"})


class Record(NamedTuple):
    """One line of a records file, checked for shape. A NamedTuple, not a frozen dataclass: one is made per line
    read, and a tuple is made at a quarter of the cost."""

    seq: int  # 0-based line number in the file
    ts: float
    keys: list[str]  # its metric points as columns, one entry per point
    values: list[float]
    steps: list[int]
    params: dict[str, str]
    tags: dict[str, str]
    run: str  # "" for the run itself, else the id of a child run
    child: tuple[str, str] | None  # (child_id, name) when this line announces a child of `run`
    end: str = ""  # FINISHED, FAILED or KILLED: the child run `run` ended

    @property
    def metrics(self) -> tuple[tuple[str, float, int], ...]:
        """Its points as (key, value, step)."""
        return tuple(zip(self.keys, self.values, self.steps))


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


_DECODE = json.JSONDecoder().decode      # json.loads, less its per-call checks of the argument's type


def _parse(seq: int, line: bytes) -> Record:
    obj = _DECODE(line.decode("utf-8"))
    if type(obj) is not dict:
        raise _Malformed(f"expected a JSON object, got {type(obj).__name__}")
    get = obj.get
    child, params, tags, run = get("child"), get("params"), get("tags"), get("run")
    keys, values, steps = _points(get("k", []), get("v", []), get("s", []))
    return Record(
        seq=seq,
        ts=_timestamp(get("ts")),
        keys=keys,
        values=values,
        steps=steps,
        params={} if params is None else _text_map(params, "params"),
        tags={} if tags is None else _text_map(tags, "tags"),
        run="" if run is None else _text(run, "run"),
        child=None if child is None else _child(child),
        end=_end(get("end", "")),
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
_FLOAT_ONLY = {float}
_INT_ONLY = {int}


def _points(keys: Any, values: Any, steps: Any) -> tuple[list[str], list[float], list[int]]:
    """The columns of a line's points: keys, values and steps (one step for all, or one per point). The common
    shape (known keys, float values, int steps) is checked column by column at C speed."""
    if type(keys) is not list or type(values) is not list or len(values) != len(keys):
        raise _Malformed("metric keys k and values v must be lists of the same length")
    if type(steps) is int:
        steps = [steps] * len(keys)
    elif type(steps) is not list or len(steps) != len(keys):
        raise _Malformed("metric steps s must be an integer or a list as long as k")
    if not keys:
        return keys, values, steps
    try:
        known = _GOOD_KEYS.issuperset(keys)
    except TypeError:       # an unhashable key: the checks below say what is wrong with it
        known = False
    if not known:
        for key in keys:
            _metric_key(key)
    if set(map(type, values)) != _FLOAT_ONLY:
        values = [_number(value, f"metric {key!r} value") for key, value in zip(keys, values)]
    if set(map(type, steps)) != _INT_ONLY or min(steps) < _STEP_MIN or max(steps) > _STEP_MAX:
        for key, step in zip(keys, steps):
            if type(step) is not int or not _STEP_MIN <= step <= _STEP_MAX:
                raise _Malformed(f"metric {key!r}: step must be a signed 64-bit integer")
    return keys, values, steps


def _metric_key(key: Any) -> str:
    key = _text(key, "metric key")
    if not key:
        raise _Malformed("metric key must not be empty")
    if len(_GOOD_KEYS) < _MAX_GOOD_KEYS:
        _GOOD_KEYS.add(key)
    return key


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
