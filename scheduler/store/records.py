"""What runs record as they go: log lines, metric points, params (and the tags that metrics reports upsert).

Every append is idempotent on its sequence keys: an agent resends what the head has not acknowledged, and a
resent record is stored once. Metric points: by the `metric_records` row of the record line that held them; they
are kept in series order (run, key, rank, step, time), so a series is read as one range, as columns, or as at most
N buckets computed in SQL, and summaries are aggregated in SQL. Log records are stored in chunks: one row holds a
run of records of one (rank, stream) with consecutive sequence numbers (`seq` is the first's, `lines` how many,
`data` their bytes one after the other, `meta` each one's length, flags and time, packed; NULL for a row of one
record), so that ingesting a batch of 8,000 lines writes a few rows, not 8,000. Chunks of one key never overlap:
an append stores only the sequence numbers no chunk holds yet. A record's id (`LogRow.id`, the cursor of
`read_logs` and `tail_start`) is its row's id times 2^16 plus its place in the row, so ids follow the order
records were stored in.
Must not: change a run's state, decide anything, or know about gRPC.
"""

from __future__ import annotations

import json
import math
import sqlite3
from array import array
from operator import itemgetter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any

from scheduler.group_commit import Effects
from scheduler.model import LogRow, MetricRow
from scheduler.store.base import StoreBase, stored_real

# Bits of a log record's `flags`: the line goes on in the next record (it was cut at the record cap); the record
# stands for records the agent dropped (its `data` says how many).
LOG_CONTINUED = 1
LOG_GAP = 2

CHUNK_BITS = 16
ID_MASK = (1 << CHUNK_BITS) - 1
MAX_CHUNK = 1024                        # records in one row: a read of 1,000 records fetches a few rows, not MBs
_TAIL_ROWS = 64                         # (id, lines) fetched at a time when looking for a tail's start

LogTuple = tuple[int, int, int, float, int, bytes]


@dataclass(frozen=True, slots=True)
class MetricSummary:
    run_id: str
    key: str
    rank: int
    count: int
    min: float
    max: float
    last: float
    last_step: int


@dataclass(frozen=True, slots=True)
class MetricSeries:
    """One series as columns. Downsampled (`first_steps` set): one entry per bucket, `steps`, `values` and `ts`
    its last point's, `counts`, `mins` and `maxs` over the bucket."""
    run_id: str
    key: str
    rank: int
    steps: Sequence[int]
    values: Sequence[float]
    ts: Sequence[float]
    total: int                  # points in the whole series
    first_steps: Sequence[int] = ()
    counts: Sequence[int] = ()
    mins: Sequence[float] = ()
    maxs: Sequence[float] = ()

    @property
    def downsampled(self) -> bool:
        return bool(self.first_steps)

    def summary(self) -> MetricSummary:
        """The series' summary as `metric_summaries` computes it in SQL, from the columns read (a downsampled
        series' buckets hold its min, max and count)."""
        lows = self.mins if self.downsampled else self.values
        highs = self.maxs if self.downsampled else self.values
        return MetricSummary(
            run_id=self.run_id, key=self.key, rank=self.rank, count=self.total,
            min=min((v for v in lows if v == v), default=math.nan),     # v == v: not NaN
            max=max((v for v in highs if v == v), default=math.nan),
            last=self.values[-1] if self.values else math.nan, last_step=self.steps[-1] if self.steps else 0,
        )


def _columns(rows: list[Any], width: int) -> list[list[Any]]:
    """Rows as columns (`map(itemgetter)`: several times faster than `zip(*rows)` for 100k rows)."""
    return [list(map(itemgetter(i), rows)) for i in range(width)]


def _reals(values: Sequence[float | None]) -> Sequence[float]:
    if None not in values:
        return values  # type: ignore[return-value]
    return [math.nan if v is None else v for v in values]


def _only(args: list[Any], rank: int | None, stream: int | None) -> str:
    """The conditions that keep one rank's or one stream's records, their values appended to `args`."""
    sql = ""
    for column, value in (("rank", rank), ("stream", stream)):
        if value is not None:
            sql += f" AND {column} = ?"
            args.append(value)
    return sql


# One record line's metric points as columns: (rank, seq, ts, keys, steps, values); every point has the line's ts.
MetricLine = tuple[int, int, float, Sequence[str], Sequence[int], Sequence[float]]


