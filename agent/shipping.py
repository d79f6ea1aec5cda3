"""Shipping one attempt's output to the outbox: log records in timed batches, SDK records as metric batches.

A full outbox turns log records into a gap record that says how many were dropped, so nothing is lost
silently. Must not: block, or talk to the head (the outbox is drained by `link.py`).
"""

from __future__ import annotations

import asyncio
import contextlib

from agent.outbox import Outbox
from agent.records import RecordTail
from protos import runyard_pb2 as pb


class LogShipper:
    """Batches log records of one attempt into the outbox every `flush_s`; a full outbox turns into a gap record."""

    def __init__(self, assignment: pb.Assignment, outbox: Outbox, *, flush_s: float) -> None:
        self._asg = assignment
        self._outbox = outbox
        self._flush_s = flush_s
        self._batch: list[pb.LogRecord] = []
        self._dropped: dict[tuple[int, int], int] = {}     # (rank, stream) -> records dropped
        self._closed = asyncio.Event()

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
            self._outbox.put(pb.AgentMessage(logs=pb.LogBatch(run_id=self._asg.run_id, attempt=self._asg.attempt, records=self._batch)))
            self._batch = []

    def close(self) -> None:
        self._closed.set()

    async def run(self) -> None:
        """Flush periodically until closed, then flush what is left."""
        while not self._closed.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), self._flush_s)
            self.flush()


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
            shipped = batch.records.add(
                seq=r.seq, params=r.params, tags=r.tags, rank=self.rank, run_id=r.run, end=r.end, ts=r.ts,
                child=pb.TrackedChild(id=r.child[0], name=r.child[1]) if r.child else None,
            )
            add = shipped.points.add
            for k, v, s in r.metrics:
                add(key=k, value=v, step=s, ts=r.ts)
        if records:
            self._outbox.put(pb.AgentMessage(metrics=batch))
        return len(records)

    async def run(self) -> None:
        while not self._closed.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), self._poll_s)
            while self.ship():
                await asyncio.sleep(0)    # let the link send this batch while the next one is read
