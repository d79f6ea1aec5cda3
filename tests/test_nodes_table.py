"""The node state table and the schedule table: every (state, trigger) pair against the documented tables; which
nodes placement may use."""

from __future__ import annotations

import itertools

import pytest

from scheduler.core.nodes import (
    InvalidNodeTransition,
    NodeState,
    NodeTrigger,
    Schedule,
    ScheduleTrigger,
    next_node_state,
    next_schedule,
    takes_new_runs,
)

J, R, DC, DN, L = NodeState.JOINING, NodeState.READY, NodeState.DISCONNECTED, NodeState.DOWN, NodeState.LEFT
ACTIVE, CORDONED, DRAINING, QUARANTINED = Schedule.ACTIVE, Schedule.CORDONED, Schedule.DRAINING, Schedule.QUARANTINED

# The node state table of scheduler/core/nodes.py's docstring, written out independently of STATE_TABLE:
# (state, trigger) -> target. Every pair not listed here must be refused.
STATE_ALLOWED: dict[tuple[NodeState, NodeTrigger], NodeState] = {
    (J, NodeTrigger.JOIN): J,
    (DC, NodeTrigger.JOIN): J,
    (DN, NodeTrigger.JOIN): J,
    (L, NodeTrigger.JOIN): J,
    (J, NodeTrigger.HELLO): R,
    (R, NodeTrigger.HELLO): R,
    (DC, NodeTrigger.HELLO): R,
    (DN, NodeTrigger.HELLO): R,
    (L, NodeTrigger.HELLO): R,
    (DC, NodeTrigger.HEARD): R,
    (R, NodeTrigger.SILENT): DC,
    (J, NodeTrigger.CLOSED): DC,
    (R, NodeTrigger.CLOSED): DC,
    (DC, NodeTrigger.DOWN): DN,
    (J, NodeTrigger.LEAVE): L,
    (R, NodeTrigger.LEAVE): L,
    (DC, NodeTrigger.LEAVE): L,
    (DN, NodeTrigger.LEAVE): L,
}

SCHEDULE_ALLOWED: dict[tuple[Schedule, ScheduleTrigger], Schedule] = {
    (ACTIVE, ScheduleTrigger.CORDON): CORDONED,
    (DRAINING, ScheduleTrigger.CORDON): CORDONED,
    (QUARANTINED, ScheduleTrigger.CORDON): CORDONED,
    (ACTIVE, ScheduleTrigger.DRAIN): DRAINING,
    (CORDONED, ScheduleTrigger.DRAIN): DRAINING,
    (QUARANTINED, ScheduleTrigger.DRAIN): DRAINING,
    (CORDONED, ScheduleTrigger.UNCORDON): ACTIVE,
    (DRAINING, ScheduleTrigger.UNCORDON): ACTIVE,
    (QUARANTINED, ScheduleTrigger.UNCORDON): ACTIVE,
    (ACTIVE, ScheduleTrigger.QUARANTINE): QUARANTINED,
    (CORDONED, ScheduleTrigger.QUARANTINE): QUARANTINED,
    (DRAINING, ScheduleTrigger.QUARANTINE): QUARANTINED,
}

STATE_PAIRS = list(itertools.product(list(NodeState), list(NodeTrigger)))
SCHEDULE_PAIRS = list(itertools.product(list(Schedule), list(ScheduleTrigger)))


def test_the_tables_cover_every_state_and_trigger() -> None:
    # Guards the tables above against a state, schedule or trigger added without rows of this test.
    assert set(NodeState) == {J, R, DC, DN, L}
    assert set(NodeTrigger) == {t for _, t in STATE_ALLOWED}
    assert set(Schedule) == {ACTIVE, CORDONED, DRAINING, QUARANTINED}
    assert set(ScheduleTrigger) == {t for _, t in SCHEDULE_ALLOWED}


@pytest.mark.parametrize(("state", "trigger"), STATE_PAIRS, ids=[f"{t}-from-{s}" for s, t in STATE_PAIRS])
def test_node_state_follows_the_table(state: NodeState, trigger: NodeTrigger) -> None:
    if (state, trigger) in STATE_ALLOWED:
        assert next_node_state("gpu-1", state, trigger) is STATE_ALLOWED[(state, trigger)]
    else:
        with pytest.raises(InvalidNodeTransition) as caught:
            next_node_state("gpu-1", state, trigger)
        assert (caught.value.node, caught.value.current, caught.value.trigger) == ("gpu-1", state, trigger)


@pytest.mark.parametrize(("schedule", "trigger"), SCHEDULE_PAIRS, ids=[f"{t}-from-{s}" for s, t in SCHEDULE_PAIRS])
def test_schedule_follows_the_table(schedule: Schedule, trigger: ScheduleTrigger) -> None:
    if (schedule, trigger) in SCHEDULE_ALLOWED:
        assert next_schedule("gpu-1", schedule, trigger) is SCHEDULE_ALLOWED[(schedule, trigger)]
    else:
        with pytest.raises(InvalidNodeTransition) as caught:
            next_schedule("gpu-1", schedule, trigger)
        assert (caught.value.node, caught.value.current, caught.value.trigger) == ("gpu-1", schedule, trigger)


# Silence against a 20 s heartbeat window: well inside it, exactly at its end, past it.
WINDOW_S = 20.0
SILENCE = {"heard-5s-ago": 5.0, "silent-exactly-the-window": 20.0, "silent-past-the-window": 45.0}
# The one combination that takes new runs; every other row of the truth table must not.
TAKES = (R, ACTIVE, "heard-5s-ago")
PLACEMENT = list(itertools.product(list(NodeState), list(Schedule), list(SILENCE)))


@pytest.mark.parametrize(("state", "schedule", "silence"), PLACEMENT,
                         ids=[f"{n}-{s}-{w}" for n, s, w in PLACEMENT])
def test_takes_new_runs(state: NodeState, schedule: Schedule, silence: str) -> None:
    assert takes_new_runs(state, schedule, SILENCE[silence], WINDOW_S) is ((state, schedule, silence) == TAKES)
