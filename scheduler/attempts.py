"""Losing an attempt: the one place that decides between requeue (attempt N+1) and `Failed`/`node_lost`."""

from __future__ import annotations

import logging

from scheduler.followers import Followers
from scheduler.lifecycle import InvalidTransition, Reason, Trigger
from scheduler.store import Store

log = logging.getLogger(__name__)


async def lose_attempt(store: Store, followers: Followers, *, run_id: str, attempt: int, detail: str,
                       max_retries: int) -> None:
    """Requeue the run if attempt `attempt` was within its retry budget, else fail it; no-op if it moved on."""
    try:
        if attempt <= max_retries:
            await store.transition(
                run_id, Trigger.REQUEUE, attempt=attempt, node_id=None, gpu_indices=(),
                pending_reason=f"requeued: attempt {attempt} was lost ({detail})", detail=detail,
            )
        else:
            await store.transition(run_id, Trigger.FAIL, attempt=attempt, reason=Reason.NODE_LOST,
                                   ended_at=store.clock(), detail=detail)
    except InvalidTransition:
        return
    log.warning("attempt lost", extra={"run_id": run_id, "attempt": attempt, "detail": detail})
    followers.notify(run_id)
