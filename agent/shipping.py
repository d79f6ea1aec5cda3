"""Shipping one attempt's output to the outbox: log records in batches, SDK records as metric batches.

A run's stdout and stderr wait in their spools (`spool.py`); the `LogShipper` cuts them into records
(`output.Cutter`) and puts them into the outbox in batches as long as it has room, yielding to the event loop
between batches so that the pipe readers are never held up. When the outbox is full the backlog stays on disk;
only a full spool drops lines, and a gap record says how many. Records added one by one (`add`, an
environment's build output) go in the next batch; a full outbox turns those into a gap record.
Must not: block, read a pipe, or talk to the head (the outbox is drained by `link.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

from agent.outbox import Outbox
from agent.output import Cutter
from agent.records import RecordTail
from agent.spool import Spool
from protos import runyard_pb2 as pb

BATCH_BYTES = 64 * 1024        # log bytes in one outbox message (the link's messages are capped at 16 MiB)
BATCH_RECORDS = 4096
_READ_BYTES = 128 * 1024        # read from one spool at a time


@dataclass(slots=True, eq=False)
class _Stream:
    spool: Spool
    cutter: Cutter
    ended: bool = False


class LogShipper:
    """Ships the log records of one attempt: its spooled streams, and records added one by one."""

    def __init__(self, assignment: pb.Assignment, outbox: Outbox, *, flush_s: float) -> None:
        self._asg = assignment
        self._outbox = outbox
        self._flush_s = flush_s
        self._batch: list[pb.LogRecord] = []
        self._batch_bytes = 0
        self._streams: list[_Stream] = []
        self._dropped: dict[tuple[int, int], int] = {}     # (rank, stream) -> records dropped by `add`
        self._closed = asyncio.Event()
        self.paused = False         # (tests) cut nothing, as if the outbox were full

    def follow(self, spool: Spool, cutter: Cutter) -> None:
        """Ship what `spool` holds, cut by `cutter`, until its writer has closed it and it is read to the end."""
        self._streams.append(_Stream(spool, cutter))

    def add(self, record: pb.LogRecord) -> None:
        key = (record.rank, record.stream)
        if self._outbox.full():
            self._dropped[key] = self._dropped.get(key, 0) + 1
            return
        if self._dropped.get(key):
            count = self._dropped.pop(key)
            self._batch.append(pb.LogRecord(stream=record.stream, seq=record.seq - 1, ts=record.ts, gap=True,
                                            rank=record.rank,
                                            data=f"{count} records dropped: the agent's buffer was full".encode()))
        self._batch.append(record)

    def flush(self) -> None:
        if self._batch:
            self._outbox.put(pb.AgentMessage(logs=pb.LogBatch(run_id=self._asg.run_id, attempt=self._asg.attempt,
                                                              records=self._batch)))
            self._batch = []
            self._batch_bytes = 0

    def close(self) -> None:
        """Nothing more will be added, and the spools' writers have closed them: ship what is left, then end."""
        self._closed.set()

    def _held(self) -> bool:
        return self.paused or self._outbox.full()

    def _cut(self, stream: _Stream) -> bool:
        """Cut one piece of `stream`'s spool into the batch; False when there was nothing to cut."""
        piece = stream.spool.read(_READ_BYTES)
        if piece is None:
            if stream.spool.closed and not stream.ended:
                stream.ended = True
                stream.spool.discard()          # read to its end: its files and descriptors go
                before = len(self._batch)
                stream.cutter.finish(self._last_ts(), self._batch)
                return len(self._batch) > before
            return False
        if piece.gap:
            stream.cutter.gap(piece.gap, self._last_ts(), self._batch)
        else:
            before = len(self._batch)
            stream.cutter.feed(piece.data, piece.ts, self._batch)
            self._batch_bytes += len(piece.data) + 16 * (len(self._batch) - before)
        return True

    def _last_ts(self) -> float:
        return self._batch[-1].ts if self._batch else time.time()

    async def _ship(self) -> None:
        """Cut and put batches while the outbox has room, a yield to the loop after each."""
        while not self._held():
            progress = False
            for stream in self._streams:
                while (len(self._batch) < BATCH_RECORDS and self._batch_bytes < BATCH_BYTES
                       and self._cut(stream)):
                    progress = True
                if len(self._batch) >= BATCH_RECORDS or self._batch_bytes >= BATCH_BYTES:
                    self.flush()
                    await asyncio.sleep(0)
                    if self._held():
                        return
            if not progress:
                break
        if not self._held():
            self.flush()

    def _done(self) -> bool:
        return all(s.ended for s in self._streams) and not self._batch

    async def run(self) -> None:
        """Ship periodically until closed, then ship everything left (waiting for room in the outbox). The spools
        are removed when it ends, however it ends."""
        try:
            while True:
                closed = self._closed.is_set()
                await self._ship()
                if closed and self._done():
                    return
                if closed:
                    await asyncio.sleep(self._flush_s)      # the outbox is full: wait for the head's acks
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closed.wait(), self._flush_s)
        finally:
            for stream in self._streams:
                stream.spool.discard()


# Record lines per metric batch: several batches fit in the outbox's bytes, so that reading the next overlaps the
# head's storing of the last.
METRIC_BATCH_LINES = 2_000


class MetricShipper:
    """Tails the SDK's record file of one process of an attempt (its global `rank`) into metric batches in the
    outbox: the run's own records and those of the tracked child runs its script started (the head checks that
    they are its own)."""

    def __init__(self, assignment: pb.Assignment, outbox: Outbox, tail: RecordTail, *, rank: int = 0,
                 poll_s: float = 0.2) -> None:
        self._asg = assignment
        self._outbox = outbox
        self._tail = tail
        self.rank = rank
        self._poll_s = poll_s
        self._closed = asyncio.Event()

    def close(self) -> None:
        self._closed.set()

    def ship(self) -> int:
        records = self._tail.read_new()
        batch = pb.MetricBatch(run_id=self._asg.run_id, attempt=self._asg.attempt)
        for r in records:
            batch.records.add(
                seq=r.seq, params=r.params, tags=r.tags, rank=self.rank, run_id=r.run, end=r.end, ts=r.ts,
                child=pb.TrackedChild(id=r.child[0], name=r.child[1]) if r.child else None,
                keys=r.keys, values=r.values, steps=r.steps,
            )
        if records:
            self._outbox.put(pb.AgentMessage(metrics=batch))
        return len(records)

    async def run(self) -> None:
        """Ship while the outbox has room, until closed; then ship what is left, waiting for room. The records file
        is the spool: what the outbox cannot hold yet waits in it, so the agent's memory does not grow with the
        rate a script logs at."""
        while True:
            closed = self._closed.is_set()
            drained = False
            while not self._outbox.full():
                if not self.ship():
                    drained = True
                    break
                await asyncio.sleep(0)    # let the link send this batch while the next one is read
            if closed and drained:
                return
            if self._outbox.full():
                await self._outbox.wait_for_room(self._poll_s)
            elif not closed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closed.wait(), self._poll_s)