def _write_metrics(w: sqlite3.Connection, run_id: str, attempt: int, lines: Sequence[MetricLine],
                   params: Mapping[str, str], tags: Mapping[str, str]) -> None:
    """In a write transaction: append the points of one run's record lines (those of a line already stored, a
    resent one, are ignored), upsert its params, merge its tags."""
    if lines:
        _insert_points(w, run_id, attempt, lines)
    if params:
        w.executemany("INSERT OR REPLACE INTO params (run_id, key, value) VALUES (?, ?, ?)",
                      [(run_id, k, v) for k, v in params.items()])
    if tags:
        w.execute("UPDATE runs SET tags = json_patch(tags, ?) WHERE id = ?", (json.dumps(dict(tags)), run_id))


def _insert_points(w: sqlite3.Connection, run_id: str, attempt: int, lines: Sequence[MetricLine]) -> None:
    """The points of the record lines (rank, seq) not stored yet, and a `metric_records` row for each such line:
    one range read per rank tells which lines of the batch were stored before (a resent batch: all of them).
    Each point's row names its series by id (`metric_series`), looked up once per series of the batch."""
    by_rank: dict[int, set[int]] = {}
    for line in lines:
        by_rank.setdefault(line[0], set()).add(line[1])
    stored: set[tuple[int, int]] = set()
    for rank, seqs in by_rank.items():
        stored.update((rank, seq) for (seq,) in w.execute(
            "SELECT seq FROM metric_records WHERE run_id = ? AND attempt = ? AND rank = ? AND seq BETWEEN ? AND ?",
            (run_id, attempt, rank, min(seqs), max(seqs))))
    new = [line for line in lines if (line[0], line[1]) not in stored] if stored else lines
    w.executemany("INSERT OR IGNORE INTO metric_records (run_id, attempt, rank, seq) VALUES (?, ?, ?, ?)",
                  [(run_id, attempt, line[0], line[1]) for line in new])
    ids: dict[int, dict[str, int]] = {}
    rows: list[tuple[int, int, float, int, int, float]] = []
    for rank, seq, ts, keys, steps, values in new:
        series = ids.get(rank)
        if series is None:
            series = ids[rank] = {}
        for key in set(keys).difference(series):
            series[key] = _series_id(w, run_id, key, rank)
        rows.extend(zip(map(series.__getitem__, keys), steps, repeat(ts), repeat(attempt), repeat(seq), values))
    # OR IGNORE: a line holding one key twice at one step keeps the first (at two steps, both)
    w.executemany("INSERT OR IGNORE INTO metric_points (series, step, ts, attempt, seq, value) VALUES (?, ?, ?, ?, ?, ?)",
                  rows)


def _series_id(w: sqlite3.Connection, run_id: str, key: str, rank: int) -> int:
    row = w.execute("SELECT id FROM metric_series WHERE run_id = ? AND key = ? AND rank = ?",
                    (run_id, key, rank)).fetchone()
    if row is not None:
        return int(row[0])
    cursor = w.execute("INSERT INTO metric_series (run_id, key, rank) VALUES (?, ?, ?)", (run_id, key, rank))
    assert cursor.lastrowid is not None
    return cursor.lastrowid


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


@dataclass(frozen=True, slots=True)
class LogChunk:
    """Consecutive records of one run's (attempt, rank, stream), as stored: `data` is their bytes one after the
    other, `lengths`, `flags` (a byte each) and `ts` say where each one ends and what it is. `last_id` is the
    last record's `LogRow.id`, the cursor to read on from."""

    last_id: int
    run_id: str
    attempt: int
    rank: int
    stream: int
    first_seq: int
    data: bytes
    lengths: Sequence[int]
    flags: bytes
    ts: Sequence[float]


def _slice(row: tuple[Any, ...], skip: int, take: int) -> LogChunk:
    """Records skip..skip+take of a stored row, without an object per record."""
    rowid, attempt, rank, stream, seq, ts, flags, run_id, lines, meta, data = row
    last_id = (rowid << CHUNK_BITS) | (skip + take - 1)
    if lines == 1:
        return LogChunk(last_id, run_id, attempt, rank, stream, seq, data, (len(data),), bytes((flags,)), (ts,))
    lengths = array("I")
    lengths.frombytes(meta[: 4 * lines])
    times = array("d")
    times.frombytes(meta[5 * lines : 13 * lines])
    start = sum(lengths[:skip])
    end = start + sum(lengths[skip : skip + take])
    return LogChunk(last_id, run_id, attempt, rank, stream, seq + skip, data[start:end], lengths[skip : skip + take],
                    meta[4 * lines + skip : 4 * lines + skip + take], times[skip : skip + take])


