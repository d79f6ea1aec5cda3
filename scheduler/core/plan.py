"""What a reaction decides: a `Plan` of guarded changes and messages, as plain values. No I/O.

The applier (`store.apply_plan()`, called by the reactor) commits the changes of one Plan in one transaction,
every change guarded by the state it was decided in (a run still in `state` at `attempt`, a node still in
`state`), and only then sends its messages. If any guard no longer holds, nothing of the Plan is written: the
caller reads again and reacts again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from scheduler.core.lifecycle import Reason, RunState, Trigger
from scheduler.core.nodes import NodeState, NodeTrigger, ScheduleTrigger


@dataclass(frozen=True, slots=True)
class Move:
    """A run transition, guarded: applies only while the run is in `state` at `attempt`."""

    run_id: str
    trigger: Trigger
    state: RunState
    attempt: int
    detail: str = ""
    reason: Reason | None = None
    exit_code: int | None = None
    at: float | None = None                 # started_at for start, ended_at for an end
    outputs_sha256: str = ""
    pending_reason: str = ""                # for requeue
    agent_error_node: str = ""              # the attempt failed on this node's side: kept to spot it twice


@dataclass(frozen=True, slots=True)
class StopRun:
    """Ask a live attempt to stop: the run's desired state becomes stop (with an event), and its node is told."""

    run_id: str
    attempt: int
    node_id: str                            # '' for a gang parent, which has no process of its own
    reason: Reason
    detail: str


@dataclass(frozen=True, slots=True)
class Fence:
    """Tell a node to stop an attempt that is not (or no longer) the run's live one. A message only."""

    node_id: str
    run_id: str
    attempt: int
    reason: Reason = Reason.STALE


@dataclass(frozen=True, slots=True)
class NodeMove:
    """A node transition, guarded by the state it was decided in."""

    node_id: str
    trigger: NodeTrigger
    state: NodeState
    detail: str = ""


@dataclass(frozen=True, slots=True)
class NodeCount:
    """A run ended on the node: a node-side failure adds one to its failures in a row, anything else resets them.
    `quarantine` when this one reaches the limit."""

    node_id: str
    node_side: bool
    quarantine: bool = False
    detail: str = ""


@dataclass(frozen=True, slots=True)
class ScheduleMove:
    node_id: str
    trigger: ScheduleTrigger
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Expect:
    """A run the decision read but does not change (a sibling in a gang): it must still be in `state` once the
    Plan's own moves are applied, or the decision was taken on a stale view."""

    run_id: str
    state: RunState


@dataclass(frozen=True, slots=True)
class Plan:
    moves: tuple[Move, ...] = ()
    stops: tuple[StopRun, ...] = ()
    fences: tuple[Fence, ...] = ()
    node_moves: tuple[NodeMove, ...] = ()
    counts: tuple[NodeCount, ...] = ()
    schedules: tuple[ScheduleMove, ...] = ()
    expects: tuple[Expect, ...] = field(default=(), compare=False)

    def __add__(self, other: Plan) -> Plan:
        return Plan(self.moves + other.moves, self.stops + other.stops, self.fences + other.fences,
                    self.node_moves + other.node_moves, self.counts + other.counts, self.schedules + other.schedules,
                    self.expects + other.expects)

    def __bool__(self) -> bool:
        return bool(self.moves or self.stops or self.fences or self.node_moves or self.counts or self.schedules)

    @property
    def touched(self) -> frozenset[str]:
        """Every run this Plan changes or stops."""
        return frozenset([m.run_id for m in self.moves] + [s.run_id for s in self.stops])


def combine(plans: Iterable[Plan]) -> Plan:
    total = Plan()
    for plan in plans:
        total = total + plan
    return total
