"""Runs' use of their nodes: the agents' samples (`system_metrics`), their peaks and means, and the accounting of
CPU- and GPU-hours by user and workspace; part of `Store`.

A sample is stored once per (run, key, attempt, seq): a resent one is ignored. The accounting reads the runs
that ran in a window, their wall time clipped to it: GPU-hours are assigned GPUs x that time, allocated
CPU-hours requested CPUs x that time, and used CPU-hours the growth of the samples' `system/cpu_seconds` in it.
Must not: mix these samples into the runs' own metrics (`records.py`), or read the clock for a decision.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from runyard.usagekeys import CPU_SECONDS
from scheduler.group_commit import Effects
from scheduler.store.base import StoreBase, stored_real



@dataclass(frozen=True, slots=True)
class UsagePoint:
    key: str
    attempt: int
    seq: int
    ts: float
    value: float


@dataclass(frozen=True, slots=True)
class UsageSummary:
    key: str
    peak: float
    mean: float
    count: int


@dataclass(slots=True)
class UsageRow:
    """One (workspace, user)'s use in a window."""

    workspace: str
    user: str
    runs: int = 0
    cpu_hours: float = 0.0
    cpu_hours_allocated: float = 0.0
    gpu_hours: float = 0.0


class UsageStore(StoreBase):
    """Appends and reads of runs' system metrics, and the usage report."""

    async def append_usage(self, run_id: str, attempt: int,
                           samples: Sequence[tuple[int, float, Sequence[tuple[str, float]]]]) -> None:
        """Store (seq, ts, [(key, value)]) samples of one attempt; a sample already stored is ignored."""
        rows = [(run_id, key, attempt, seq, ts, value) for seq, ts, points in samples for key, value in points]
        if not rows:
            return

        def work(w: sqlite3.Connection, effects: Effects) -> None:
            w.executemany("INSERT OR IGNORE INTO system_metrics (run_id, key, attempt, seq, ts, value) "
                          "VALUES (?, ?, ?, ?, ?, ?)", rows)
        await self._write(work)

    async def usage_points(self, run_id: str, key: str = "") -> list[UsagePoint]:
        """Every sample of the run (every attempt), by key, then attempt and order; with `key`, only that one."""
        sql = "SELECT key, attempt, seq, ts, value FROM system_metrics WHERE run_id = ?"
        args: list[Any] = [run_id]
        if key:
            sql += " AND key = ?"
            args.append(key)
        rows = await self._all(sql + " ORDER BY key, attempt, seq", args)
        return [UsagePoint(k, attempt, seq, ts, stored_real(value)) for k, attempt, seq, ts, value in rows]

    async def usage_summaries(self, run_id: str) -> list[UsageSummary]:
        """Per key of the run's samples: the highest value, the mean and how many, aggregated in SQL."""
        rows = await self._all("SELECT key, max(value), avg(value), count(*) FROM system_metrics WHERE run_id = ? "
                               "GROUP BY key ORDER BY key", [run_id])
        return [UsageSummary(key, stored_real(peak), stored_real(mean), count) for key, peak, mean, count in rows]

    async def usage_report(self, *, since: float, until: float, now: float,
                           workspace: str | None = None) -> list[UsageRow]:
        """CPU- and GPU-hours and runs per (workspace, user) of the runs that ran in [since, until), every
        workspace's when `workspace` is None. A run counts where it ran on a node (the children of a multi-node
        run do, their parent does not); a live one up to `now`."""
        def work(conn: sqlite3.Connection) -> list[UsageRow]:
            sql = ("SELECT id, workspace, submitter, started_at, COALESCE(ended_at, ?), spec, gpu_indices FROM runs "
                   "WHERE started_at IS NOT NULL AND node_id IS NOT NULL AND state != 'Queued' "
                   "AND started_at < ? AND COALESCE(ended_at, ?) > ?")
            args: list[Any] = [now, until, now, since]
            if workspace is not None:
                sql += " AND workspace = ?"
                args.append(workspace)
            found: dict[tuple[str, str], UsageRow] = {}
            ran: dict[str, UsageRow] = {}
            for run_id, ws, user, started, ended, spec, gpus in conn.execute(sql, args):
                hours = max(0.0, min(ended, until) - max(started, since)) / 3600
                row = found.setdefault((ws, user), UsageRow(ws, user))
                row.runs += 1
                row.cpu_hours_allocated += float(json.loads(spec).get("cpus", 0.0)) * hours
                row.gpu_hours += len(json.loads(gpus)) * hours
                ran[run_id] = row
            ids = list(ran)
            for start in range(0, len(ids), 500):
                part = ids[start:start + 500]
                for run_id, before_until, before_since in conn.execute(
                        "SELECT run_id, max(CASE WHEN ts < ? THEN value END), max(CASE WHEN ts < ? THEN value END) "
                        f"FROM system_metrics WHERE key = ? AND run_id IN ({', '.join('?' * len(part))}) "
                        "GROUP BY run_id, attempt", [until, since, CPU_SECONDS, *part]):
                    ran[run_id].cpu_hours += max(0.0, (before_until or 0.0) - (before_since or 0.0)) / 3600
            return sorted(found.values(), key=lambda r: (r.workspace, r.user))

        return await self._read(work)

