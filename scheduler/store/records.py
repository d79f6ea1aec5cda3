"""What runs record as they go: log lines, metric points, params (and the tags that metrics reports upsert).

Every append is idempotent on its sequence keys (`INSERT OR IGNORE`): an agent resends what the head has not
acknowledged, and a resent record is stored once.
Must not: change a run's state, decide anything, or know about gRPC.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from scheduler.group_commit import Effects
from scheduler.model import LogRow, MetricRow
from scheduler.store.base import StoreBase

# Bits of a log record's `flags`: the line goes on in the next record (it was cut at the record cap); the record
# stands for records the agent dropped (its `data` says how many).
LOG_CONTINUED = 1
LOG_GAP = 2


def _only(args: list[Any], rank: int | None, stream: int | None) -> str:
    """The conditions that keep one rank's or one stream's records, their values appended to `args`."""
    sql = ""
    for column, value in (("rank", rank), ("stream", stream)):
        if value is not None:
            sql += f" AND {column} = ?"
            args.append(value)
    return sql


def _write_metrics(w: sqlite3.Connection, run_id: str, attempt: int,
                   points: Sequence[tuple[int, int, str, int, float, float]], params: Mapping[str, str],
                   tags: Mapping[str, str]) -> None:
    """In a write transaction: append one run's (rank, seq, key, step, value, ts) points (a resent one is ignored),
    upsert its params, merge its tags."""
    w.executemany(
        "INSERT OR IGNORE INTO metrics (run_id, attempt, rank, seq, key, step, value, ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [(run_id, attempt, rank, seq, key, step, value, ts) for rank, seq, key, step, value, ts in points],
    )
    if params:
        w.executemany("INSERT OR REPLACE INTO params (run_id, key, value) VALUES (?, ?, ?)",
                      [(run_id, k, v) for k, v in params.items()])
    if tags:
        w.execute("UPDATE runs SET tags = json_patch(tags, ?) WHERE id = ?", (json.dumps(dict(tags)), run_id))


class RecordStore(StoreBase):
    """Appends and reads of logs, metrics and params; part of `Store`."""

    async def append_logs(self, run_id: str, attempt: int, records: Sequence[tuple[int, int, int, float, int, bytes]]) -> int:
        """Append (rank, stream, seq, ts, flags, data) records; a resent record is ignored. Returns rows added."""
        rows = [(run_id, attempt, *record) for record in records]

        def work(w: sqlite3.Connection, effects: Effects) -> int:
            before = w.total_changes
            w.executemany(
                "INSERT OR IGNORE INTO logs (run_id, attempt, rank, stream, seq, ts, flags, data) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows,
            )
            return w.total_changes - before
        return await self._write(work)

    async def read_logs(
        self, run_id: str | Sequence[str], *, after_id: int = 0, limit: int = 1000, rank: int | None = None,
        stream: int | None = None,
    ) -> list[LogRow]:
        """Log records of one run, or of several (a multi-node run's children) interleaved as they were stored;
        with `rank` or `stream` (the wire's number), only those."""
        ids = [run_id] if isinstance(run_id, str) else list(run_id)
        sql = (f"SELECT id, attempt, rank, stream, seq, ts, flags, data, run_id FROM logs "
               f"WHERE run_id IN ({', '.join('?' * len(ids))}) AND id > ?")
        args: list[Any] = [*ids, after_id]
        sql += _only(args, rank, stream)
        sql += " ORDER BY id LIMIT ?"
        args.append(limit)
        return [LogRow(*r) for r in await self._all(sql, args)]

    async def tail_start(self, run_id: str | Sequence[str], lines: int, rank: int | None = None,
                         stream: int | None = None) -> int:
        """The log row id after which the last `lines` records of the run(s) (of `rank`, `stream`) start."""
        ids = [run_id] if isinstance(run_id, str) else list(run_id)
        sql = f"SELECT id FROM logs WHERE run_id IN ({', '.join('?' * len(ids))})"
        args: list[Any] = [*ids]
        sql += _only(args, rank, stream)
        sql += " ORDER BY id DESC LIMIT 1 OFFSET ?"
        args.append(lines)
        row = await self._one(sql, args)
        return row[0] if row else 0

    async def append_metrics(
        self,
        run_id: str,
        attempt: int,
        points: Sequence[tuple[int, int, str, int, float, float]],
        params: dict[str, str],
        tags: dict[str, str],
    ) -> None:
        """Append (rank, seq, key, step, value, ts) points; a resent point is ignored. Params and tags are upserted."""

        def work(w: sqlite3.Connection, effects: Effects) -> None:
            _write_metrics(w, run_id, attempt, points, params, tags)
        await self._write(work)

    async def read_metrics(self, run_id: str | Sequence[str], key: str = "", rank: int | None = None) -> list[MetricRow]:
        """The points of the run(s), by key, rank, step; with `key` or `rank`, only those."""
        ids = [run_id] if isinstance(run_id, str) else list(run_id)
        sql = f"SELECT key, value, step, ts, rank, run_id FROM metrics WHERE run_id IN ({', '.join('?' * len(ids))})"
        args: list[Any] = list(ids)
        if key:
            sql += " AND key = ?"
            args.append(key)
        sql += _only(args, rank, None)
        sql += " ORDER BY key, rank, step, ts"
        return [MetricRow(k, math.nan if v is None else v, s, t, r, i) for k, v, s, t, r, i in await self._all(sql, args)]

    async def params(self, run_id: str) -> dict[str, str]:
        return dict(await self._all("SELECT key, value FROM params WHERE run_id = ? ORDER BY key", (run_id,)))
