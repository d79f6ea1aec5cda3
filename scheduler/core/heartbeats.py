"""Node health from heartbeats, as a pure function of time and the node state table. No I/O.

    Ready -> Disconnected   silent for `disconnected_after_s`: nothing new is placed there, its runs are left alone
    Disconnected -> Down    silent for `down_after_s`: its runs are requeued (attempt N+1) or failed (node_lost)

Each node is judged from the state it is in, so a node is declared Disconnected once and Down once; it stays Down
until it reconnects and says Hello. After a head restart every node counts as heard at the restart, so agents get
the full timers to reconnect. If most nodes go Down at once the head suspects itself (its network, not theirs)
and declares none of them Down.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from scheduler.core.nodes import NodeState


@dataclass(frozen=True, slots=True)
class Timers:
    disconnected_after_s: float = 20.0
    down_after_s: float = 300.0
    suspect_self_fraction: float = 0.5     # more than this share of nodes Down at once: suspect the head
    suspect_self_min_nodes: int = 3        # ... but only with at least this many nodes


def health(now: float, last_heard: float, timers: Timers) -> NodeState:
    """The state silence alone would give a node."""
    silent_s = now - last_heard
    if silent_s >= timers.down_after_s:
        return NodeState.DOWN
    if silent_s >= timers.disconnected_after_s:
        return NodeState.DISCONNECTED
    return NodeState.READY


UP = frozenset({NodeState.JOINING, NodeState.READY, NodeState.DISCONNECTED})


@dataclass(frozen=True, slots=True)
class Verdict:
    silent: frozenset[str]                 # Ready nodes to mark Disconnected
    down: frozenset[str]                   # Disconnected (or newly silent) nodes to mark Down: their runs are lost
    suspect_self: bool                     # True: too many at once; nobody is declared Down


def judge(now: float, nodes: Mapping[str, tuple[NodeState, float]], timers: Timers, *,
          up_total: int | None = None) -> Verdict:
    """Which nodes newly went Disconnected or Down, given each node's (state, last heard).

    `nodes` may hold only the nodes not heard from within the Disconnected timer (the others cannot move); then
    `up_total` says how many nodes are up (Joining, Ready or Disconnected) in all, for suspecting the head."""
    # Thresholds once, and the common case (heard within the window) first: the reaper judges every node each tick.
    quiet_since, down_since = now - timers.disconnected_after_s, now - timers.down_after_s
    silent, down = set(), set()
    for node, (state, heard) in nodes.items():
        if heard > quiet_since:
            continue
        if state is NodeState.READY:
            silent.add(node)
        if heard <= down_since and (state is NodeState.READY or state is NodeState.DISCONNECTED):
            down.add(node)
    if not down:
        return Verdict(frozenset(silent), frozenset(), False)
    # Most of the nodes that were up going Down in one judgement: the head is the one cut off.
    total = up_total if up_total is not None else sum(1 for state, _ in nodes.values() if state in UP)
    suspect = total >= timers.suspect_self_min_nodes and len(down) > timers.suspect_self_fraction * total
    return Verdict(frozenset(silent), frozenset() if suspect else frozenset(down), suspect)
