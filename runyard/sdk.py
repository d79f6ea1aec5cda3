"""The in-script SDK: what a training script calls to log metrics, params, tags and child runs.

Inside a run (`RUNYARD_RUN_ID` and `RUNYARD_RECORDS_FILE` both set) every call appends one record to an
in-memory buffer and returns; a daemon thread writes the buffer to the records file every 0.2 s and `atexit`
writes what is left. The node agent tails that file and ships each complete line to the head, using its line
number as the sequence number. Each process of a distributed run has a records file of its own: a file name
with `{RANK}` in it (what the agent gives a `torchrun` launcher, whose workers share its environment) is the
process's own once `{RANK}` is replaced by its RANK variable. Outside Runyard the run is offline: each call prints one short line and the same
records go to `./runyard-offline/<id>/records.jsonl`, said once, on stderr, when the run is made (not a line per
call).

One line of the records file (written with `json.dumps(..., allow_nan=True, separators=(",", ":"))`):

    {"ts": 1717000000.5, "k": ["loss", "acc"], "v": [0.31, 0.9], "s": 120, "params": {"lr": "0.1"},
     "tags": {"team": "cv"}, "run": "<child id>", "child": {"id": "<child id>", "name": "fold-1"}}

The metric points are columns: keys `k`, values `v` and steps `s`, one step for every point or a list of one per
point (columns cost a third of an object per point to write and to read). `k`/`v`/`s`, `params`, `tags` and `run`
are left out when empty; `child` only appears on the line announcing a
child run; `{"ts": ..., "run": "<child id>", "end": "FINISHED"}` (or `FAILED`, `KILLED`: MLflow's words, which the
agent's MLflow endpoint writes too) ends a child run, which otherwise ends with the run's process; NaN and +-inf are written as the JSON extensions `NaN`, `Infinity`, `-Infinity`.

What this module must not do:
- import anything but the standard library and `runyard.ids`: it runs where no dependency is installed;
- talk to the network, or block the training loop on I/O (only `flush()`, process exit and a loop 20,000 records
  ahead of the flush thread write: that loop writes its own, to a local file);
- raise into the training loop because the file cannot be written. A bad name or value is the user's mistake
  and raises at once (ValueError, TypeError), before anything is buffered.
"""

from __future__ import annotations

import atexit
import json
import operator
import os
import re
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, SupportsFloat, SupportsIndex

from runyard.ids import new_run_id

__all__ = ["Run"]

RUN_ID_ENV = "RUNYARD_RUN_ID"
RECORDS_FILE_ENV = "RUNYARD_RECORDS_FILE"
OFFLINE_DIR_NAME = "runyard-offline"
OFFLINE_RECORDS_NAME = "records.jsonl"
_END_STATUSES = {"completed": "FINISHED", "failed": "FAILED", "canceled": "KILLED"}

FLUSH_INTERVAL_S = 0.2
MAX_BUFFERED_RECORDS = 100_000
MAX_NAME_CHARS = 250
MAX_VALUE_CHARS = 6000
_RECORDS_PER_WRITE = 10_000
_CATCH_UP_RECORDS = 2 * _RECORDS_PER_WRITE      # buffered records past which the logging thread writes itself
_STEP_MIN, _STEP_MAX = -(2**63), 2**63 - 1

# MLflow's rule: word characters (Unicode letters, digits, "_"), "-", ".", " " and "/".
_NAME_CHARS = re.compile(r"[\w\-. /]+")


# ---------------------------------------------------------------------------------------------------------
# Validation: the user's mistakes raise here, before anything is buffered.


def _check_name(kind: str, name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"{kind} name must be a str, got {type(name).__name__}")
    if not name:
        raise ValueError(f"{kind} name must not be empty")
    if len(name) > MAX_NAME_CHARS:
        raise ValueError(f"{kind} name {name[:40]!r}... is {len(name)} characters long; the limit is {MAX_NAME_CHARS}")
    if not _NAME_CHARS.fullmatch(name):
        raise ValueError(
            f"invalid {kind} name {name!r}: use only letters, digits, '_', '-', '.', ' ' and '/'"
        )
    if name.startswith("/"):
        raise ValueError(f"invalid {kind} name {name!r}: it must not start with '/'")
    if any(segment in ("", ".", "..") for segment in name.split("/")):
        raise ValueError(f"invalid {kind} name {name!r}: it must not contain empty, '.' or '..' path segments")
    return name


