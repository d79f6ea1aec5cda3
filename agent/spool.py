"""A run's output on its way to the head: one on-disk spool per stream, so that a run never waits for the head.

The pipe reader (`copy_pipe`) only copies the bytes a process writes into its stream's `Spool`, as fast as they
come; the `LogShipper` reads them back later, cuts them into records and ships them when the outbox has room.
A spool is a chain of segment files in the attempt's own `spool/` directory (the agent's, out of the run's
reach: `rundirs.py`); a segment read to its end is deleted, so the disk holds the backlog and one segment more.
The backlog of all the spools of one attempt shares one `SpoolBudget` (`log_spool_max_bytes`): only when it is
spent are bytes dropped, whole lines at a time, and the reader then finds a gap mark saying how many lines were
lost (a line is lost when its newline was dropped, or its last bytes at the end of the stream). Each stretch of
bytes carries the time it was read from the pipe (to within `_TS_GRANULARITY_S`), so a record's `ts` is when the
run wrote it, not when it was shipped.
Must not: decode or cut the bytes (`output.py` does), hold the backlog in memory, or block on the head.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

SEGMENT_BYTES = 8 * 1024 * 1024
PIPE_READ_BYTES = 128 * 1024
_TS_GRANULARITY_S = 0.05        # consecutive writes closer than this share the first one's time
_MAX_MARKS = 65_536             # beyond, a new stretch joins the last one (its time gets coarser, memory stays bounded)
_FILE_MODE = 0o600


class SpoolBudget:
    """The bytes the spools of one attempt may hold, together, before they drop."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used = 0

    def room(self, size: int) -> bool:
        return self.used + size <= self.max_bytes


@dataclass(slots=True)
class Piece:
    """What the reader gets next: bytes written at `ts`, or (`gap` > 0, no bytes) lines that were dropped here."""

    data: bytes
    ts: float
    gap: int = 0


