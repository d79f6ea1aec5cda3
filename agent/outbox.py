"""Everything the agent must tell the head, kept until the head has committed it.

Each message gets a sequence number; the head acknowledges the highest one it committed, cumulatively, and the
agent drops everything up to it. After a reconnect every unacknowledged message is sent again with its original
number, in order; the head stores logs and metrics idempotently, so nothing is lost and nothing doubled.
Heartbeats are not kept. It is bounded in messages and in bytes: `full()` tells the shippers to hold back
(log output waits in its spool, `spool.py`), so the agent's memory does not grow with the log rate. Hello carries the highest number already acknowledged, never a new one: the head acks
it before it has read the messages resent after it, and a higher number would acknowledge them unread.
Must not: do I/O; `link.py` drains it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import deque

from protos import runyard_pb2 as pb


class Outbox:
    def __init__(self, max_messages: int, max_bytes: int = 1 << 62) -> None:
        self._max = max_messages
        self._max_bytes = max_bytes
        self._pending: deque[pb.AgentMessage] = deque()
        self._sizes: deque[int] = deque()      # the serialized size of each pending message
        self._bytes = 0
        self._seq = itertools.count(1)
        self._acked = 0
        self.changed = asyncio.Event()
        self._room = asyncio.Event()        # set while not full
        self._room.set()

    def full(self) -> bool:
        return len(self._pending) >= self._max or self._bytes >= self._max_bytes

    async def wait_for_room(self, timeout_s: float) -> None:
        """Return once the outbox is not full (an ack made room), or after `timeout_s`."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._room.wait(), timeout_s)

    @property
    def bytes(self) -> int:
        """The serialized size of the pending messages."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._pending)

    def next_seq(self) -> int:
        return next(self._seq)

    def put(self, message: pb.AgentMessage) -> None:
        message.msg_seq = self.next_seq()
        size = message.ByteSize()
        self._pending.append(message)
        self._sizes.append(size)
        self._bytes += size
        self.changed.set()
        if self.full():
            self._room.clear()

    @property
    def acked(self) -> int:
        """The highest sequence number the head has acknowledged (0 before the first ack)."""
        return self._acked

    def ack(self, msg_seq: int) -> None:
        self._acked = max(self._acked, msg_seq)
        while self._pending and self._pending[0].msg_seq <= msg_seq:
            self._pending.popleft()
            self._bytes -= self._sizes.popleft()
        if not self.full():
            self._room.set()

    def after(self, msg_seq: int) -> list[pb.AgentMessage]:
        """Pending messages numbered above `msg_seq`, in order."""
        return [m for m in self._pending if m.msg_seq > msg_seq]

    def drop_attempt(self, run_id: str, attempt: int) -> None:
        """Forget what is queued about an attempt the head refused."""
        kept = [(m, size) for m, size in zip(self._pending, self._sizes) if _attempt_of(m) != (run_id, attempt)]
        self._pending = deque(m for m, _ in kept)
        self._sizes = deque(size for _, size in kept)
        self._bytes = sum(self._sizes)
        if not self.full():
            self._room.set()

    def attempts(self) -> set[tuple[str, int]]:
        """Attempts with reports still waiting for the head."""
        return {a for m in self._pending if (a := _attempt_of(m)) is not None}


def _attempt_of(message: pb.AgentMessage) -> tuple[str, int] | None:
    kind = message.WhichOneof("body")
    if kind in ("run_update", "logs", "metrics"):
        body = getattr(message, kind)
        return body.run_id, body.attempt
    return None
