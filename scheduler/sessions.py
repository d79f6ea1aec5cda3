"""What the head knows of its nodes in memory: each node's state facts and when it was last heard, and the
agents connected right now (one session per node, each with an outbox drained by its Connect stream).

The node facts mirror the `nodes` table: they change only after the commit that changed the table (the reactor
and the client API update them). A node that reconnects replaces its old session; the old stream's writer sees
the close marker and ends.
Must not: touch the store or speak protobuf. Outbox messages are domain values; `agent_api` converts them.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass, field

from runyard.envspec import EnvSpec
from scheduler.core.lifecycle import Reason
from scheduler.core.nodes import NodeFacts, NodeState, Schedule, takes_new_runs
from scheduler.model import Capacity, NodeRecord, RunRecord
from scheduler.placement import minor_versions


@dataclass(frozen=True, slots=True)
class Ack:
    msg_seq: int


@dataclass(frozen=True, slots=True)
class Assign:
    run: RunRecord


@dataclass(frozen=True, slots=True)
class StopAttempt:
    run_id: str
    attempt: int
    reason: Reason


@dataclass(frozen=True, slots=True)
class BuildEnv:
    """Build this environment now, for no run: it warms the node's cache (`runyard env build`)."""

    env: EnvSpec
    env_hash: str


class Close:
    """Put in an outbox to end that session's writer."""


CLOSE = Close()
Outbound = Ack | Assign | StopAttempt | BuildEnv | Close


@dataclass(slots=True, eq=False)
class Session:
    node_id: str
    name: str
    cluster: str
    capacity: Capacity
    labels: dict[str, str] = field(default_factory=dict)
    since: float = 0.0                          # when this stream said Hello
    peer: str = ""
    env_hashes: frozenset[str] = frozenset()    # the environments it has built, as it last said (Hello, Heartbeat)
    outbox: asyncio.Queue[Outbound] = field(default_factory=asyncio.Queue)
    pythons: frozenset[str] = field(init=False)     # what it can build environments with, from its capacity,
    builders: frozenset[str] = field(init=False)    # as placement reads them (once, not on every pass)

    def __post_init__(self) -> None:
        self.pythons = minor_versions(self.capacity.interpreters)
        self.builders = frozenset(self.capacity.builders)


class Sessions:
    def __init__(self) -> None:
        self._by_node: dict[str, Session] = {}
        self._heard: dict[str, float] = {}      # node id -> when the head last heard from it, connected or not
        self._facts: dict[str, NodeFacts] = {}

    # --- node facts ----------------------------------------------------------------------------------------

    def known(self, facts: NodeFacts, heard_at: float | None = None) -> None:
        """Record a node's facts as committed (and, with `heard_at`, that it was heard then)."""
        self._facts[facts.id] = facts
        if heard_at is not None:
            self._heard[facts.id] = heard_at

    def remember(self, node: NodeRecord, heard_at: float | None = None) -> None:
        """Record a node as the store has it (see `known`)."""
        self.known(NodeFacts(node.id, node.name, node.state, node.schedule, node.failures_in_row), heard_at)

    def facts(self, node_id: str) -> NodeFacts | None:
        return self._facts.get(node_id)

    def all_facts(self) -> dict[str, NodeFacts]:
        return dict(self._facts)

    def set_state(self, node_id: str, state: NodeState) -> None:
        facts = self._facts.get(node_id)
        if facts is not None:
            self._facts[node_id] = dataclasses.replace(facts, state=state)

    def set_schedule(self, node_id: str, schedule: Schedule, failures_in_row: int) -> None:
        facts = self._facts.get(node_id)
        if facts is not None:
            self._facts[node_id] = dataclasses.replace(facts, schedule=schedule, failures_in_row=failures_in_row)

    def heard(self, node_id: str, at: float) -> None:
        self._heard[node_id] = at

    def last_heard(self) -> dict[str, float]:
        return dict(self._heard)

    def name(self, node_id: str) -> str:
        facts = self._facts.get(node_id)
        return facts.name if facts is not None else node_id

    def takes_new_runs(self, node_id: str, now: float, window_s: float) -> bool:
        """Whether the node may take new runs: Ready, active, and heard from within `window_s`."""
        facts = self._facts.get(node_id)
        heard = self._heard.get(node_id)
        return (facts is not None and heard is not None
                and takes_new_runs(facts.state, facts.schedule, now - heard, window_s))

    # --- streams -------------------------------------------------------------------------------------------

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

    def send(self, node_id: str, message: Outbound) -> bool:
        """Queue `message` for the node; False when it is not connected (it reconciles on reconnect)."""
        session = self._by_node.get(node_id)
        if session is None:
            return False
        session.outbox.put_nowait(message)
        return True
