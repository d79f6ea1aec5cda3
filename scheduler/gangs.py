"""Multi-node runs: the parent follows its children (one per node). `step()` is the pure rule; `follow_children()`
applies it whenever a child changes.

    children                                   parent
    all started (Running, Finalizing, done)    Preparing -> Running
    all Completed                              -> Completed
    one Failed or Canceled                     -> Failed, reason sibling_failed; live siblings are stopped
    all ended after the user canceled          -> Canceled, reason canceled_by_user

A lost child is not requeued on its own (its siblings would wait for it forever): it fails with `node_lost`, its
siblings are stopped, and the whole gang is requeued as the parent's attempt N+1 with new children, within the
parent's retry budget (else the parent fails). Only the children of the parent's current attempt count.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from protos import runyard_pb2 as pb
from scheduler.followers import Followers
from scheduler.lifecycle import ACTIVE, TERMINAL, DesiredState, InvalidTransition, Reason, RunState, Trigger
from scheduler.model import ATTEMPT_PROPERTY, RANK_PROPERTY, RunRecord
from scheduler.sessions import Sessions
from scheduler.store import Store

log = logging.getLogger(__name__)

_STARTED = frozenset({RunState.RUNNING, RunState.FINALIZING, RunState.COMPLETED})


@dataclass(frozen=True, slots=True)
class Step:
    triggers: tuple[Trigger, ...] = ()      # applied to the parent in order
    reason: str = ""
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


async def current_children(store: Store, parent: RunRecord) -> list[RunRecord]:
    """The children of the parent's current attempt, by rank."""
    mine = [c for c in await store.children(parent.id) if c.properties.get(ATTEMPT_PROPERTY) == str(parent.attempt)]
    return sorted(mine, key=node_rank)


async def requeue(store: Store, sessions: Sessions, followers: Followers, parent: RunRecord, *, detail: str) -> bool:
    """Put the whole gang back in the queue (attempt N+1 gets new children) and stop what is left of this one.
    False if the parent moved on meanwhile."""
    try:
        await store.transition(parent.id, Trigger.REQUEUE, attempt=parent.attempt, detail=detail,
                               pending_reason=f"requeued: attempt {parent.attempt} was lost ({detail})")
    except InvalidTransition:
        return False
    for child in await current_children(store, parent):
        if child.state in ACTIVE:
            await stop_run(store, sessions, child, reason=Reason.SIBLING_FAILED, detail=f"the gang was requeued: {detail}")
    log.warning("gang requeued", extra={"run_id": parent.id, "attempt": parent.attempt, "detail": detail})
    followers.notify(parent.id)
    return True


async def follow_children(store: Store, sessions: Sessions, followers: Followers, parent_id: str) -> None:
    """Apply `step()` to the parent after one of its children changed."""
    parent = await store.get_run(parent_id)
    if not is_gang_parent(parent):
        return
    children = await current_children(store, parent)
    decision = step(parent.state, parent.desired_state, [c.state for c in children])
    for trigger in decision.triggers:
        failed = next((c for c in children if c.state is RunState.FAILED), None)
        ends = trigger in (Trigger.COMPLETE, Trigger.FAIL, Trigger.CANCEL)
        sets: dict[str, object] = {"ended_at": store.clock()} if ends else {"started_at": store.clock()}
        if decision.reason:
            sets["reason"] = decision.reason
        if trigger is Trigger.FAIL and failed is not None and failed.exit_code is not None:
            sets["exit_code"] = failed.exit_code
        culprit = next((c for c in children if c.state in (RunState.FAILED, RunState.CANCELED)), None)
        detail = f"child {culprit.id} ended {culprit.state}" if trigger is Trigger.FAIL and culprit else ""
        try:
            await store.transition(parent_id, trigger, detail=detail, **sets)
        except InvalidTransition:
            return  # another report got there first
        log.info("gang parent moved", extra={"run_id": parent_id, "trigger": trigger, "reason": decision.reason})
    if decision.stop_siblings:
        for child in children:
            if child.state in ACTIVE:
                await stop_run(store, sessions, child, reason=Reason.SIBLING_FAILED, detail="a sibling failed")
    followers.notify(parent_id)


async def stop_run(store: Store, sessions: Sessions, run: RunRecord, *, reason: str, detail: str) -> None:
    """Ask the node of a live attempt to stop it; the agent's report ends it."""
    await store.request_stop(run.id, detail)
    sessions.send(run.node_id, pb.HeadMessage(cancel=pb.CancelRun(run_id=run.id, attempt=run.attempt, reason=reason)))
