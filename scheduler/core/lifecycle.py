"""The run state machine: one table, no I/O.

Every state change of a run is one `Trigger`. The table below says from which states a trigger may fire and
which state it leads to; the store turns each entry into a guarded `UPDATE ... WHERE state IN (...)` plus an
appended run event, so a transition the table forbids fails loudly instead of overwriting state.

    trigger        from                                   to
    submit         (new)                                  Queued
    track          (new)                                  Running       (a tracked child run: started by its
                                                                         parent's script, no process of its own)
    assign         Queued                                 Preparing     (placed on a node, attempt N+1)
    start          Preparing                              Running       (agent started the process)
    finalize       Preparing, Running                     Finalizing    (process ended, outputs uploading)
    complete       Running, Finalizing                    Completed     (exit code 0)
    fail           Queued, Preparing, Running, Finalizing Failed        (reason says why)
    cancel         Queued, Preparing, Running, Finalizing Canceled
    requeue        Preparing, Running, Finalizing         Queued        (attempt lost; tried again)

The final state comes from what the agent observed (`outcome`), never from what the script claimed. The one
exception is a tracked run (`SDK child_run`, an MLflow nested run): its script says when it ended (complete, fail,
cancel from Running), and it ends with the run that tracks it at the latest: Completed with a Completed run,
Canceled with a Canceled one, else Failed (also when that run's attempt is requeued).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class RunState(StrEnum):
    QUEUED = "Queued"
    PREPARING = "Preparing"
    RUNNING = "Running"
    FINALIZING = "Finalizing"
    COMPLETED = "Completed"
    FAILED = "Failed"
    CANCELED = "Canceled"


TERMINAL = frozenset({RunState.COMPLETED, RunState.FAILED, RunState.CANCELED})
ACTIVE = frozenset({RunState.PREPARING, RunState.RUNNING, RunState.FINALIZING})


class Trigger(StrEnum):
    SUBMIT = "submit"
    TRACK = "track"
    ASSIGN = "assign"
    START = "start"
    FINALIZE = "finalize"
    COMPLETE = "complete"
    FAIL = "fail"
    CANCEL = "cancel"
    REQUEUE = "requeue"


class Reason(StrEnum):
    """Why a run ended badly (or was requeued)."""

    EXIT_CODE = "exit_code"
    OOM_KILLED = "oom_killed"
    TIMEOUT = "timeout"
    NODE_LOST = "node_lost"
    ENV_BUILD_FAILED = "env_build_failed"
    SNAPSHOT_INVALID = "snapshot_invalid"
    UNSCHEDULABLE = "unschedulable"
    CANCELED_BY_USER = "canceled_by_user"
    PARENT_CANCELED = "parent_canceled"
    SIBLING_FAILED = "sibling_failed"
    AGENT_ERROR = "agent_error"         # the agent failed the attempt on its own side (fetch, extract, disk)
    CUT_OFF = "cut_off"                 # the agent stopped the attempt after hearing nothing from the head
    AGENT_STOPPED = "agent_stopped"     # the agent was shut down under the attempt
    STALE = "stale"                     # head -> agent: this attempt is not the run's live one; stop it


STOP_REASONS = frozenset({Reason.CANCELED_BY_USER, Reason.PARENT_CANCELED, Reason.SIBLING_FAILED})
# The attempt was lost with its node or agent, not failed by the run: requeued within the retry budget.
LOST = frozenset({Reason.NODE_LOST, Reason.CUT_OFF, Reason.AGENT_STOPPED})
# Failures that say more about the node than about the run: enough of them in a row quarantine the node. A build
# that failed on the environment's spec (`env_build_failed`: a requirement that does not exist, a version conflict)
# says nothing about the node, either way: it neither counts towards quarantine nor clears the count (a node that
# fails building for its own reasons reports `agent_error`).
NODE_SIDE = frozenset({Reason.AGENT_ERROR})
NEITHER_SIDE = frozenset({Reason.ENV_BUILD_FAILED})


class PendingKind(StrEnum):
    """Why a queued run is not running yet, as a kind; the pending reason's text says the particulars."""

    SCHEDULER = "scheduler"         # no scheduling pass has considered it yet
    CAPACITY = "capacity"           # waiting for resources on the cluster's nodes (or for nodes to start)
    NO_NODE = "no_node"             # no node of its cluster is up and schedulable
    UNFIT = "unfit"                 # no node up now could ever hold it (size, labels, GPU model, gang size)
    BEHIND = "behind"               # behind a blocked run it may not overtake (EASY backfill)
    QUOTA = "quota"                 # its workspace is at its GPU quota in the cluster
    REQUEUED = "requeued"           # its last attempt was lost; waiting to be placed again


@dataclass(frozen=True, slots=True)
class Pending:
    """Why a run stays queued: a kind to decide on, a line to show."""

    kind: PendingKind
    text: str


class DesiredState(StrEnum):
    RUN = "run"
    STOP = "stop"


@dataclass(frozen=True, slots=True)
class Transition:
    sources: frozenset[RunState]
    target: RunState


_LIVE = frozenset({RunState.QUEUED}) | ACTIVE

TABLE: dict[Trigger, Transition] = {
    Trigger.ASSIGN: Transition(frozenset({RunState.QUEUED}), RunState.PREPARING),
    Trigger.START: Transition(frozenset({RunState.PREPARING}), RunState.RUNNING),
    Trigger.FINALIZE: Transition(frozenset({RunState.PREPARING, RunState.RUNNING}), RunState.FINALIZING),
    Trigger.COMPLETE: Transition(frozenset({RunState.RUNNING, RunState.FINALIZING}), RunState.COMPLETED),
    Trigger.FAIL: Transition(_LIVE, RunState.FAILED),
    Trigger.CANCEL: Transition(_LIVE, RunState.CANCELED),
    Trigger.REQUEUE: Transition(ACTIVE, RunState.QUEUED),
}


class InvalidTransition(Exception):
    """The state machine forbids this trigger in the run's current state."""

    def __init__(self, run_id: str, state: str, trigger: Trigger) -> None:
        self.run_id = run_id
        self.state = state
        self.trigger = trigger
        super().__init__(f"run {run_id}: {trigger} is not allowed in state {state}")


def next_state(run_id: str, state: RunState, trigger: Trigger) -> RunState:
    """The state `trigger` leads to from `state`, or InvalidTransition."""
    transition = TABLE.get(trigger)
    if transition is None or state not in transition.sources:
        raise InvalidTransition(run_id, state, trigger)
    return transition.target


@dataclass(frozen=True, slots=True)
class Outcome:
    trigger: Trigger
    reason: Reason | None


def outcome(*, exit_code: int, agent_reason: Reason | None, desired: DesiredState) -> Outcome:
    """How an attempt that the agent saw end finishes the run.

    A run the head asked to stop is Canceled whatever its exit code, as long as the agent stopped it, with the
    reason the stop was asked for; a clean exit is Completed; anything else Failed with the agent's reason, or
    `exit_code` when it gave none.
    """
    if agent_reason in STOP_REASONS or (desired is DesiredState.STOP and exit_code != 0):
        return Outcome(Trigger.CANCEL, agent_reason if agent_reason in STOP_REASONS else Reason.CANCELED_BY_USER)
    if exit_code == 0 and not agent_reason:
        return Outcome(Trigger.COMPLETE, None)
    return Outcome(Trigger.FAIL, agent_reason or Reason.EXIT_CODE)
