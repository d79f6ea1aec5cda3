"""Losing an attempt: the one place that decides between requeue (attempt N+1) and `Failed`/`node_lost`."""

from __future__ import annotations

import logging

from scheduler import gangs
from scheduler.followers import Followers
from scheduler.lifecycle import DesiredState, InvalidTransition, Reason, Trigger
from scheduler.model import RunRecord
from scheduler.sessions import Sessions
from scheduler.store import Store

log = logging.getLogger(__name__)


async def lose_attempt(store: Store, sessions: Sessions, followers: Followers, run: RunRecord, *, detail: str,
                       default_retries: int) -> None:
    """Requeue the run if its current attempt was within its retry budget (the job's `retry.max_retries`, else
    the head's default), else fail it; no-op if it moved on. A child of a multi-node run is never requeued on
    its own: it fails, and its gang is requeued as a whole within the parent's budget (else it fails too)."""
    parent = await store.get_run(run.parent_id) if run.parent_id else None
    gang = parent is not None and gangs.is_gang_parent(parent)
    if gang and parent.attempt <= _budget(parent, default_retries) and parent.desired_state is DesiredState.RUN:
        await gangs.requeue(store, sessions, followers, parent, detail=f"rank {gangs.node_rank(run)}: {detail}")
    try:
        if not gang and run.attempt <= _budget(run, default_retries):
            await store.transition(
                run.id, Trigger.REQUEUE, attempt=run.attempt, node_id=None, gpu_indices=(),
                pending_reason=f"requeued: attempt {run.attempt} was lost ({detail})", detail=detail,
            )
        else:
            await store.transition(run.id, Trigger.FAIL, attempt=run.attempt, reason=Reason.NODE_LOST,
                                   ended_at=store.clock(), detail=detail)
    except InvalidTransition:
        return
    log.warning("attempt lost", extra={"run_id": run.id, "attempt": run.attempt, "detail": detail})
    followers.notify(run.id)
    if gang:
        await gangs.follow_children(store, sessions, followers, run.parent_id)


def _budget(run: RunRecord, default_retries: int) -> int:
    return run.spec.max_retries if run.spec.max_retries >= 0 else default_retries
