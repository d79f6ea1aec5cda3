"""Multi-node runs: what the parent does given its children (one per node). Pure; `react.follow_gang` uses it.

    children                                   parent
    all started (Running, Finalizing, done)    Preparing -> Running
    all Completed                              -> Completed
    one Failed or Canceled                     -> Failed, reason sibling_failed (node_lost if the child was lost);
                                                  live siblings are stopped
    all ended after the user canceled          -> Canceled, reason canceled_by_user

A lost child is not requeued on its own (its siblings would wait for it forever): it fails with `node_lost`, its
siblings are stopped, and the whole gang is requeued as the parent's attempt N+1 with new children, within the
parent's retry budget (else the parent fails). Only the children of the parent's current attempt count.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from scheduler.core.lifecycle import TERMINAL, DesiredState, Reason, RunState, Trigger
from scheduler.model import ATTEMPT_PROPERTY, RANK_PROPERTY, RunRecord

_STARTED = frozenset({RunState.RUNNING, RunState.FINALIZING, RunState.COMPLETED})


@dataclass(frozen=True, slots=True)
class Step:
    triggers: tuple[Trigger, ...] = ()      # applied to the parent in order
    reason: Reason | None = None
    stop_siblings: bool = False


def step(parent: RunState, desired: DesiredState, children: Sequence[RunState]) -> Step:
    """What the parent of a gang does next, given its children's states."""
    if parent in TERMINAL or parent is RunState.QUEUED or not children:
        return Step()
    if desired is DesiredState.STOP:
        done = all(c in TERMINAL for c in children)
        return Step((Trigger.CANCEL,), Reason.CANCELED_BY_USER) if done else Step()
    if any(c in (RunState.FAILED, RunState.CANCELED) for c in children):
        return Step((Trigger.FAIL,), Reason.SIBLING_FAILED, stop_siblings=True)
    start = (Trigger.START,) if parent is RunState.PREPARING and all(c in _STARTED for c in children) else ()
    if all(c is RunState.COMPLETED for c in children):
        return Step(start + (Trigger.COMPLETE,))
    return Step(start)


def is_gang_parent(run: RunRecord) -> bool:
    return run.spec.instance_count > 1


def node_rank(child: RunRecord) -> int:
    return int(child.properties.get(RANK_PROPERTY, 0))


def current_children(parent: RunRecord, runs: Iterable[RunRecord]) -> list[RunRecord]:
    """The children of the parent's current attempt among `runs`, by rank."""
    mine = [r for r in runs if r.parent_id == parent.id and r.properties.get(ATTEMPT_PROPERTY) == str(parent.attempt)]
    return sorted(mine, key=node_rank)
