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
    schedule: str = "active"                    # active, cordoned, draining, quarantined: only active takes new runs
    labels: dict[str, str] = field(default_factory=dict)
    failures_in_row: int = 0                    # runs that failed on the node's side, in a row
    outbox: asyncio.Queue[pb.HeadMessage | None] = field(default_factory=asyncio.Queue)


class Sessions:
    def __init__(self) -> None:
        self._by_node: dict[str, Session] = {}
        self._heard: dict[str, float] = {}      # node id -> when the head last heard from it, connected or not
        self._names: dict[str, str] = {}

    def heard(self, node_id: str, at: float, name: str = "") -> None:
        self._heard[node_id] = at
        if name:
            self._names[node_id] = name

    def last_heard(self) -> dict[str, float]:
        return dict(self._heard)

    def name(self, node_id: str) -> str:
        return self._names.get(node_id, node_id)

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
