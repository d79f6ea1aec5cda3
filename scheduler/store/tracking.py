"""The reads behind the head's MLflow API (`mlflow_api.py`): experiments, run searches, latest metrics, params and
metric histories, always within one workspace.

Searches run the WHERE and ORDER BY that `mlflow_search.compile_runs()` built (parameterised; this module adds
the workspace, the experiments and the page). Metric reads are of rank 0, the series a run's SDK and MLflow
calls write; NaN is stored as NULL and read back as NaN.
Must not: parse filters, write, decide anything, or know about HTTP or gRPC.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from scheduler.model import RunRecord
from scheduler.store.base import _RUN_COLUMNS, StoreBase, _run, stored_real

_R_COLUMNS = ", ".join("r." + c.strip() for c in _RUN_COLUMNS.split(","))
_LATEST = """
WITH RECURSIVE keys(run_id, key) AS (
    SELECT j.value, (SELECT MIN(m.key) FROM metrics AS m WHERE m.run_id = j.value) FROM json_each(?) AS j
    UNION ALL
    SELECT k.run_id, (SELECT MIN(m.key) FROM metrics AS m WHERE m.run_id = k.run_id AND m.key > k.key)
    FROM keys AS k WHERE k.key IS NOT NULL)
SELECT k.run_id, m.key, m.value, m.step, m.ts FROM keys AS k JOIN metrics AS m
    ON m.run_id = k.run_id AND m.key = k.key AND (m.attempt, m.rank, m.seq) = (
        SELECT l.attempt, l.rank, l.seq FROM metrics AS l WHERE l.run_id = k.run_id AND l.key = k.key AND l.rank = 0
        ORDER BY l.step DESC, l.ts DESC, l.attempt DESC, l.seq DESC LIMIT 1)