def _expand(row: tuple[Any, ...], skip: int, take: int) -> list[LogRow]:
    """Records skip..skip+take of a stored row, as LogRows."""
    chunk = _slice(row, skip, take)
    first_id = chunk.last_id - take + 1
    found, offset = [], 0
    for index, (length, flags, ts) in enumerate(zip(chunk.lengths, chunk.flags, chunk.ts)):
        found.append(LogRow(first_id + index, chunk.attempt, chunk.rank, chunk.stream, chunk.first_seq + index, ts,
                            flags, chunk.data[offset:offset + length], chunk.run_id))
        offset += length
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
        found: list[LogRow] = []
        for row, skip, take in await self._log_rows(run_id, after_id, limit, rank, stream):
            found.extend(_expand(row, skip, take))
        return found

    async def read_log_chunks(
        self, run_id: str | Sequence[str], *, after_id: int = 0, limit: int = 1000, rank: int | None = None,
        stream: int | None = None,
    ) -> list[LogChunk]:
        """The records `read_logs` returns, as the stored runs of consecutive records they are (no object per
        record): what `logs -f` sends."""
        return [_slice(row, skip, take) for row, skip, take in await self._log_rows(run_id, after_id, limit, rank,
                                                                                     stream)]

    async def _log_rows(self, run_id: str | Sequence[str], after_id: int, limit: int, rank: int | None,
                        stream: int | None) -> list[tuple[tuple[Any, ...], int, int]]:
        """(stored row, records to skip at its start, records to take) for the first `limit` records after
        `after_id`."""
        ids = [run_id] if isinstance(run_id, str) else list(run_id)
        where = f"WHERE run_id IN ({', '.join('?' * len(ids))}) AND id >= ?"
        filters: list[Any] = []
        where += _only(filters, rank, stream)
        found: list[tuple[tuple[Any, ...], int, int]] = []
        count = 0
        start, skip = (after_id >> CHUNK_BITS, (after_id & ID_MASK) + 1) if after_id > 0 else (0, 0)
        while count < limit:
            # First the rows' sizes (no blob is read), then only the rows that hold what is wanted.
            requested = limit - count           # rows hold one record or more
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
                first = skip if row[0] == start else 0
                take = min(row[8] - first, limit - count)
                if take > 0:
                    found.append((row, first, take))
                    count += take
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
        """Append (rank, seq, key, step, value, ts) points, a record line per (rank, seq); a resent line is
        ignored. Params and tags are upserted."""
        grouped: dict[tuple[int, int], tuple[float, list[str], list[int], list[float]]] = {}
        for rank, seq, key, step, value, ts in points:
            _, keys, steps, values = grouped.setdefault((rank, seq), (ts, [], [], []))
            keys.append(key)
            steps.append(step)
            values.append(value)
        lines = [(rank, seq, *columns) for (rank, seq), columns in grouped.items()]

        def work(w: sqlite3.Connection, effects: Effects) -> None:
            _write_metrics(w, run_id, attempt, lines, params, tags)
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

    async def metric_summaries(
        self, run_id: str | Sequence[str], key: str = "", rank: int | None = None,
    ) -> list[MetricSummary]:
        """Per series (run, key, rank): count, min and max of its values that are not NaN (NaN when none is), and its
        last point's value and step (the last by step, then time). Aggregated in SQL over the table's series order:
        no point is read into Python."""
        ids = [run_id] if isinstance(run_id, str) else list(run_id)
        sql = (f"SELECT run_id, key, rank, count(*), min(value), max(value), max(step) FROM metrics "
               f"WHERE run_id IN ({', '.join('?' * len(ids))})")
        args: list[Any] = list(ids)
        if key:
            sql += " AND key = ?"
            args.append(key)
        sql += _only(args, rank, None)
        sql = (f"WITH g(run_id, key, rank, n, lo, hi, last_step) AS ({sql} GROUP BY run_id, key, rank) "
               f"SELECT g.*, (SELECT value FROM metrics m WHERE m.run_id = g.run_id AND m.key = g.key "
               f"AND m.rank = g.rank AND m.step = g.last_step ORDER BY m.ts DESC LIMIT 1) "
               f"FROM g ORDER BY key, rank, run_id")
        return [MetricSummary(run_id=i, key=k, rank=r, count=n, min=stored_real(lo), max=stored_real(hi),
                              last=stored_real(last), last_step=last_step)
                for i, k, r, n, lo, hi, last_step, last in await self._all(sql, args)]

    async def metric_series_names(
        self, run_id: str | Sequence[str], key: str = "", rank: int | None = None,
    ) -> list[tuple[str, str, int]]:
        """The series (run, key, rank) of the run(s), ordered by key, rank, run; with `key` or `rank`, only those.
        One index seek per series found (the table is in series order): no point is scanned."""
        ids = [run_id] if isinstance(run_id, str) else list(run_id)

        def work(conn: sqlite3.Connection) -> list[tuple[str, str, int]]:
            found = []
            for one in ids:
                keys = [key] if key else []
                if not key:
                    after: str | None = ""
                    while (row := conn.execute("SELECT key FROM metrics WHERE run_id = ? AND key > ? ORDER BY key "
                                               "LIMIT 1", (one, after)).fetchone()) is not None:
                        after = row[0]
                        keys.append(row[0])
                for name in keys:
                    if rank is not None:
                        if conn.execute("SELECT 1 FROM metrics WHERE run_id = ? AND key = ? AND rank = ? LIMIT 1",
                                        (one, name, rank)).fetchone():
                            found.append((one, name, rank))
                        continue
                    below = -(1 << 63)
                    while (row := conn.execute("SELECT rank FROM metrics WHERE run_id = ? AND key = ? AND rank > ? "
                                               "ORDER BY rank LIMIT 1", (one, name, below)).fetchone()) is not None:
                        below = row[0]
                        found.append((one, name, below))
            return sorted(found, key=lambda s: (s[1], s[2], s[0]))
        return await self._read(work)

    async def metric_series(
        self, run_id: str, key: str, rank: int, *, max_points: int = 0,
    ) -> MetricSeries:
        """One series (run, key, rank) in step order (then time), as columns. With `max_points` and more points
        than that, at most `max_points` buckets of equal step width, each its first and last step, its count, the
        min and max of its values that are not NaN (NaN when none is) and its last point's value and time;
        computed in SQL."""
        where = "run_id = ? AND key = ? AND rank = ?"
        series = (run_id, key, rank)

        def work(conn: sqlite3.Connection) -> MetricSeries:
            if max_points > 0 and conn.execute(
                    f"SELECT count(*) FROM (SELECT 1 FROM metrics WHERE {where} LIMIT ?)",
                    (*series, max_points + 1)).fetchone()[0] > max_points:
                lo = conn.execute(f"SELECT step FROM metrics WHERE {where} ORDER BY step LIMIT 1", series).fetchone()[0]
                hi = conn.execute(f"SELECT step FROM metrics WHERE {where} ORDER BY step DESC LIMIT 1",
                                  series).fetchone()[0]
                width = (hi - lo) // max_points + 1    # steps per bucket: (hi - lo) // width < max_points
                rows = conn.execute(
                    f"WITH g(bucket, first, last, n, lo, hi) AS (SELECT (step - ?) / ? AS bucket, min(step), "
                    f"max(step), count(*), min(value), max(value) FROM metrics WHERE {where} GROUP BY bucket) "
                    f"SELECT first, last, n, lo, hi, "
                    f"(SELECT value FROM metrics WHERE {where} AND step = g.last ORDER BY ts DESC LIMIT 1), "
                    f"(SELECT ts FROM metrics WHERE {where} AND step = g.last ORDER BY ts DESC LIMIT 1) "
                    f"FROM g ORDER BY bucket",
                    (lo, width, *series, *series, *series),
                ).fetchall()
                first, last, counts, mins, maxs, values, ts = _columns(rows, 7)
                return MetricSeries(run_id, key, rank, steps=last, values=_reals(values), ts=ts, total=sum(counts),
                                    first_steps=first, counts=counts, mins=_reals(mins), maxs=_reals(maxs))
            rows = conn.execute(f"SELECT step, value, ts FROM metrics WHERE {where} ORDER BY step, ts",
                                series).fetchall()
            steps, values, ts = _columns(rows, 3)
            return MetricSeries(run_id, key, rank, steps=steps, values=_reals(values), ts=ts, total=len(steps))
        return await self._read(work)

    async def params(self, run_id: str) -> dict[str, str]:
        return dict(await self._all("SELECT key, value FROM params WHERE run_id = ? ORDER BY key", (run_id,)))
