"""Queue order and fair share between workspaces, as pure functions. No I/O.

The queue is considered by priority (higher first); within one priority, the workspace that used the least of
the cluster recently goes first; within one workspace, first come first served. "Used" is GPU-seconds decayed
exponentially with a configurable half-life (Slurm's PriorityDecayHalfLife): a GPU-hour an hour ago counts 1, one
half-life ago 0.5. Runs without GPUs cost nothing, so CPU-only workspaces stay in submission order.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Usage:
    """One attempt's hold on GPUs: `gpus` from `start` until `end` (None: still running)."""

    workspace: str
    cluster: str
    gpus: int
    start: float
    end: float | None


def decayed_usage(usages: Iterable[Usage], now: float, half_life_s: float) -> dict[tuple[str, str], float]:
    """(workspace, cluster) -> GPU-seconds, each second weighted by 2^(-age / half_life)."""
    rate = math.log(2) / half_life_s
    totals: dict[tuple[str, str], float] = {}
    for u in usages:
        end = now if u.end is None else min(u.end, now)
        if u.gpus <= 0 or end <= u.start:
            continue
        # integral over [start, end] of exp(-rate * (now - t)) dt
        weight = (math.exp(-rate * (now - end)) - math.exp(-rate * (now - u.start))) / rate
        key = (u.workspace, u.cluster)
        totals[key] = totals.get(key, 0.0) + u.gpus * weight
    return totals


@dataclass(frozen=True, slots=True)
class Queued:
    """What ordering needs of a queued run."""

    run_id: str
    workspace: str
    cluster: str
    priority: int
    created_at: float


def queue_order(queued: Sequence[Queued], usage: Mapping[tuple[str, str], float]) -> list[Queued]:
    """The order the scheduler considers queued runs: priority, then least recent use, then FIFO."""
    return sorted(
        queued,
        key=lambda q: (-q.priority, usage.get((q.workspace, q.cluster), 0.0), q.created_at, q.run_id),
    )