class Spool:
    """One stream's spool: written by `write` (the pipe reader), read by `read` (the shipper), in order."""

    def __init__(self, directory: Path, name: str, budget: SpoolBudget, *, segment_bytes: int = SEGMENT_BYTES) -> None:
        self._dir = directory
        self._name = name
        self._budget = budget
        self._segment_bytes = segment_bytes
        # marks in stream order: [end offset, ts] for bytes up to end read at ts; [offset, -count] for a gap
        self._marks: deque[list[float]] = deque()
        self._segments: deque[tuple[int, Path]] = deque()     # (offset of its first byte, path), oldest first
        self._write_fd = -1
        self._write_start = 0
        self._written = 0           # bytes spooled so far (dropped ones not counted)
        self._read_fd = -1
        self._read_start = -1       # the offset of the segment open for reading
        self._pos = 0               # bytes read back so far
        self._dropping = False
        self._dropped = 0           # lines dropped in the current episode
        self._dropped_tail = False  # bytes of an unfinished line were dropped
        self._next_segment = 0
        self._last_mark_ts = 0.0
        self.closed = False
        self.dropped_total = 0

    # --- the writer ------------------------------------------------------------------------------------------

    def write(self, data: bytes, ts: float) -> None:
        """Spool `data`, read from the pipe at `ts`; when the budget is spent, drop whole lines and count them."""
        if self.closed:
            return
        if self._dropping:
            data = self._resume(data)
            if not data:
                return
        if not self._budget.room(len(data)):
            self._start_dropping(data)
            return
        try:
            self._append(data)
        except OSError:                 # the disk is full: the same as a full budget
            self._undo_append()
            self._start_dropping(data)
            return
        self._budget.used += len(data)
        self._written += len(data)
        last = self._marks[-1] if self._marks else None
        if last is not None and last[1] >= 0 and (ts - self._last_mark_ts < _TS_GRANULARITY_S
                                                  or len(self._marks) >= _MAX_MARKS):
            last[0] = self._written
        else:
            self._marks.append([self._written, ts])
            self._last_mark_ts = ts

    def close(self) -> None:
        """The stream ended: what was being dropped becomes a gap mark, and the reader may finish."""
        if self._dropping:
            self._end_dropping(self._dropped + (1 if self._dropped_tail else 0))
        if self._write_fd >= 0:
            os.close(self._write_fd)
            self._write_fd = -1
        self.closed = True

    def _start_dropping(self, data: bytes) -> None:
        self._dropping = True
        self._dropped = data.count(b"\n")
        self._dropped_tail = not data.endswith(b"\n")

    def _resume(self, data: bytes) -> bytes:
        """While dropping: drop up to and including the first newline once there is room again; what follows is
        spooled."""
        if not self._dropped_tail and self._budget.room(len(data)):     # dropping ended at a line's end
            self._end_dropping(self._dropped)
            return data
        newline = data.find(b"\n")
        if newline >= 0 and self._budget.room(len(data) - newline - 1):
            self._end_dropping(self._dropped + 1)
            return data[newline + 1 :]
        self._dropped += data.count(b"\n")
        self._dropped_tail = not data.endswith(b"\n")
        return b""

    def _end_dropping(self, count: int) -> None:
        self._dropping = False
        self._dropped = 0
        self._dropped_tail = False
        if count:
            self._marks.append([self._written, -count])
            self.dropped_total += count

    def _append(self, data: bytes) -> None:
        if self._write_fd < 0 or self._written - self._write_start >= self._segment_bytes:
            self._open_segment()
        view = memoryview(data)
        while view:
            view = view[os.write(self._write_fd, view):]

    def _undo_append(self) -> None:
        """Cut what a failed write left in the segment, so that offsets stay those of the spooled bytes."""
        if self._write_fd >= 0:
            try:
                os.ftruncate(self._write_fd, self._written - self._write_start)
                os.lseek(self._write_fd, 0, os.SEEK_END)
            except OSError:
                os.close(self._write_fd)
                self._write_fd = -1
                self.closed = True      # cannot be trusted any more: what it holds is read, nothing more added

    def _open_segment(self) -> None:
        if self._write_fd >= 0:
            os.close(self._write_fd)
            self._write_fd = -1
        path = self._dir / f"{self._name}.{self._next_segment}"
        self._next_segment += 1
        self._write_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, _FILE_MODE)
        self._write_start = self._written
        self._segments.append((self._written, path))

    # --- the reader ------------------------------------------------------------------------------------------

    def pending(self) -> bool:
        """Something is there to read."""
        return bool(self._marks)

    def finished(self) -> bool:
        """The writer closed and everything was read."""
        return self.closed and not self._marks

    @property
    def backlog(self) -> int:
        return self._written - self._pos

    def read(self, limit: int) -> Piece | None:
        """The next piece, of at most `limit` bytes; None when nothing is spooled."""
        if not self._marks:
            return None
        mark = self._marks[0]
        end, ts = int(mark[0]), mark[1]
        if ts < 0:
            self._marks.popleft()
            return Piece(b"", 0.0, gap=int(-ts))
        start, path = self._segments[0]
        segment_end = self._segments[1][0] if len(self._segments) > 1 else self._written
        stop = min(end, self._pos + limit, segment_end)
        if self._read_start != start:
            self._close_reader()
            self._read_fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            self._read_start = start
        data = os.pread(self._read_fd, stop - self._pos, self._pos - start)
        if len(data) != stop - self._pos:
            raise OSError(f"spool segment {path} is shorter than what was written to it")
        self._pos = stop
        self._budget.used -= len(data)
        if stop == end:
            self._marks.popleft()
        if stop == segment_end and len(self._segments) > 1:
            self._segments.popleft()
            self._close_reader()
            path.unlink(missing_ok=True)
        return Piece(data, ts)

    def _close_reader(self) -> None:
        if self._read_fd >= 0:
            os.close(self._read_fd)
            self._read_fd = -1
            self._read_start = -1

    def discard(self) -> None:
        """Close and remove every segment (read to its end, or the attempt is over); nothing more is spooled."""
        self.close()
        self._close_reader()
        for _, path in self._segments:
            path.unlink(missing_ok=True)
        self._segments.clear()
        self._budget.used -= self._written - self._pos
        self._pos = self._written
        self._marks.clear()


async def copy_pipe(stream: asyncio.StreamReader, spool: Spool) -> None:
    """Copy `stream` to `spool` until end of file, then close the spool. Does nothing else, so the pipe never
    waits on shipping."""
    try:
        while chunk := await stream.read(PIPE_READ_BYTES):
            spool.write(chunk, time.time())
    finally:
        spool.close()


def make_spool_dir(path: Path) -> Path:
    """The attempt's spool directory, the agent's own (0700)."""
    os.mkdir(path, 0o700)
    return path