# Metric names already checked: a training loop logs the same few names again and again.
_GOOD_METRIC_NAMES: set[str] = set()
_FLOAT_ONLY = {float}
_MAX_GOOD_NAMES = 10_000


def _good_metric_name(key: object) -> str:
    name = _check_name("metric", key)
    if len(_GOOD_METRIC_NAMES) < _MAX_GOOD_NAMES:
        _GOOD_METRIC_NAMES.add(name)
    return name


def _metric_value(key: str, value: object) -> float:
    if type(value) is float:        # the common case first: the checks below cost more than logging a point
        return value
    # numpy's bool is named `bool_` (numpy 1) or `bool` (numpy 2) and is not a subclass of bool.
    if isinstance(value, bool) or type(value).__name__ in ("bool", "bool_"):
        raise TypeError(f"metric {key!r}: value must be a real number, got a bool")
    # What float() takes but text: numbers, and numpy or torch scalars (they have __float__). float and int come
    # first: isinstance() against a protocol is slow, and most values are plain numbers.
    text = isinstance(value, (str, bytes, bytearray))
    if text or not isinstance(value, (float, int, SupportsFloat, SupportsIndex)):
        raise TypeError(f"metric {key!r}: value must be a real number, got {type(value).__name__}")
    try:
        return float(value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"metric {key!r}: value must be a real number, got {type(value).__name__}") from err


def _metric_step(step: object) -> int:
    if isinstance(step, bool):
        raise TypeError("step must be an int, got a bool")
    if not isinstance(step, (int, SupportsIndex)):        # int first: a protocol check is slow
        raise TypeError(f"step must be an int, got {type(step).__name__}")
    number = operator.index(step)
    if not _STEP_MIN <= number <= _STEP_MAX:
        raise ValueError(f"step {number} does not fit in a signed 64-bit integer")
    return number


def _text_value(kind: str, key: str, value: object) -> str:
    text = str(value)
    if len(text) > MAX_VALUE_CHARS:
        raise ValueError(f"{kind} {key!r}: value is {len(text)} characters long; the limit is {MAX_VALUE_CHARS}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"{kind} {key!r}: value is not valid Unicode ({err.reason})") from err
    return text


def _child_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"child run name must be a str, got {type(name).__name__}")
    if not name or len(name) > MAX_NAME_CHARS:
        raise ValueError(f"child run name must be 1 to {MAX_NAME_CHARS} characters long")
    return name


# ---------------------------------------------------------------------------------------------------------
# The records file: callers only touch memory; a daemon thread, flush() and atexit write.


def _warn(message: str) -> None:
    if sys.stderr is not None:
        print(f"runyard: {message}", file=sys.stderr, flush=True)


