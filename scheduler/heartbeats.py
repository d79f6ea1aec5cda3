"""Node health from heartbeats, as a pure function of time. No I/O.

    Ready         heard from within `disconnected_after_s`
    Disconnected  silent longer: nothing new is placed there, its runs are left alone
    Down          silent longer than `down_after_s`: its runs are requeued (attempt N+1) or failed (node_lost)

After a head restart every node counts as heard at the restart, so agents get the full timers to reconnect.
If most nodes go Down at once the head suspects itself (its network, not theirs) and requeues nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum


class NodeHealth(StrEnum):
    READY = "Ready"
    DISCONNECTED = "Disconnected"
    DOWN = "Down"


@dataclass(frozen=True, slots=True)
class Timers:
    disconnected_after_s: float = 20.0
    down_after_s: float = 300.0
    suspect_self_fraction: float = 0.5     # more than this share of nodes Down at once: suspect the head
    suspect_self_min_nodes: int = 3        # ... but only with at least this many nodes


def health(now: float, last_heard: float, timers: Timers) -> NodeHealth:
    silent_s = now - last_heard
    if silent_s >= timers.down_after_s:
        return NodeHealth.DOWN
    if silent_s >= timers.disconnected_after_s:
        return NodeHealth.DISCONNECTED
    return NodeHealth.READY


@dataclass(frozen=True, slots=True)
class Verdict:
    down: frozenset[str]                   # nodes whose runs must be requeued now
    suspect_self: bool                     # True: too many at once; requeue nothing and raise an alert


def judge(now: float, last_heard: Mapping[str, float], already_down: frozenset[str], timers: Timers) -> Verdict:
    """Which nodes newly went Down, and whether that many at once means the head itself is cut off."""
    down = {node for node, heard in last_heard.items() if health(now, heard, timers) is NodeHealth.DOWN}
    newly = frozenset(down - already_down)
    total = len(last_heard)
    suspect = total >= timers.suspect_self_min_nodes and len(down) > timers.suspect_self_fraction * total
    return Verdict(frozenset() if suspect else newly, suspect and bool(newly))