ORDER BY k.run_id, m.key
"""
MAX_IN = 500        # ids per IN (...) list: SQLite's default cap on parameters is far above, the pages stay small


@dataclass(frozen=True, slots=True)
class Experiment:
    name: str
    created_at: float
    last_update: float


@dataclass(frozen=True, slots=True)
class Point:
    run_id: str
    key: str
    value: float
    step: int
    ts: float
    attempt: int = 0
    seq: int = 0


def _chunks(ids: Sequence[str]) -> list[list[str]]:
    return [list(ids[i:i + MAX_IN]) for i in range(0, len(ids), MAX_IN)]


class TrackingStore(StoreBase):
    """Reads of experiments, runs and their metrics for the MLflow API; part of `Store`."""

    _EXPERIMENT = ("SELECT e.name, e.created_at, COALESCE((SELECT MAX(r.created_at) FROM runs AS r "
                   "WHERE r.workspace = e.workspace AND r.experiment = e.name), e.created_at) FROM experiments AS e")

    async def experiment(self, workspace: str, name: str) -> Experiment | None:
        row = await self._one(self._EXPERIMENT + " WHERE e.workspace = ? AND e.name = ?", (workspace, name))
        return Experiment(*row) if row else None

    async def search_experiments(self, workspace: str, where: str, args: Sequence[Any], *, limit: int,
                                 offset: int) -> list[Experiment]:
        """Experiments of the workspace that match `where` (over `experiments AS e`), newest first."""
        sql = self._EXPERIMENT + " WHERE e.workspace = ?" + (f" AND {where}" if where else "")
        sql += " ORDER BY e.created_at DESC, e.name LIMIT ? OFFSET ?"
        return [Experiment(*row) for row in await self._all(sql, [workspace, *args, limit, offset])]

    async def search_runs(self, workspace: str, experiments: Sequence[str], where: str, args: Sequence[Any],
                          order: str, order_args: Sequence[Any], *, limit: int, offset: int) -> list[RunRecord]:
        """Runs of the workspace in `experiments` matching `where`, in `order` (both over `runs AS r`)."""
        if not experiments:
            return []
        marks = ", ".join("?" * len(experiments))
        sql = f"SELECT {_R_COLUMNS} FROM runs AS r WHERE r.workspace = ? AND r.experiment IN ({marks})"
        if where:
            sql += f" AND {where}"
        sql += f" ORDER BY {order} LIMIT ? OFFSET ?"
        rows = await self._all(sql, [workspace, *experiments, *args, *order_args, limit, offset])
        return [_run(row) for row in rows]

    async def runs_by_id(self, workspace: str, run_ids: Sequence[str]) -> dict[str, RunRecord]:
        found: dict[str, RunRecord] = {}
        for ids in _chunks(list(dict.fromkeys(run_ids))):
            sql = f"SELECT {_RUN_COLUMNS} FROM runs WHERE workspace = ? AND id IN ({', '.join('?' * len(ids))})"
            found.update((r.id, r) for r in map(_run, await self._all(sql, [workspace, *ids])))
        return found

    async def latest_metrics(self, run_ids: Sequence[str]) -> dict[str, list[Point]]:
        """Each run's latest point per key (rank 0: highest step, then the latest timestamp). The keys are found by
        skipping through the series index (one seek per key, not a read of every point), then each key's latest
        point is one more seek."""
        found: dict[str, list[Point]] = {}
        for ids in _chunks(run_ids):
            for run_id, key, value, step, ts in await self._all(_LATEST, (json.dumps(ids),)):
                found.setdefault(run_id, []).append(Point(run_id, key, stored_real(value), step, ts))
        return found

    async def params_of(self, run_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        found: dict[str, dict[str, str]] = {}
        for ids in _chunks(run_ids):
            sql = f"SELECT run_id, key, value FROM params WHERE run_id IN ({', '.join('?' * len(ids))}) ORDER BY key"
            for run_id, key, value in await self._all(sql, ids):
                found.setdefault(run_id, {})[key] = value
        return found

    async def metric_history(self, run_id: str, key: str, *, after: Sequence[Any] | None, limit: int) -> list[Point]:
        """Up to `limit` points of one series (rank 0) in step order, after the (step, ts, attempt, seq) `after`."""
        sql = "SELECT value, step, ts, attempt, seq FROM metrics WHERE run_id = ? AND key = ? AND rank = 0"
        args: list[Any] = [run_id, key]
        if after is not None:
            sql += " AND (step, ts, attempt, seq) > (?, ?, ?, ?)"
            args += list(after)
        sql += " ORDER BY step, ts, attempt, seq LIMIT ?"
        rows = await self._all(sql, [*args, limit])
        return [Point(run_id, key, stored_real(v), step, ts, attempt, seq) for v, step, ts, attempt, seq in rows]

    async def metric_steps(self, run_id: str, key: str, start: int | None, end: int | None) -> list[int]:
        """The distinct steps of one series (rank 0) within [start, end], ascending."""
        sql = "SELECT DISTINCT step FROM metrics WHERE run_id = ? AND key = ? AND rank = 0"
        args: list[Any] = [run_id, key]
        if start is not None:
            sql += " AND step >= ?"
            args.append(start)
        if end is not None:
            sql += " AND step <= ?"
            args.append(end)
        return [row[0] for row in await self._all(sql + " ORDER BY step", args)]

    async def metric_points_at(self, run_id: str, key: str, steps: Sequence[int]) -> list[Point]:
        """The points of one series (rank 0) at `steps`, in step order."""
        found: list[Point] = []
        for chunk in [list(steps[i:i + MAX_IN]) for i in range(0, len(steps), MAX_IN)]:
            sql = (f"SELECT value, step, ts FROM metrics WHERE run_id = ? AND key = ? AND rank = 0 "
                   f"AND step IN ({', '.join('?' * len(chunk))}) ORDER BY step, ts, attempt, seq")
            found += [Point(run_id, key, stored_real(v), step, ts) for v, step, ts in
                      await self._all(sql, [run_id, key, *chunk])]
        return found
