"""The run state machine: every (state, trigger) pair against the documented table; how an ended attempt ends a run."""

from __future__ import annotations

import itertools

import pytest

from scheduler.core.lifecycle import (
    ACTIVE,
    TERMINAL,
    DesiredState,
    InvalidTransition,
    Outcome,
    Reason,
    RunState,
    Trigger,
    next_state,
    outcome,
)

Q, P, R, F = RunState.QUEUED, RunState.PREPARING, RunState.RUNNING, RunState.FINALIZING
DONE, FAILED, CANCELED = RunState.COMPLETED, RunState.FAILED, RunState.CANCELED

# The state table of docs/architecture.md, written out independently of lifecycle.TABLE:
# (state, trigger) -> target. Every pair not listed here must be refused.
ALLOWED: dict[tuple[RunState, Trigger], RunState] = {
    (Q, Trigger.ASSIGN): P,
    (P, Trigger.START): R,
    (P, Trigger.FINALIZE): F,
    (R, Trigger.FINALIZE): F,
    (R, Trigger.COMPLETE): DONE,
    (F, Trigger.COMPLETE): DONE,
    (Q, Trigger.FAIL): FAILED,
    (P, Trigger.FAIL): FAILED,
    (R, Trigger.FAIL): FAILED,
    (F, Trigger.FAIL): FAILED,
    (Q, Trigger.CANCEL): CANCELED,
    (P, Trigger.CANCEL): CANCELED,
    (R, Trigger.CANCEL): CANCELED,
    (F, Trigger.CANCEL): CANCELED,
    (P, Trigger.REQUEUE): Q,
    (R, Trigger.REQUEUE): Q,
    (F, Trigger.REQUEUE): Q,
}

TRIGGERS = [t for t in Trigger if t not in (Trigger.SUBMIT, Trigger.TRACK)]  # creations: no transition
PAIRS = list(itertools.product(list(RunState), TRIGGERS))


def _id(pair: tuple[RunState, Trigger]) -> str:
    return f"{pair[0]}-{pair[1]}"


def test_the_table_covers_every_state_and_trigger() -> None:
    # Guards the table above against a new state or trigger being added without a row of this test.
    assert set(RunState) == {Q, P, R, F, DONE, FAILED, CANCELED}
    assert set(TRIGGERS) == {t for _, t in ALLOWED}


@pytest.mark.parametrize("pair", PAIRS, ids=[_id(p) for p in PAIRS])
def test_next_state_follows_the_table(pair: tuple[RunState, Trigger]) -> None:
    state, trigger = pair
    if pair in ALLOWED:
        assert next_state("run1", state, trigger) is ALLOWED[pair]
    else:
        with pytest.raises(InvalidTransition) as caught:
            next_state("run1", state, trigger)
        assert (caught.value.run_id, caught.value.state, caught.value.trigger) == ("run1", state, trigger)
        assert str(trigger) in str(caught.value) and str(state) in str(caught.value)


@pytest.mark.parametrize("state", sorted(TERMINAL), ids=str)
def test_terminal_states_allow_no_trigger(state: RunState) -> None:
    for trigger in Trigger:
        with pytest.raises(InvalidTransition):
            next_state("run1", state, trigger)


def test_submit_is_not_a_transition_of_an_existing_run() -> None:
    for state in RunState:
        with pytest.raises(InvalidTransition):
            next_state("run1", state, Trigger.SUBMIT)


def test_named_subsets() -> None:
    assert TERMINAL == {DONE, FAILED, CANCELED}
    assert ACTIVE == {P, R, F}
    assert not TERMINAL & ACTIVE and Q not in TERMINAL | ACTIVE


OUTCOMES = {
    "clean exit completes": (
        dict(exit_code=0, agent_reason=None, desired=DesiredState.RUN),
        Outcome(Trigger.COMPLETE, None),
    ),
    "nonzero exit fails with exit_code": (
        dict(exit_code=3, agent_reason=None, desired=DesiredState.RUN),
        Outcome(Trigger.FAIL, Reason.EXIT_CODE),
    ),
    "killed by signal fails with exit_code": (
        dict(exit_code=-9, agent_reason=None, desired=DesiredState.RUN),
        Outcome(Trigger.FAIL, Reason.EXIT_CODE),
    ),
    "timeout fails with timeout": (
        dict(exit_code=-15, agent_reason=Reason.TIMEOUT, desired=DesiredState.RUN),
        Outcome(Trigger.FAIL, Reason.TIMEOUT),
    ),
    "timeout fails even if the process exited 0": (
        dict(exit_code=0, agent_reason=Reason.TIMEOUT, desired=DesiredState.RUN),
        Outcome(Trigger.FAIL, Reason.TIMEOUT),
    ),
    "oom fails with oom_killed": (
        dict(exit_code=-9, agent_reason=Reason.OOM_KILLED, desired=DesiredState.RUN),
        Outcome(Trigger.FAIL, Reason.OOM_KILLED),
    ),
    "stop requested and nonzero exit cancels": (
        dict(exit_code=-15, agent_reason=None, desired=DesiredState.STOP),
        Outcome(Trigger.CANCEL, Reason.CANCELED_BY_USER),
    ),
    "agent canceled cancels": (
        dict(exit_code=-15, agent_reason=Reason.CANCELED_BY_USER, desired=DesiredState.RUN),
        Outcome(Trigger.CANCEL, Reason.CANCELED_BY_USER),
    ),
    "agent canceled cancels whatever the exit code": (
        dict(exit_code=0, agent_reason=Reason.CANCELED_BY_USER, desired=DesiredState.STOP),
        Outcome(Trigger.CANCEL, Reason.CANCELED_BY_USER),
    ),
    "stopped because a sibling failed keeps that reason": (
        dict(exit_code=-15, agent_reason=Reason.SIBLING_FAILED, desired=DesiredState.STOP),
        Outcome(Trigger.CANCEL, Reason.SIBLING_FAILED),
    ),
    "stopped because its parent was canceled keeps that reason": (
        dict(exit_code=-15, agent_reason=Reason.PARENT_CANCELED, desired=DesiredState.STOP),
        Outcome(Trigger.CANCEL, Reason.PARENT_CANCELED),
    ),
    "stop requested but the run finished cleanly completes": (
        dict(exit_code=0, agent_reason=None, desired=DesiredState.STOP),
        Outcome(Trigger.COMPLETE, None),
    ),
}


@pytest.mark.parametrize("case", list(OUTCOMES), ids=list(OUTCOMES))
def test_outcome(case: str) -> None:
    kwargs, expected = OUTCOMES[case]
    assert outcome(**kwargs) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("case", list(OUTCOMES), ids=list(OUTCOMES))
def test_outcome_trigger_ends_a_running_or_finalizing_run(case: str) -> None:
    kwargs, _ = OUTCOMES[case]
    result = outcome(**kwargs)  # type: ignore[arg-type]
    for state in (R, F):
        assert next_state("run1", state, result.trigger) in TERMINAL
