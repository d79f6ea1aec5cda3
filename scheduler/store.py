"""The head's state store: every read and write of the SQLite database.

One connection writes (serialised by a lock, one transaction at a time, `BEGIN IMMEDIATE`); a second one reads.
Every run state change goes through `transition()`: the state machine's table check, a guarded
`UPDATE ... WHERE state = <the state just read>`, and an appended run event, in one transaction.
Store errors are translated here: a full disk becomes `ResourceExhausted`.
Must not: decide anything (that is lifecycle/placement) or know about gRPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from runyard.ids import new_run_id
from scheduler import db
from scheduler.errors import NotFound, ResourceExhausted
from scheduler.lifecycle import ACTIVE, DesiredState, InvalidTransition, RunState, Trigger, next_state
from scheduler.model import (
    Capacity,
    LogRow,
    MetricRow,
    NewRun,
    NodeRecord,
    Principal,
    RunEventRecord,
    RunRecord,
    RunSpec,
)

_RUN_COLUMNS = (
    "id, workspace, experiment, parent_id, display_name, state, desired_state, reason, exit_code, pending_reason, "
    "attempt, node_id, gpu_indices, spec, snapshot_sha256, outputs_sha256, tags, properties, created_at, "
    "started_at, ended_at, priority"
)
_NODE_COLUMNS = "id, name, cluster, labels, capacity, state, last_seen, schedule"
_SETTABLE = frozenset(
    {"reason", "exit_code", "pending_reason", "node_id", "gpu_indices", "outputs_sha256", "started_at", "ended_at"}
)
LOG_CONTINUED = 1
LOG_GAP = 2


def _run(row: Sequence[Any]) -> RunRecord:
    return RunRecord(
        id=row[0], workspace=row[1], experiment=row[2], parent_id=row[3] or "", display_name=row[4],
        state=RunState(row[5]), desired_state=DesiredState(row[6]), reason=row[7], exit_code=row[8],
        pending_reason=row[9], attempt=row[10], node_id=row[11] or "", gpu_indices=tuple(json.loads(row[12])),
        spec=RunSpec.from_json(row[13]), snapshot_sha256=row[14], outputs_sha256=row[15],
        tags=json.loads(row[16]), properties=json.loads(row[17]), created_at=row[18], started_at=row[19],
        ended_at=row[20], priority=row[21],
    )


def _node(row: Sequence[Any]) -> NodeRecord:
    return NodeRecord(
        id=row[0], name=row[1], cluster=row[2], labels=json.loads(row[3]), capacity=Capacity.from_json(row[4]),
        state=row[5], last_seen=row[6], schedule=row[7],
    )


def default_name(spec: RunSpec) -> str:
    """A display name from the command, for runs submitted without one: `python train.py --lr 0.1`."""
    argv = spec.argv[2:] if spec.argv[:2] == ("/bin/sh", "-c") else spec.argv
    text = " ".join(argv)
    return text if len(text) <= 48 else text[:47] + "…"


class Store:
    """Reads and writes of the head's database. Create with `await Store.open(data_dir)`."""

    def __init__(
        self, writer: aiosqlite.Connection, reader: aiosqlite.Connection, cluster_id: str,
        clock: Callable[[], float],
    ) -> None:
        self._w = writer
        self._r = reader
        self._lock = asyncio.Lock()
        self.cluster_id = cluster_id
        self.clock = clock

    @classmethod
    async def open(
        cls, data_dir: Path, *, synchronous: str = "FULL", clock: Callable[[], float] = time.time
    ) -> Store:
        writer, cluster_id = await db.open_database(data_dir, synchronous=synchronous)
        reader = await db.open_reader(data_dir)
        return cls(writer, reader, cluster_id, clock)

    async def close(self) -> None:
        await self._r.close()
        await self._w.close()

    @contextlib.asynccontextmanager
    async def _tx(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            try:
                await self._w.execute("BEGIN IMMEDIATE")
                try:
                    yield self._w
                except BaseException:
                    await self._w.execute("ROLLBACK")
                    raise
                await self._w.execute("COMMIT")
            except sqlite3.OperationalError as err:
                if err.sqlite_errorcode == sqlite3.SQLITE_FULL:
                    with contextlib.suppress(sqlite3.Error):
                        await self._w.execute("ROLLBACK")
                    raise ResourceExhausted("the head's disk is full; free space on the head and retry") from None
                raise

    async def _one(self, sql: str, args: Sequence[Any] = ()) -> Any:
        async with self._r.execute(sql, args) as cur:
            return await cur.fetchone()

    async def _all(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        async with self._r.execute(sql, args) as cur:
            return list(await cur.fetchall())

    # --- credentials -----------------------------------------------------------------------------------------

    async def ensure_workspace(self, name: str) -> None:
        async with self._tx() as w:
            await w.execute("INSERT OR IGNORE INTO workspaces (name, created_at) VALUES (?, ?)", (name, self.clock()))

    async def add_token(self, token_sha: str, workspace: str, role: str) -> None:
        async with self._tx() as w:
            await w.execute("INSERT OR IGNORE INTO workspaces (name, created_at) VALUES (?, ?)", (workspace, self.clock()))
            await w.execute(
                "INSERT OR IGNORE INTO tokens (sha256, workspace, role, created_at) VALUES (?, ?, ?, ?)",
                (token_sha, workspace, role, self.clock()),
            )

    async def principals(self) -> dict[str, Principal]:
        """Every credential by the sha256 of its token: users' and nodes'."""
        found = {sha: Principal(ws, role) for sha, ws, role in await self._all("SELECT sha256, workspace, role FROM tokens")}
        for node_id, sha in await self._all("SELECT id, token_sha FROM nodes"):
            found[sha] = Principal("", "node", node_id)
        return found

    # --- runs ------------------------------------------------------------------------------------------------

    async def create_run(self, new: NewRun) -> tuple[str, bool]:
        """Insert a Queued run with its first event; returns (run id, existed) honouring the idempotency key."""
        now = self.clock()
        run_id = new_run_id(now)
        async with self._tx() as w:
            if new.idempotency_key:
                async with w.execute(
                    "SELECT id FROM runs WHERE workspace = ? AND idempotency_key = ?", (new.workspace, new.idempotency_key)
                ) as cur:
                    row = await cur.fetchone()
                if row is not None:
                    return row[0], True
            await w.execute(
                "INSERT OR IGNORE INTO experiments (workspace, name, created_at) VALUES (?, ?, ?)",
                (new.workspace, new.experiment, now),
            )
            await w.execute(
                "INSERT INTO runs (id, workspace, experiment, parent_id, display_name, state, spec, snapshot_sha256, "
                "tags, properties, idempotency_key, created_at, pending_reason, priority) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id, new.workspace, new.experiment, new.parent_id or None, new.display_name or default_name(new.spec),
                    RunState.QUEUED, new.spec.to_json(), new.snapshot_sha256, json.dumps(new.tags),
                    json.dumps(new.properties), new.idempotency_key or None, now, "waiting for the scheduler",
                    new.priority,
                ),
            )
            await w.execute(
                "INSERT INTO run_events (run_id, at, from_state, to_state, event) VALUES (?, ?, '', ?, ?)",
                (run_id, now, RunState.QUEUED, Trigger.SUBMIT),
            )
        return run_id, False

    async def get_run(self, run_id: str, workspace: str | None = None) -> RunRecord:
        """The run, or NotFound; with `workspace`, another workspace's run is NotFound too."""
        row = await self._one(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,))
        if row is None or (workspace is not None and row[1] != workspace):
            raise NotFound(f"no run {run_id!r}")
        return _run(row)

    async def list_runs(
        self, workspace: str, *, experiment: str = "", state: str = "", limit: int = 50
    ) -> list[RunRecord]:
        sql = f"SELECT {_RUN_COLUMNS} FROM runs WHERE workspace = ?"
        args: list[Any] = [workspace]
        if experiment:
            sql += " AND experiment = ?"
            args.append(experiment)
        if state:
            sql += " AND state = ?"
            args.append(state)
        sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
        args.append(limit)
        return [_run(r) for r in await self._all(sql, args)]

    async def runs_in(self, states: Iterable[RunState]) -> list[RunRecord]:
        """Runs in any of `states`, oldest first (FIFO order for the queue)."""
        wanted = sorted(states)
        marks = ", ".join("?" * len(wanted))
        sql = f"SELECT {_RUN_COLUMNS} FROM runs WHERE state IN ({marks}) ORDER BY created_at, id"
        return [_run(r) for r in await self._all(sql, wanted)]

    async def queue(self, compute: str = "") -> list[RunRecord]:
        """Queued runs in the order the scheduler considers them: higher priority first, FIFO within one."""
        sql = f"SELECT {_RUN_COLUMNS} FROM runs WHERE state = 'Queued'"
        args: list[Any] = []
        if compute:
            sql += " AND json_extract(spec, '$.compute') = ?"
            args.append(compute)
        sql += " ORDER BY priority DESC, created_at, id"
        return [_run(r) for r in await self._all(sql, args)]

    async def queued_demand(self) -> list[tuple[str, str, float, int, int]]:
        """(run id, compute, cpus, memory bytes, gpus) of every queued run, in queue order.

        Reads only what placement needs, decoded by SQLite, so a scheduling pass over a long queue stays cheap.
        """
        return await self._all(
            "SELECT id, json_extract(spec, '$.compute'), json_extract(spec, '$.cpus'), "
            "json_extract(spec, '$.memory_bytes'), json_extract(spec, '$.gpus') FROM runs WHERE state = 'Queued' "
            "ORDER BY priority DESC, created_at, id"
        )

    async def allocations(self) -> list[tuple[str, float, int, list[int]]]:
        """(node id, cpus, memory bytes, GPU indices) held by every live attempt."""
        marks = ", ".join("?" * len(ACTIVE))
        rows = await self._all(
            "SELECT node_id, json_extract(spec, '$.cpus'), json_extract(spec, '$.memory_bytes'), gpu_indices "
            f"FROM runs WHERE state IN ({marks})", sorted(ACTIVE),
        )
        return [(node, cpus, memory, json.loads(gpus)) for node, cpus, memory, gpus in rows]

    async def run_events(self, run_id: str) -> list[RunEventRecord]:
        rows = await self._all(
            "SELECT at, from_state, to_state, event, detail FROM run_events WHERE run_id = ? ORDER BY id", (run_id,)
        )
        return [RunEventRecord(*r) for r in rows]

    async def transition(
        self, run_id: str, trigger: Trigger, *, attempt: int | None = None, detail: str = "", **sets: Any
    ) -> RunRecord:
        """Apply `trigger` to the run in one transaction: table check, guarded update, appended event.

        With `attempt`, the run's current attempt must be that one (fencing of agent reports).
        Raises InvalidTransition (also for a stale attempt) or NotFound.
        """
        unknown = set(sets) - _SETTABLE
        if unknown:
            raise ValueError(f"cannot set {sorted(unknown)} in a transition")
        async with self._tx() as w:
            async with w.execute("SELECT state, attempt FROM runs WHERE id = ?", (run_id,)) as cur:
                row = await cur.fetchone()
            if row is None:
                raise NotFound(f"no run {run_id!r}")
            state, current_attempt = RunState(row[0]), row[1]
            if attempt is not None and attempt != current_attempt:
                raise InvalidTransition(run_id, f"{state} (attempt {current_attempt}, not {attempt})", trigger)
            target = next_state(run_id, state, trigger)
            values = dict(sets)
            if trigger is Trigger.ASSIGN:
                values["attempt"] = current_attempt + 1
            if "gpu_indices" in values:
                values["gpu_indices"] = json.dumps(list(values["gpu_indices"]))
            assignments = ", ".join(f"{column} = ?" for column in values)
            cur = await w.execute(
                f"UPDATE runs SET state = ?{', ' if values else ''}{assignments} WHERE id = ? AND state = ?",
                (target, *values.values(), run_id, state),
            )
            if cur.rowcount != 1:
                raise InvalidTransition(run_id, state, trigger)
            await w.execute(
                "INSERT INTO run_events (run_id, at, from_state, to_state, event, detail) VALUES (?, ?, ?, ?, ?, ?)",
                (run_id, self.clock(), state, target, trigger, detail),
            )
            async with w.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,)) as cur:
                return _run(await cur.fetchone())  # type: ignore[arg-type]

    async def request_stop(self, run_id: str, detail: str) -> None:
        """Set the desired state of a live run to stop and record why."""
        async with self._tx() as w:
            cur = await w.execute(
                "UPDATE runs SET desired_state = ? WHERE id = ? AND desired_state != ? AND state IN (?, ?, ?)",
                (DesiredState.STOP, run_id, DesiredState.STOP, *sorted(ACTIVE)),
            )
            if cur.rowcount == 1:
                await w.execute(
                    "INSERT INTO run_events (run_id, at, from_state, to_state, event, detail) "
                    "SELECT id, ?, state, state, 'stop_requested', ? FROM runs WHERE id = ?",
                    (self.clock(), detail, run_id),
                )

    async def set_pending_reasons(self, reasons: dict[str, str]) -> None:
        if not reasons:
            return
        async with self._tx() as w:
            await w.executemany(
                "UPDATE runs SET pending_reason = ? WHERE id = ? AND state = ? AND pending_reason != ?",
                [(reason, run_id, RunState.QUEUED, reason) for run_id, reason in reasons.items()],
            )

    # --- snapshots -------------------------------------------------------------------------------------------

    async def run_for_node(self, run_id: str, attempt: int, node_id: str) -> RunRecord:
        """The run if its current attempt is on `node_id`; else NotFound (a node acts only on its own runs)."""
        run = await self.get_run(run_id)
        if run.node_id != node_id or run.attempt != attempt:
            raise NotFound(f"run {run_id!r} attempt {attempt} is not assigned to this node")
        return run

    # --- logs ------------------------------------------------------------------------------------------------

    async def append_logs(self, run_id: str, attempt: int, records: Sequence[tuple[int, int, int, float, int, bytes]]) -> int:
        """Append (rank, stream, seq, ts, flags, data) records; a resent record is ignored. Returns rows added."""
        async with self._tx() as w:
            before = w.total_changes
            await w.executemany(
                "INSERT OR IGNORE INTO logs (run_id, attempt, rank, stream, seq, ts, flags, data) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(run_id, attempt, *record) for record in records],
            )
            return w.total_changes - before

    async def read_logs(self, run_id: str, *, after_id: int = 0, limit: int = 1000, rank: int | None = None) -> list[LogRow]:
        sql = "SELECT id, attempt, rank, stream, seq, ts, flags, data FROM logs WHERE run_id = ? AND id > ?"
        args: list[Any] = [run_id, after_id]
        if rank is not None:
            sql += " AND rank = ?"
            args.append(rank)
        sql += " ORDER BY id LIMIT ?"
        args.append(limit)
        return [LogRow(*r) for r in await self._all(sql, args)]

    async def tail_start(self, run_id: str, lines: int, rank: int | None = None) -> int:
        """The log row id after which the last `lines` records of the run start."""
        sql = "SELECT id FROM logs WHERE run_id = ?"
        args: list[Any] = [run_id]
        if rank is not None:
            sql += " AND rank = ?"
            args.append(rank)
        sql += " ORDER BY id DESC LIMIT 1 OFFSET ?"
        args.append(lines)
        row = await self._one(sql, args)
        return row[0] if row else 0

    # --- metrics ---------------------------------------------------------------------------------------------

    async def append_metrics(
        self,
        run_id: str,
        attempt: int,
        points: Sequence[tuple[int, str, int, float, float]],
        params: dict[str, str],
        tags: dict[str, str],
    ) -> None:
        """Append (seq, key, step, value, ts) points; a resent point is ignored. Params and tags are upserted."""
        async with self._tx() as w:
            await w.executemany(
                "INSERT OR IGNORE INTO metrics (run_id, attempt, seq, key, step, value, ts) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(run_id, attempt, seq, key, step, value, ts) for seq, key, step, value, ts in points],
            )
            if params:
                await w.executemany(
                    "INSERT OR REPLACE INTO params (run_id, key, value) VALUES (?, ?, ?)",
                    [(run_id, k, v) for k, v in params.items()],
                )
            if tags:
                await w.execute("UPDATE runs SET tags = json_patch(tags, ?) WHERE id = ?", (json.dumps(tags), run_id))

    async def read_metrics(self, run_id: str, key: str = "") -> list[MetricRow]:
        sql = "SELECT key, value, step, ts FROM metrics WHERE run_id = ?"
        args: list[Any] = [run_id]
        if key:
            sql += " AND key = ?"
            args.append(key)
        sql += " ORDER BY key, step, ts"
        return [MetricRow(k, math.nan if v is None else v, s, t) for k, v, s, t in await self._all(sql, args)]

    async def params(self, run_id: str) -> dict[str, str]:
        return dict(await self._all("SELECT key, value FROM params WHERE run_id = ? ORDER BY key", (run_id,)))

    # --- nodes -----------------------------------------------------------------------------------------------

    async def join_node(
        self, *, node_id: str, name: str, token_sha: str, cluster: str, labels: dict[str, str], capacity: Capacity
    ) -> str:
        """Register a node by name (a rejoin keeps its id and replaces its credential); returns its id."""
        now = self.clock()
        async with self._tx() as w:
            async with w.execute("SELECT id FROM nodes WHERE name = ?", (name,)) as cur:
                row = await cur.fetchone()
            if row is not None:
                node_id = row[0]
            await w.execute(
                "INSERT INTO nodes (id, name, token_sha, cluster, labels, capacity, state, last_seen, joined_at) "
                "VALUES (?, ?, ?, ?, ?, ?, 'Joined', ?, ?) ON CONFLICT (id) DO UPDATE SET token_sha = excluded.token_sha, "
                "cluster = excluded.cluster, labels = excluded.labels, capacity = excluded.capacity, "
                "last_seen = excluded.last_seen",
                (node_id, name, token_sha, cluster, json.dumps(labels), capacity.to_json(), now, now),
            )
        return node_id

    async def set_node_state(self, node_id: str, state: str, *, capacity: Capacity | None = None) -> None:
        async with self._tx() as w:
            if capacity is None:
                await w.execute("UPDATE nodes SET state = ?, last_seen = ? WHERE id = ?", (state, self.clock(), node_id))
            else:
                await w.execute(
                    "UPDATE nodes SET state = ?, last_seen = ?, capacity = ? WHERE id = ?",
                    (state, self.clock(), capacity.to_json(), node_id),
                )

    async def set_node_schedule(self, name: str, schedule: str) -> NodeRecord:
        async with self._tx() as w:
            cur = await w.execute("UPDATE nodes SET schedule = ? WHERE name = ?", (schedule, name))
            if cur.rowcount != 1:
                raise NotFound(f"no node {name!r}")
            async with w.execute(f"SELECT {_NODE_COLUMNS} FROM nodes WHERE name = ?", (name,)) as found:
                return _node(await found.fetchone())  # type: ignore[arg-type]

    async def list_nodes(self) -> list[NodeRecord]:
        rows = await self._all(f"SELECT {_NODE_COLUMNS} FROM nodes ORDER BY name")
        return [_node(r) for r in rows]

    async def get_node(self, node_id: str) -> NodeRecord:
        row = await self._one(f"SELECT {_NODE_COLUMNS} FROM nodes WHERE id = ?", (node_id,))
        if row is None:
            raise NotFound(f"no node {node_id!r}")
        return _node(row)


__all__ = ["Store", "InvalidTransition", "LOG_CONTINUED", "LOG_GAP"]
