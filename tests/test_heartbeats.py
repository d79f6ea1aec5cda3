"""Node health from heartbeats: which nodes one judgement declares Disconnected or Down, and when the head suspects
itself instead. Each row is a cluster (node -> its state and when it was last heard) judged at NOW."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from scheduler.core.heartbeats import Timers, Verdict, health, judge
from scheduler.core.nodes import NodeState

J, R, DC, DN, L = NodeState.JOINING, NodeState.READY, NodeState.DISCONNECTED, NodeState.DOWN, NodeState.LEFT

NOW = 10_000.0
TIMERS = Timers(disconnected_after_s=20.0, down_after_s=300.0, suspect_self_fraction=0.5, suspect_self_min_nodes=3)

FRESH = NOW - 1.0                 # heard a second ago
QUIET = NOW - 60.0                # past the Disconnected timer, not the Down one
GONE = NOW - 400.0                # past the Down timer


def verdict(silent: str = "", down: str = "", suspect: bool = False) -> Verdict:
    return Verdict(frozenset(silent.split()), frozenset(down.split()), suspect)


HEALTH = [
    pytest.param(NOW, R, id="heard-now-ready"),
    pytest.param(NOW - 19.9, R, id="just-under-disconnected-ready"),
    pytest.param(NOW - 20.0, DC, id="exactly-disconnected-after"),
    pytest.param(NOW - 299.9, DC, id="just-under-down-disconnected"),
    pytest.param(NOW - 300.0, DN, id="exactly-down-after"),
    pytest.param(NOW - 5000.0, DN, id="long-gone-down"),
]


@pytest.mark.parametrize(("heard", "expected"), HEALTH)
def test_health_from_silence_alone(heard: float, expected: NodeState) -> None:
    assert health(NOW, heard, TIMERS) is expected


JUDGE = [
    pytest.param({}, TIMERS, verdict(), id="no-nodes-nothing"),
    pytest.param({"a": (R, FRESH)}, TIMERS, verdict(), id="ready-heard-recently-nothing"),
    pytest.param({"a": (R, NOW - 19.9)}, TIMERS, verdict(), id="ready-just-under-the-timer-nothing"),
    pytest.param({"a": (R, NOW - 20.0)}, TIMERS, verdict(silent="a"), id="ready-silent-exactly-the-timer-silent"),
    pytest.param({"a": (R, QUIET)}, TIMERS, verdict(silent="a"), id="ready-silent-past-disconnected-silent"),
    pytest.param({"a": (DC, QUIET)}, TIMERS, verdict(), id="disconnected-still-quiet-declared-once"),
    pytest.param({"a": (DC, FRESH)}, TIMERS, verdict(), id="disconnected-heard-again-nothing-heard-comes-from-stream"),
    pytest.param({"a": (DC, GONE)}, TIMERS, verdict(down="a"), id="disconnected-past-down-down"),
    pytest.param({"a": (DC, NOW - 300.0)}, TIMERS, verdict(down="a"), id="disconnected-exactly-down-after-down"),
    pytest.param({"a": (DN, GONE)}, TIMERS, verdict(), id="already-down-nothing-declared-once"),
    pytest.param({"a": (DN, NOW - 1e6)}, TIMERS, verdict(), id="down-for-ages-nothing"),
    pytest.param({"a": (R, GONE)}, TIMERS, verdict(silent="a", down="a"),
                 id="ready-past-down-in-one-tick-silent-and-down"),
    pytest.param({"a": (J, GONE)}, TIMERS, verdict(), id="joining-never-judged"),
    pytest.param({"a": (L, GONE)}, TIMERS, verdict(), id="left-ignored"),
    pytest.param({"a": (R, QUIET), "b": (DC, GONE), "c": (DN, GONE), "d": (R, FRESH), "e": (L, GONE)}, TIMERS,
                 verdict(silent="a", down="b"), id="each-node-judged-from-its-own-state"),
    # The head suspects itself: more than half of the nodes that were up go Down in one judgement.
    pytest.param({"a": (DC, GONE), "b": (DC, GONE), "c": (DC, GONE)}, TIMERS, verdict(suspect=True),
                 id="all-3-up-nodes-down-at-once-suspect-none-down"),
    pytest.param({"a": (DC, GONE), "b": (DC, GONE), "c": (R, FRESH)}, TIMERS, verdict(suspect=True),
                 id="2-of-3-down-suspect"),
    pytest.param({"a": (R, GONE), "b": (R, GONE), "c": (R, GONE)}, TIMERS, verdict(silent="a b c", suspect=True),
                 id="3-ready-past-down-suspect-still-silent-none-down"),
    pytest.param({"a": (DC, GONE), "b": (R, FRESH), "c": (R, FRESH)}, TIMERS, verdict(down="a"),
                 id="1-of-3-down-not-suspect"),
    pytest.param({"a": (DC, GONE), "b": (DC, GONE), "c": (R, FRESH), "d": (R, FRESH)}, TIMERS,
                 verdict(down="a b"), id="2-of-4-down-exactly-half-not-suspect"),
    pytest.param({"a": (DC, GONE), "b": (DC, GONE), "c": (DC, GONE), "d": (R, FRESH)}, TIMERS,
                 verdict(suspect=True), id="3-of-4-down-suspect"),
    pytest.param({"a": (DC, GONE), "b": (DC, GONE)}, TIMERS, verdict(down="a b"),
                 id="2-of-2-down-fewer-than-min-nodes-declared-down"),
    pytest.param({"a": (DC, GONE), "b": (DC, GONE)},
                 Timers(disconnected_after_s=20.0, down_after_s=300.0, suspect_self_min_nodes=2),
                 verdict(suspect=True), id="2-of-2-down-with-min-nodes-2-suspect"),
    pytest.param({"a": (DC, GONE), "b": (DC, GONE), "c": (R, FRESH), "d": (DN, GONE), "e": (L, GONE), "f": (L, GONE)},
                 TIMERS, verdict(suspect=True), id="down-and-left-nodes-not-counted-as-up"),
    pytest.param({"a": (DC, GONE), "b": (DC, GONE), "c": (DN, GONE), "d": (L, GONE)}, TIMERS, verdict(down="a b"),
                 id="only-2-up-with-down-and-left-besides-fewer-than-min-nodes"),
    pytest.param({"a": (DC, GONE), "b": (DC, GONE), "c": (R, FRESH), "d": (J, FRESH)}, TIMERS, verdict(down="a b"),
                 id="joining-counts-as-up-2-of-4-not-suspect"),
    pytest.param({"a": (DC, GONE), "b": (R, QUIET), "c": (R, QUIET), "d": (R, FRESH)}, TIMERS,
                 verdict(silent="b c", down="a"), id="many-silent-few-down-not-suspect"),
]


@pytest.mark.parametrize(("nodes", "timers", "expected"), JUDGE)
def test_judge(nodes: Mapping[str, tuple[NodeState, float]], timers: Timers, expected: Verdict) -> None:
    assert judge(NOW, nodes, timers) == expected


def test_a_node_is_declared_down_once_as_time_passes() -> None:
    # The reaper's ticks over one node's silence, each judged from the state the last verdict left it in.
    state, heard, declared = R, NOW, []
    for tick_s in range(0, 601, 10):
        found = judge(NOW + tick_s, {"a": (state, heard)}, TIMERS)
        if "a" in found.silent:
            state = DC
            declared.append((tick_s, "silent"))
        if "a" in found.down:
            state = DN
            declared.append((tick_s, "down"))
    assert declared == [(20, "silent"), (300, "down")]
