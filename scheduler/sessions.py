"""The agents connected right now: one session per node, each with an outbox drained by its Connect stream.

A node that reconnects replaces its old session; the old stream's writer sees the close marker and ends.
Must not: touch the store. Sessions are memory only; the nodes table is the durable record.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from protos import runyard_pb2 as pb
from scheduler.model import Capacity

CLOSE = None  # put in an outbox to end that session's writer


@dataclass(slots=True, eq=False)
class Session:
    node_id: str
    name: str
    cluster: str
    capacity: Capacity
    connected_at: float
    last_heartbeat: float
    outbox: asyncio.Queue[pb.HeadMessage | None] = field(default_factory=asyncio.Queue)


class Sessions:
    def __init__(self) -> None:
        self._by_node: dict[str, Session] = {}

    def attach(self, session: Session) -> None:
        old = self._by_node.get(session.node_id)
        if old is not None:
            old.outbox.put_nowait(CLOSE)
        self._by_node[session.node_id] = session

    def detach(self, session: Session) -> bool:
        """Forget `session` if it is still the node's current one; True if it was."""
        if self._by_node.get(session.node_id) is session:
            del self._by_node[session.node_id]
            return True
        return False

    def get(self, node_id: str) -> Session | None:
        return self._by_node.get(node_id)

    def all(self) -> list[Session]:
        return list(self._by_node.values())

    def send(self, node_id: str, message: pb.HeadMessage) -> bool:
        """Queue `message` for the node; False when it is not connected (it reconciles on reconnect)."""
        session = self._by_node.get(node_id)
        if session is None:
            return False
        session.outbox.put_nowait(message)
        return True