class _RecordFile:
    """Buffers records in memory and appends them to one file as whole JSON lines.

    `lock` guards the buffer and is what a Run holds while it turns a call into a record, so that its step
    counters and the buffer's order agree. Writes are serialised by a second lock: the flush thread, `flush()`
    and `atexit` may race. A batch that was only partly written keeps its unwritten bytes and is finished before
    anything else is written, so a line is never split by another. A loop that logs faster than the flush thread
    writes is held back (`keep_up`: the caller writes), not dropped. If the file cannot be written, one warning
    goes to stderr, the buffer keeps at most `max_buffered` records (oldest dropped and counted) and every
    flush tries again.
    """

    def __init__(self, path: Path, *, create_parent: bool, max_buffered: int = MAX_BUFFERED_RECORDS) -> None:
        self.path = path
        self._create_parent = create_parent
        self._max_buffered = max_buffered
        self._reset_state()
        _LIVE_FILES.add(self)
        atexit.register(self.close)

    def _reset_state(self) -> None:
        self.lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._buffer: deque[dict[str, Any]] = deque()
        self._unwritten = b""  # tail of a batch whose write failed part-way
        self._fd: int | None = None
        self._dropped = 0
        self._dropped_reported = 0
        self._warned = False
        self._failing = False  # the last write failed: the buffer is capped instead of the caller held back
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def after_fork_in_child(self) -> None:
        """The parent still owns what it buffered; the child starts empty, with fresh locks and no thread."""
        fd = self._fd
        self._reset_state()
        self._fd = fd

    def put(self, record: dict[str, Any]) -> None:
        """Queue one record. The caller holds `lock`."""
        if len(self._buffer) >= self._max_buffered:
            self._buffer.popleft()
            self._dropped += 1
        self._buffer.append(record)
        if self._thread is None and not self._stop.is_set():
            self._thread = threading.Thread(target=self._flush_loop, name="runyard-records", daemon=True)
            self._thread.start()

    def keep_up(self) -> None:
        """When the flush thread has fallen behind (a loop logging faster than one thread encodes and writes), write
        in the caller's thread: a short wait on a local file instead of records dropped. The caller holds no lock."""
        if len(self._buffer) >= _CATCH_UP_RECORDS and not self._failing:
            self.flush()

    def _flush_loop(self) -> None:
        while not self._stop.wait(FLUSH_INTERVAL_S):
            self.flush()

    def flush(self) -> None:
        """Write everything buffered so far; on failure warn once and keep it for the next try."""
        with self._write_lock:
            self._flush_locked()

    def close(self) -> None:
        """Stop the thread and write what is left; say how much could not be written (runs at exit)."""
        self._stop.set()
        with self._write_lock:
            self._flush_locked()
            with self.lock:
                left = len(self._buffer) + self._unwritten.count(b"\n")
        if left:
            _warn(f"{left} record{_s(left)} could not be written to {self.path}")

    def _flush_locked(self) -> None:
        with self.lock:
            batches = (len(self._buffer) + _RECORDS_PER_WRITE - 1) // _RECORDS_PER_WRITE
        if not batches and not self._unwritten:
            return  # nothing to write: do not create the file (or the offline directory) for nothing
        if self._write_unwritten():
            for _ in range(batches):
                batch = self._take_batch()
                if not batch:
                    break
                self._unwritten = b"".join(_encode(record) for record in batch)
                if not self._write_unwritten():
                    break
        self._report_dropped()

    def _take_batch(self) -> list[dict[str, Any]]:
        with self.lock:
            count = min(len(self._buffer), _RECORDS_PER_WRITE)
            return [self._buffer.popleft() for _ in range(count)]

    def _write_unwritten(self) -> bool:
        """Write the pending batch; True when nothing is pending any more."""
        try:
            if self._fd is None:
                self._fd = self._open()
            while self._unwritten:
                written = os.write(self._fd, self._unwritten)
                self._unwritten = self._unwritten[written:]
            self._failing = False
        except OSError as err:
            self._close_fd()
            self._failing = True
            if not self._warned:
                self._warned = True
                _warn(
                    f"cannot write records to {self.path} ({err}); keeping up to {self._max_buffered} "
                    "records in memory and retrying"
                )
            return False
        return True

    def _open(self) -> int:
        if self._create_parent:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        return os.open(self.path, flags, 0o644)

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass  # the descriptor is gone either way; the write error was already reported

    def _report_dropped(self) -> None:
        with self.lock:
            dropped = self._dropped
        if dropped > self._dropped_reported and not self._unwritten:
            lost = dropped - self._dropped_reported
            _warn(f"dropped the {lost} oldest record{_s(lost)} for {self.path}: the buffer was full")
            self._dropped_reported = dropped


def _encode(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, allow_nan=True, separators=(",", ":")) + "\n").encode("utf-8")


_LIVE_FILES: weakref.WeakSet[_RecordFile] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for records in list(_LIVE_FILES):
        records.after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# ---------------------------------------------------------------------------------------------------------
# The run as a script sees it.


def _s(count: int) -> str:
    """The plural ending of a count's noun (this module imports only the standard library: not `runyard.units`)."""
    return "" if count == 1 else "s"


def _offline_id(now_s: float) -> str:
    return f"offline-{time.strftime('%Y%m%d-%H%M%S', time.localtime(now_s))}-{int(now_s * 1e6) % 1_000_000:06d}"


