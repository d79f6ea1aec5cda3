"""Cutting a process's stdout/stderr bytes into bounded, sequence-numbered log records.

A line is split at `record_bytes`: every piece but the last of a line is marked `continued`, so a 10 MB line with
no newline is stored exactly, in bounded records. Bytes are kept as they are (invalid UTF-8, ANSI escapes).
A launcher's output (`torchrun`, started with `RANK_PREFIX_TEMPLATE` as its line prefix and `--tee` on) mixes its
workers' lines, each prefixed `[rankR]:`; with `tagged` ranks, such a line is stored as rank R's, without the
prefix, and the launcher's own lines as `rank`'s. Sequence numbers are per rank, gap-free: lines the spool had to
drop (`spool.py`) become one gap record, with a number of its own, saying how many.
`Cutter` is fed the bytes in pieces (from a spool, or `read_records` from a stream) and keeps only the unfinished
end of a line, at most `record_bytes`. A run of short lines takes a fast path: one split, one record each.
Must not: buffer a whole line in memory, decode anything, or read a pipe for a run (the spool does).
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections.abc import Callable, Collection

from protos import runyard_pb2 as pb

READ_BYTES = 64 * 1024
RANK_PREFIX_TEMPLATE = "[rank${rank}]:"        # torchrun's TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE syntax
_RANK_PREFIX = re.compile(rb"\[rank(\d{1,7})\]:")


class Cutter:
    """Turns one stream's bytes, fed in order, into records; `rank`: the global rank of the process that writes it
    (a distributed run's); `tagged`: the ranks whose prefixed lines it passes on (a launcher's workers)."""

    def __init__(self, kind: pb.Stream, *, record_bytes: int, rank: int = 0, tagged: Collection[int] = ()) -> None:
        self.kind = kind
        self.rank = rank
        self._record_bytes = record_bytes
        self._tagged = frozenset(tagged)
        self._seqs: dict[int, int] = {}
        self._pending = b""
        self._line_rank: int | None = None     # the rank of a line whose first record has been emitted

    @property
    def count(self) -> int:
        """Records cut so far."""
        return sum(self._seqs.values())

    def feed(self, data: bytes, ts: float, out: list[pb.LogRecord]) -> None:
        """Append to `out` the records that `data` (read at `ts`) completes."""
        buf = self._pending + data if self._pending else data
        if not self._tagged and self._line_rank is None:
            lines = buf.split(b"\n")
            tail = lines.pop()
            limit = self._record_bytes
            if len(tail) <= limit and (not lines or max(map(len, lines)) <= limit):
                rank, kind = self.rank, self.kind
                seq = self._seqs.get(rank, 0)
                self._seqs[rank] = seq + len(lines)
                out.extend(pb.LogRecord(stream=kind, seq=s, ts=ts, data=line, rank=rank)
                           for s, line in zip(itertools.count(seq), lines))
                self._pending = tail
                return
        self._cut(buf, ts, out)

    def _cut(self, pending: bytes, ts: float, out: list[pb.LogRecord]) -> None:
        limit = self._record_bytes
        while True:
            newline = pending.find(b"\n", 0, limit + 1)
            if newline >= 0:
                self._flush(pending[:newline], False, ts, out)
                pending = pending[newline + 1 :]
            elif len(pending) > limit:
                self._flush(pending[:limit], True, ts, out)
                pending = pending[limit:]
            else:
                break
        self._pending = pending

    def _flush(self, data: bytes, continued: bool, ts: float, out: list[pb.LogRecord]) -> None:
        own = self._line_rank
        if own is None:
            own = self.rank
            found = _RANK_PREFIX.match(data) if self._tagged else None
            if found and int(found[1]) in self._tagged:
                own, data = int(found[1]), data[found.end():]
        self._line_rank = own if continued else None
        seq = self._seqs.get(own, 0)
        self._seqs[own] = seq + 1
        out.append(pb.LogRecord(stream=self.kind, seq=seq, ts=ts, data=data, continued=continued, rank=own))

    def gap(self, count: int, ts: float, out: list[pb.LogRecord]) -> None:
        """`count` lines were dropped here: the unfinished line they cut ends (its records so far stand; a line
        not begun yet is one of those dropped), and one gap record of `rank` says how many."""
        if self._line_rank is not None:
            self._flush(self._pending, False, ts, out)
        self._pending = b""
        seq = self._seqs.get(self.rank, 0)
        self._seqs[self.rank] = seq + 1
        out.append(pb.LogRecord(stream=self.kind, seq=seq, ts=ts, gap=True, rank=self.rank,
                                data=f"{count} lines dropped: the agent's log spool was full".encode()))

    def finish(self, ts: float, out: list[pb.LogRecord]) -> None:
        """The stream ended: a last line without a newline is a record too."""
        if self._pending or self._line_rank is not None:
            self._flush(self._pending, False, ts, out)
        self._pending = b""


async def read_records(
    stream: asyncio.StreamReader, kind: pb.Stream, emit: Callable[[pb.LogRecord], None], *, record_bytes: int,
    rank: int = 0, tagged: Collection[int] = (),
) -> int:
    """Read `stream` to EOF, calling `emit` for each record in order; returns how many were emitted (for output
    small enough to cut as it comes: an environment's build)."""
    cutter = Cutter(kind, record_bytes=record_bytes, rank=rank, tagged=tagged)
    out: list[pb.LogRecord] = []
    while chunk := await stream.read(READ_BYTES):
        cutter.feed(chunk, time.time(), out)
        for record in out:
            emit(record)
        out.clear()
    cutter.finish(time.time(), out)
    for record in out:
        emit(record)
    return cutter.count
