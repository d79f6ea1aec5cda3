"""What runs record as they go: log lines, metric points, params (and the tags that metrics reports upsert).

Every append is idempotent on its sequence keys: an agent resends what the head has not acknowledged, and a
resent record is stored once. Metrics use `INSERT OR IGNORE` on their key. Log records are stored in chunks: one
row holds a run of records of one (rank, stream) with consecutive sequence numbers (`seq` is the first's, `lines`
how many, `data` their bytes one after the other, `meta` each one's length, flags and time, packed; NULL for a
row of one record), so that ingesting a batch of 8,000 lines writes a few rows, not 8,000. Chunks of one key
never overlap: an append stores only the sequence numbers no chunk holds yet. A record's id (`LogRow.id`, the
cursor of `read_logs` and `tail_start`) is its row's id times 2^16 plus its place in the row, so ids follow the
order records were stored in, as before.
Must not: change a run's state, decide anything, or know about gRPC.
"""

from __future__ import annotations

import json
import math
import sqlite3
from array import array
from collections.abc import Sequence
from typing import Any

from scheduler.group_commit import Effects
from scheduler.model import LogRow, MetricRow
from scheduler.store.base import StoreBase

# Bits of a log record's `flags`: the line goes on in the next record (it was cut at the record cap); the record
# stands for records the agent dropped (its `data` says how many).
LOG_CONTINUED = 1
LOG_GAP = 2

CHUNK_BITS = 16
ID_MASK = (1 << CHUNK_BITS) - 1
MAX_CHUNK = 1024                        # records in one row: a read of 1,000 records fetches a few rows, not MBs
_TAIL_ROWS = 64                         # (id, lines) fetched at a time when looking for a tail's start

LogTuple = tuple[int, int, int, float, int, bytes]


def _only(args: list[Any], rank: int | None, stream: int | None) -> str:
    """The conditions that keep one rank's or one stream's records, their values appended to `args`."""
    sql = ""
    for column, value in (("rank", rank), ("stream", stream)):
        if value is not None:
            sql += f" AND {column} = ?"
            args.append(value)
    return sql


def _chunks(records: Sequence[LogTuple]) -> list[list[LogTuple]]:
    """Runs of records of one (rank, stream) with consecutive sequence numbers, at most MAX_CHUNK each."""
    chunks: list[list[LogTuple]] = []
    current: list[LogTuple] = []
    last: LogTuple | None = None
    for record in records:
        if (last is None or record[0] != last[0] or record[1] != last[1] or record[2] != last[2] + 1
                or len(current) >= MAX_CHUNK):
            current = [record]
            chunks.append(current)
        else:
            current.append(record)
        last = record
    return chunks


def _row(run_id: str, attempt: int, chunk: Sequence[LogTuple]) -> tuple[Any, ...]:
    rank, stream, seq, ts, flags, data = chunk[0]
    if len(chunk) == 1:
        return run_id, attempt, rank, stream, seq, ts, flags, 1, None, data
    lengths = array("I", [len(r[5]) for r in chunk])
    meta = lengths.tobytes() + bytes(r[4] for r in chunk) + array("d", [r[3] for r in chunk]).tobytes()
    return run_id, attempt, rank, stream, seq, ts, flags, len(chunk), meta, b"".join([r[5] for r in chunk])


def _unstored(w: sqlite3.Connection, run_id: str, attempt: int, chunk: list[LogTuple]) -> list[list[LogTuple]]:
    """The parts of `chunk` whose sequence numbers no stored chunk of the same key holds."""
    rank, stream, first = chunk[0][0], chunk[0][1], chunk[0][2]
    last = first + len(chunk) - 1
    held: list[tuple[int, int]] = []
    cursor = w.execute("SELECT seq, lines FROM logs WHERE run_id = ? AND attempt = ? AND rank = ? AND stream = ? "
                       "AND seq <= ? ORDER BY seq DESC", (run_id, attempt, rank, stream, last))
    for seq, lines in cursor:
        if seq + lines - 1 < first:
            break               # chunks do not overlap: every earlier one ends before this one too
        held.append((seq, seq + lines - 1))
    cursor.close()
    if not held:
        return [chunk]
    parts: list[list[LogTuple]] = []
    part: list[LogTuple] = []
    for record in chunk:
        if any(lo <= record[2] <= hi for lo, hi in held):
            if part:
                parts.append(part)
                part = []
        else:
            part.append(record)
    if part:
        parts.append(part)
    return parts


def _expand(row: tuple[Any, ...], skip: int, want: int) -> list[LogRow]:
    """Records `skip`.. of a stored row (at most `want`), as LogRows."""
    rowid, attempt, rank, stream, seq, ts, flags, run_id, lines, meta, data = row
    base = rowid << CHUNK_BITS
    if lines == 1:
        return [LogRow(base, attempt, rank, stream, seq, ts, flags, data, run_id)] if skip == 0 and want > 0 else []
    lengths = array("I")
    lengths.frombytes(meta[: 4 * lines])
    flag_bytes = meta[4 * lines : 5 * lines]
    times = array("d")
    times.frombytes(meta[5 * lines : 13 * lines])
    offset = sum(lengths[:skip])
    found = []
    for index in range(skip, min(lines, skip + want)):
        end = offset + lengths[index]
        found.append(LogRow(base | index, attempt, rank, stream, seq + index, times[index], flag_bytes[index],
                            data[offset:end], run_id))
        offset = end
    return found