class Run:
    """The run a script belongs to. Get it with `Run.get_context()`; make children with `child_run()`.

    Logging methods validate their arguments, queue one record and return; they never wait for I/O. When `step`
    is None a metric takes the next step of its own key: 0, 1, 2, ..., continuing after the last explicit step.
    """

    _context: ClassVar[Run | None] = None
    _context_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, run_id: str, *, records: _RecordFile, offline: bool, child_id: str = "") -> None:
        self.id = run_id
        self._records = records
        self._offline = offline
        self._child_id = child_id  # "" for the run itself; records of a child carry its id as "run"
        self._next_steps: dict[str, int] = {}

    @classmethod
    def get_context(cls) -> Run:
        """The run of this process: online inside Runyard, else an offline run. The same object every call."""
        with cls._context_lock:
            if cls._context is None:
                cls._context = cls._from_environ(os.environ, cwd=Path.cwd())
            return cls._context

    @classmethod
    def _from_environ(cls, environ: Mapping[str, str], *, cwd: Path) -> Run:
        run_id = environ.get(RUN_ID_ENV, "")
        records_file = environ.get(RECORDS_FILE_ENV, "")
        if run_id and records_file:
            own = records_file.replace("{RANK}", environ.get("RANK", "0"))
            return cls(run_id, records=_RecordFile(Path(own), create_parent=False), offline=False)
        offline_id = _offline_id(time.time())
        where = Path(OFFLINE_DIR_NAME) / offline_id
        if sys.stderr is not None:
            print(f"runyard: not inside a Runyard run; offline run {offline_id}: its records go to ./{where}/",
                  file=sys.stderr, flush=True)
        return cls(offline_id, records=_RecordFile(cwd / where / OFFLINE_RECORDS_NAME, create_parent=True),
                   offline=True)

    @property
    def offline(self) -> bool:
        """True outside Runyard: records are written to ./runyard-offline/<id>/records.jsonl."""
        return self._offline

    def log(self, key: str, value: float, step: int | None = None) -> None:
        """Log one metric value; NaN and +-inf are kept as given."""
        self.log_metrics({key: value}, step=step)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log several metrics in one record; all are checked before any is queued."""
        if not isinstance(metrics, Mapping):
            raise TypeError(f"metrics must be a mapping of name to value, got {type(metrics).__name__}")
        explicit = None if step is None else _metric_step(step)
        keys = list(metrics)
        if not keys:
            return
        if not _GOOD_METRIC_NAMES.issuperset(keys):
            keys = [_good_metric_name(key) for key in keys]
        values = list(metrics.values())
        if set(map(type, values)) != _FLOAT_ONLY:    # the common case: every value a float already
            values = [_metric_value(key, value) for key, value in zip(keys, values)]
        with self._records.lock:
            steps: int | list[int]
            if explicit is None:
                steps = [self._take_step(key, None) for key in keys]
            else:   # one step for all: no per-key bookkeeping but the next step of each
                steps = explicit
                self._next_steps.update(dict.fromkeys(keys, min(explicit + 1, _STEP_MAX)))
            self._put({"k": keys, "v": values, "s": steps})
        self._records.keep_up()

    def log_param(self, key: str, value: object) -> None:
        """Record a parameter; the value is stored as `str(value)`."""
        self._log_text("params", "param", key, value)

    def set_tag(self, key: str, value: object) -> None:
        """Set a tag; the value is stored as `str(value)`."""
        self._log_text("tags", "tag", key, value)

    def flush(self) -> None:
        """Write buffered records now. Never raises for I/O; an unwritable file is reported once on stderr."""
        self._records.flush()

    def child_run(self, name: str) -> Run:
        """Start a child run of this one; its records go to the same file, tagged with the child's id."""
        name = _child_name(name)
        child_id = new_run_id()
        with self._records.lock:
            self._put({"child": {"id": child_id, "name": name}})
        return Run(child_id, records=self._records, offline=self._offline, child_id=child_id)

    def end(self, state: str = "Completed") -> None:
        """End this child run as `Completed`, `Failed` or `Canceled` (any case). A child left open ends with the
        run's process. The run itself ends with its process, so only a child run can be ended this way."""
        if not self._child_id:
            raise ValueError("the run ends with its process; end() is for child runs")
        status = _END_STATUSES.get(state.lower()) if isinstance(state, str) else None
        if status is None:
            raise ValueError(f"a child run ends Completed, Failed or Canceled, not {state!r}")
        with self._records.lock:
            self._put({"end": status})

    def __enter__(self) -> Run:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, traceback: object) -> None:
        """`with run.child_run("fold-1") as child:` ends the child Completed, or Failed when the block raised."""
        if self._child_id:
            self.end("Failed" if kind is not None else "Completed")

    def _log_text(self, field: str, kind: str, key: str, value: object) -> None:
        key = _check_name(kind, key)
        text = _text_value(kind, key, value)
        with self._records.lock:
            self._put({field: {key: text}})
        self._records.keep_up()

    def _take_step(self, key: str, explicit: int | None) -> int:
        step = self._next_steps.get(key, 0) if explicit is None else explicit
        self._next_steps[key] = min(step + 1, _STEP_MAX)
        return step

    def _put(self, body: dict[str, Any]) -> None:
        record: dict[str, Any] = {"ts": time.time(), **body}
        if self._child_id:
            record["run"] = self._child_id
        self._records.put(record)

    def __repr__(self) -> str:
        return f"Run(id={self.id!r}, offline={self._offline})"
