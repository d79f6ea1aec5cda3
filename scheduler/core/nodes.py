"""The node state table, beside the run state table: two typed dimensions, no I/O.

A node's *state* says what the head knows of its agent; its *schedule* says what admins (or quarantine) allow
on it. Only a node that is Ready, heard from within its heartbeat window and `active` takes new runs.

    state trigger   from                                    to
    join            Joining, Disconnected, Down, Left       Joining        (enrolled or re-enrolled by name)
    hello           any                                     Ready          (a Connect stream said Hello)
    heard           Disconnected                            Ready          (silent for a while, then heard again)
    silent          Ready                                   Disconnected   (nothing heard for `disconnected_after_s`)
    closed          Joining, Ready                          Disconnected   (its stream ended)
    down            Disconnected                            Down           (silent for `down_after_s`: runs lost)
    leave           Joining, Ready, Disconnected, Down      Left           (the autoscaler stopped it)

A Join for the name of a node that is Ready is refused (one name, one live agent); Down is left only by a Hello,
never by a heartbeat on a stream the head had already given up: that stream is closed and the agent reconnects.

    schedule trigger  from                                  to
    cordon            active, draining, quarantined         cordoned      (admin: no new runs)
    drain             active, cordoned, quarantined         draining      (admin: no new runs, `drained` once empty)
    uncordon          cordoned, draining, quarantined       active        (admin; also forgives failures in a row)
    quarantine        active, cordoned, draining            quarantined   (node-side failures in a row)
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class NodeState(StrEnum):
    JOINING = "Joining"
    READY = "Ready"
    DISCONNECTED = "Disconnected"
    DOWN = "Down"
    LEFT = "Left"


class NodeTrigger(StrEnum):
    JOIN = "join"
    HELLO = "hello"
    HEARD = "heard"
    SILENT = "silent"
    CLOSED = "closed"
    DOWN = "down"
    LEAVE = "leave"


class Schedule(StrEnum):
    ACTIVE = "active"
    CORDONED = "cordoned"
    DRAINING = "draining"
    QUARANTINED = "quarantined"


class ScheduleTrigger(StrEnum):
    CORDON = "cordon"
    DRAIN = "drain"
    UNCORDON = "uncordon"
    QUARANTINE = "quarantine"


_ALL_BUT_LEFT = frozenset(NodeState) - {NodeState.LEFT}

STATE_TABLE: dict[NodeTrigger, tuple[frozenset[NodeState], NodeState]] = {
    NodeTrigger.JOIN: (frozenset({NodeState.JOINING, NodeState.DISCONNECTED, NodeState.DOWN, NodeState.LEFT}),
                       NodeState.JOINING),
    NodeTrigger.HELLO: (frozenset(NodeState), NodeState.READY),
    NodeTrigger.HEARD: (frozenset({NodeState.DISCONNECTED}), NodeState.READY),
    NodeTrigger.SILENT: (frozenset({NodeState.READY}), NodeState.DISCONNECTED),
    NodeTrigger.CLOSED: (frozenset({NodeState.JOINING, NodeState.READY}), NodeState.DISCONNECTED),
    NodeTrigger.DOWN: (frozenset({NodeState.DISCONNECTED}), NodeState.DOWN),
    NodeTrigger.LEAVE: (_ALL_BUT_LEFT, NodeState.LEFT),
}

SCHEDULE_TABLE: dict[ScheduleTrigger, tuple[frozenset[Schedule], Schedule]] = {
    ScheduleTrigger.CORDON: (frozenset(Schedule) - {Schedule.CORDONED}, Schedule.CORDONED),
    ScheduleTrigger.DRAIN: (frozenset(Schedule) - {Schedule.DRAINING}, Schedule.DRAINING),
    ScheduleTrigger.UNCORDON: (frozenset(Schedule) - {Schedule.ACTIVE}, Schedule.ACTIVE),
    ScheduleTrigger.QUARANTINE: (frozenset(Schedule) - {Schedule.QUARANTINED}, Schedule.QUARANTINED),
}


class InvalidNodeTransition(Exception):
    """The node state table forbids this trigger in the node's current state or schedule."""

    def __init__(self, node: str, current: str, trigger: str) -> None:
        self.node = node
        self.current = current
        self.trigger = trigger
        super().__init__(f"node {node}: {trigger} is not allowed when it is {current}")


def next_node_state(node: str, state: NodeState, trigger: NodeTrigger) -> NodeState:
    sources, target = STATE_TABLE[trigger]
    if state not in sources:
        raise InvalidNodeTransition(node, state, trigger)
    return target


def next_schedule(node: str, schedule: Schedule, trigger: ScheduleTrigger) -> Schedule:
    sources, target = SCHEDULE_TABLE[trigger]
    if schedule not in sources:
        raise InvalidNodeTransition(node, schedule, trigger)
    return target


def takes_new_runs(state: NodeState, schedule: Schedule, silent_s: float, window_s: float) -> bool:
    """Whether placement may use the node: Ready, heard from within its heartbeat window, and active."""
    return state is NodeState.READY and schedule is Schedule.ACTIVE and silent_s < window_s


@dataclass(frozen=True, slots=True)
class NodeFacts:
    """What a reaction needs to know of one node."""

    id: str
    name: str
    state: NodeState
    schedule: Schedule
    failures_in_row: int = 0