class RecordStore(StoreBase):
    """Appends and reads of logs, metrics and params; part of `Store`."""

    async def append_logs(self, run_id: str, attempt: int, records: Sequence[LogTuple]) -> int:
        """Append (rank, stream, seq, ts, flags, data) records; a resent record is ignored. Returns records added."""
        chunks = _chunks(records)

        def work(w: sqlite3.Connection, effects: Effects) -> int:
            rows = [_row(run_id, attempt, part) for chunk in chunks for part in _unstored(w, run_id, attempt, chunk)]
            w.executemany(
                "INSERT INTO logs (run_id, attempt, rank, stream, seq, ts, flags, lines, meta, data) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows,
            )
            return sum(row[7] for row in rows)
        return await self._write(work)

    async def read_logs(
        self, run_id: str | Sequence[str], *, after_id: int = 0, limit: int = 1000, rank: int | None = None,
        stream: int | None = None,
    ) -> list[LogRow]:
        """Log records of one run, or of several (a multi-node run's children) interleaved as they were stored;
        with `rank` or `stream` (the wire's number), only those."""
        ids = [run_id] if isinstance(run_id, str) else list(run_id)
        where = f"WHERE run_id IN ({', '.join('?' * len(ids))}) AND id >= ?"
        filters: list[Any] = []
        where += _only(filters, rank, stream)
        found: list[LogRow] = []
        start, skip = (after_id >> CHUNK_BITS, (after_id & ID_MASK) + 1) if after_id > 0 else (0, 0)
        while len(found) < limit:
            # First the rows' sizes (no blob is read), then only the rows that hold what is wanted.
            requested = limit - len(found)      # rows hold one record or more
            heads = await self._all(f"SELECT id, lines FROM logs {where} ORDER BY id LIMIT ?",
                                    [*ids, start, *filters, requested])
            if not heads:
                break
            covered, last = 0, heads[0][0]
            for rowid, lines in heads:
                covered += max(0, lines - (skip if rowid == start else 0))
                last = rowid
                if covered >= requested:
                    break
            rows = await self._all(
                f"SELECT id, attempt, rank, stream, seq, ts, flags, run_id, lines, meta, data FROM logs {where} "
                f"AND id <= ? ORDER BY id", [*ids, start, *filters, last])
            for row in rows:
                found.extend(_expand(row, skip if row[0] == start else 0, limit - len(found)))
            if last == heads[-1][0] and len(heads) < requested:
                break       # every row there is was read
            start, skip = last + 1, 0
        return found

    async def tail_start(self, run_id: str | Sequence[str], lines: int, rank: int | None = None,
                         stream: int | None = None) -> int:
        """The log record id after which the last `lines` records of the run(s) (of `rank`, `stream`) start."""
        ids = [run_id] if isinstance(run_id, str) else list(run_id)
        need = lines
        before: int | None = None
        while True:
            sql = f"SELECT id, lines FROM logs WHERE run_id IN ({', '.join('?' * len(ids))})"
            args: list[Any] = [*ids]
            if before is not None:
                sql += " AND id < ?"
                args.append(before)
            sql += _only(args, rank, stream)
            sql += " ORDER BY id DESC LIMIT ?"
            args.append(_TAIL_ROWS)
            rows = await self._all(sql, args)
            for rowid, count in rows:
                if count >= need:
                    return ((rowid << CHUNK_BITS) | (count - need)) - 1
                need -= count
            if len(rows) < _TAIL_ROWS:
                return 0
            before = rows[-1][0]

    async def append_metrics(
        self,
        run_id: str,
        attempt: int,
        points: Sequence[tuple[int, int, str, int, float, float]],
        params: dict[str, str],
        tags: dict[str, str],
    ) -> None:
        """Append (rank, seq, key, step, value, ts) points; a resent point is ignored. Params and tags are upserted."""
        rows = [(run_id, attempt, rank, seq, key, step, value, ts) for rank, seq, key, step, value, ts in points]

        def work(w: sqlite3.Connection, effects: Effects) -> None:
            w.executemany(
                "INSERT OR IGNORE INTO metrics (run_id, attempt, rank, seq, key, step, value, ts) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            if params:
                w.executemany(
                    "INSERT OR REPLACE INTO params (run_id, key, value) VALUES (?, ?, ?)",
                    [(run_id, k, v) for k, v in params.items()],
                )
            if tags:
                w.execute("UPDATE runs SET tags = json_patch(tags, ?) WHERE id = ?", (json.dumps(tags), run_id))
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
