"""What every part of the store shares: the two connections, the row decoders, and the store's errors.

Writes go through one thread that owns the write connection (`GroupCommit`): the write transactions that arrive
while it is committing are committed together, one `BEGIN IMMEDIATE ... COMMIT` (one fsync) for the group, each
caller's statements inside its own savepoint, and no caller returns before the COMMIT that holds its rows.
Reads go through a second, read-only connection.
Errors of SQLite are translated here, once: a full disk becomes `DiskFull` (RESOURCE_EXHAUSTED).
Must not: hold the queries of one concern (those are `runs`, `nodes`, `records`, `credentials`), decide anything,
or know about gRPC.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

import aiosqlite

from scheduler.errors import DiskFull
from scheduler.group_commit import GroupCommit, Work
from scheduler.core.lifecycle import DesiredState, InvalidTransition, PendingKind, RunState
from scheduler.core.nodes import NodeState, Schedule
from scheduler.model import AuditRecord, Capacity, NodeRecord, RunRecord, RunSpec

_RUN_COLUMNS = (
    "id, workspace, experiment, parent_id, display_name, state, desired_state, reason, exit_code, pending_reason, "
    "attempt, node_id, gpu_indices, spec, snapshot_sha256, outputs_sha256, tags, properties, created_at, "
    "started_at, ended_at, priority, agent_error_node, pending_kind, submitter, env_name, env_version"
)
_NODE_COLUMNS = "id, name, cluster, labels, capacity, state, last_seen, schedule, failures_in_row, approved"
T = TypeVar("T")


def stored_real(value: float | None) -> float:
    """A stored real: SQLite stores NaN as NULL."""
    return math.nan if value is None else value


def _run(row: Sequence[Any]) -> RunRecord:
    return RunRecord(
        id=row[0], workspace=row[1], experiment=row[2], parent_id=row[3] or "", display_name=row[4],
        state=RunState(row[5]), desired_state=DesiredState(row[6]), reason=row[7], exit_code=row[8],
        pending_reason=row[9], attempt=row[10], node_id=row[11] or "", gpu_indices=tuple(json.loads(row[12])),
        spec=RunSpec.from_json(row[13]), snapshot_sha256=row[14], outputs_sha256=row[15],
        tags=json.loads(row[16]), properties=json.loads(row[17]), created_at=row[18], started_at=row[19],
        ended_at=row[20], priority=row[21], agent_error_node=row[22],
        pending_kind=PendingKind(row[23]) if row[23] else None, submitter=row[24], env_name=row[25],
        env_version=row[26],
    )


def _node(row: Sequence[Any]) -> NodeRecord:
    return NodeRecord(
        id=row[0], name=row[1], cluster=row[2], labels=json.loads(row[3]), capacity=Capacity.from_json(row[4]),
        state=NodeState(row[5]), last_seen=row[6], schedule=Schedule(row[7]), failures_in_row=row[8],
        approved=bool(row[9]),
    )


def _insert_audit(w: sqlite3.Connection, entry: AuditRecord | None, target: str) -> None:
    """Append `entry` to the audit trail with `target`, inside the caller's transaction."""
    if entry is not None:
        w.execute("INSERT INTO audit (at, user, workspace, method, target, peer, code) VALUES (?, ?, ?, ?, ?, ?, ?)",
                  (entry.at, entry.user, entry.workspace, entry.method, target, entry.peer, entry.code))


class NotCurrentAttempt(InvalidTransition):
    """A report about an attempt that is not the run's current one (or not on the node that reports it)."""


class Conflict(Exception):
    """A guard of a Plan no longer holds (the run or node moved since it was read); nothing of it was written."""


def _translated(err: BaseException) -> BaseException:
    if isinstance(err, sqlite3.OperationalError) and getattr(err, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
        return DiskFull()
    return err


class StoreBase:
    """The connections every part of the store reads and writes through; `Store` assembles the parts over it."""

    def __init__(
        self, writer: GroupCommit, reader: aiosqlite.Connection, cluster_id: str, clock: Callable[[], float],
    ) -> None:
        self._writer = writer
        self._r = reader
        self.cluster_id = cluster_id
        self.clock = clock

    @property
    def writer(self) -> GroupCommit:
        """The group-commit writer, for its figures (the head's metrics); writes go through the store's methods."""
        return self._writer

    async def close(self) -> None:
        await self._r.close()
        await self._writer.close()

    async def _write(self, work: Work[T]) -> T:
        return await self._writer.write(work)

    # Each read runs to its end in one job on the reader's thread. A statement left open across an await (execute
    # now, fetch later) pins the reader's snapshot, and every other coroutine's read meanwhile sees that old
    # snapshot: Connect found no node for a Join that had already committed.
    async def _one(self, sql: str, args: Sequence[Any] = ()) -> Any:
        return next(iter(await self._r.execute_fetchall(sql, args)), None)

    async def _all(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        return list(await self._r.execute_fetchall(sql, args))

    async def _read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` on the reader's own thread with its sqlite3 connection, to its end, as one job (as `_all`
        does): a long series is turned into columns there, not row by row on the event loop. aiosqlite has no
        public call for this; its `_execute` is what its own `execute_fetchall` uses."""
        reader = self._r
        return cast(T, await reader._execute(lambda: work(reader._conn)))
