"""The parent of a multi-node run follows its children: one table of cases for `gangs.step()`."""

from __future__ import annotations

import pytest

from scheduler.core.gangs import Step, step
from scheduler.core.lifecycle import DesiredState, Reason, RunState, Trigger

Q, P, R, F, C = RunState.QUEUED, RunState.PREPARING, RunState.RUNNING, RunState.FINALIZING, RunState.COMPLETED
FAILED, CANCELED = RunState.FAILED, RunState.CANCELED
RUN, STOP = DesiredState.RUN, DesiredState.STOP

CASES: dict[str, tuple[RunState, DesiredState, list[RunState], Step]] = {
    "children still preparing: nothing": (P, RUN, [P, P], Step()),
    "one child running: still preparing": (P, RUN, [R, P], Step()),
    "all children running: parent runs": (P, RUN, [R, R], Step((Trigger.START,))),
    "a child already done counts as started": (P, RUN, [C, R], Step((Trigger.START,))),
    "finalizing counts as started": (P, RUN, [F, R], Step((Trigger.START,))),
    "running parent with running children: nothing": (R, RUN, [R, F], Step()),
    "all completed: parent completes": (R, RUN, [C, C], Step((Trigger.COMPLETE,))),
    "all completed before the parent saw them run": (P, RUN, [C, C], Step((Trigger.START, Trigger.COMPLETE))),
    "a child failed: parent fails, siblings stopped": (
        R, RUN, [R, FAILED], Step((Trigger.FAIL,), Reason.SIBLING_FAILED, stop_siblings=True)),
    "a child failed while others prepare": (
        P, RUN, [P, FAILED], Step((Trigger.FAIL,), Reason.SIBLING_FAILED, stop_siblings=True)),
    "a child canceled on its own fails the gang": (
        R, RUN, [CANCELED, R], Step((Trigger.FAIL,), Reason.SIBLING_FAILED, stop_siblings=True)),
    "user canceled, children still stopping: wait": (R, STOP, [CANCELED, R], Step()),
    "user canceled, all children ended: parent canceled": (
        R, STOP, [CANCELED, CANCELED], Step((Trigger.CANCEL,), Reason.CANCELED_BY_USER)),
    "user canceled after some completed": (R, STOP, [C, CANCELED], Step((Trigger.CANCEL,), Reason.CANCELED_BY_USER)),
    "parent already failed: nothing more": (FAILED, RUN, [CANCELED, FAILED], Step()),
    "parent still queued: nothing": (Q, RUN, [], Step()),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_parent_follows_children(case: str) -> None:
    parent, desired, children, expected = CASES[case]
    assert step(parent, desired, children) == expected
