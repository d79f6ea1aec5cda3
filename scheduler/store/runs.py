"""The store's runs: submit, reads, every state change (`transition`, `apply_plan`, `assign_gang`), and the
in-memory mirror of the queue.

Every run state change goes through the state machine's table check, a guarded
`UPDATE ... WHERE state = <the state just read>`, and an appended run event, in one transaction.
The queued runs are also kept in memory (`queued()`), changed only after the commit that changed them; the
database stays the durable record and the mirror is rebuilt from it on open (`_load_queue`).
Must not: decide anything (that is `core.lifecycle`, `core.react`, placement), or know about gRPC.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from runyard import envspec
from runyard.ids import new_run_id
from runyard.units import plural
from scheduler.errors import InvalidArgument, NotFound, shown
from scheduler.group_commit import Effects
from scheduler.core.lifecycle import (
    ACTIVE, TERMINAL, DesiredState, InvalidTransition, Pending, PendingKind, RunState, Trigger, next_state,
)
from scheduler.core.nodes import NodeState, ScheduleTrigger, next_node_state
from scheduler.core import gangs
from scheduler.core.plan import Move, Plan
from scheduler.model import ATTEMPT_PROPERTY, RANK_PROPERTY, AuditRecord, NewRun, RunEventRecord, RunRecord, RunSpec
from scheduler.store.base import _RUN_COLUMNS, Conflict, NotCurrentAttempt, StoreBase, _insert_audit, _run
from scheduler.store.tracked import end_tracked_children
from scheduler.store.nodes import _move_schedule, _node_event, _NodeCache

_QUEUED_COLUMNS = (
    "id, workspace, priority, created_at, json_extract(spec, '$.compute'), json_extract(spec, '$.cpus'), "
    "json_extract(spec, '$.memory_bytes'), json_extract(spec, '$.gpus'), json_extract(spec, '$.instance_count'), "
    "json_extract(spec, '$.gpu_model'), json_extract(spec, '$.gpu_memory_bytes'), "
    "json_extract(spec, '$.node_labels'), json_extract(spec, '$.timeout_s'), json_extract(spec, '$.env_hash'), "
    "json_extract(spec, '$.env.python'), json_array_length(spec, '$.env.conda'), json_extract(spec, '$.env.image')"
)
_SETTABLE = frozenset(
    {"reason", "exit_code", "pending_reason", "node_id", "gpu_indices", "outputs_sha256", "started_at", "ended_at"}
)
# The condition of the partial index `runs_live`, word for word: SQLite uses a partial index only for a query
# whose WHERE contains its condition, so a query for some live states repeats it rather than scan every run.
_LIVE_INDEXED = "state IN ('Queued', 'Preparing', 'Running', 'Finalizing')"
_LIVE_STATES = frozenset({RunState.QUEUED}) | ACTIVE
_ENDS = frozenset({Trigger.COMPLETE, Trigger.FAIL, Trigger.CANCEL})


# Two ranges of the partial index `runs_gpu_held` (its condition word for word): the GPU attempts that ended after
# the time, and the live ones (not ended). `+node_id`: never walk every run that ever had a node instead.
_GPU_HELD = ("SELECT workspace, json_extract(spec, '$.compute'), json_array_length(gpu_indices), started_at, ended_at "
             "FROM runs WHERE gpu_indices != '[]' AND started_at IS NOT NULL AND +node_id IS NOT NULL AND ")
GPU_USAGE_SQL = f"{_GPU_HELD}ended_at > ? UNION ALL {_GPU_HELD}ended_at IS NULL"


MIN_PREFIX = 4         # characters of a run id that `find_run` resolves as a prefix
MAX_CANDIDATES = 10    # ids an ambiguous prefix's refusal names
# `+workspace`: the workspace is checked on the rows of the id range, never taken as the index to walk.
PREFIX_SQL = "SELECT id FROM runs WHERE id >= ? AND id < ? AND +workspace = ? ORDER BY id LIMIT ?"


@dataclasses.dataclass(frozen=True, slots=True)
class RunQuery:
    """What `list_runs` keeps: every field set must hold. `tags` are (key, value) pairs, value None for "has the
    tag"; `created_after`/`created_before` are unix seconds (0: no bound); `node_id` is the node's id."""

    experiment: str = ""
    states: tuple[str, ...] = ()
    user: str = ""
    tags: tuple[tuple[str, str | None], ...] = ()
    created_after: float = 0.0
    created_before: float = 0.0
    parent_id: str = ""
    compute: str = ""
    node_id: str = ""
    limit: int = 50


class ExperimentRow(NamedTuple):
    name: str
    queued: int
    running: int            # Preparing, Running or Finalizing
    completed: int
    failed: int
    canceled: int
    total: int
    last_activity: float    # the latest creation or end of one of its runs (or of the experiment)


class RendezvousRange(NamedTuple):
    """A member node's advertised address and the ports a gang's block of rendezvous ports may take there."""

    address: str
    port_min: int
    port_max: int


class QueuedRow(NamedTuple):
    id: str
    workspace: str
    priority: int
    created_at: float
    compute: str
    cpus: float
    memory_bytes: int
    gpus: int
    instance_count: int
    gpu_model: str
    gpu_memory_bytes: int
    node_labels: tuple[tuple[str, str], ...]
    timeout_s: float
    env_hash: str = ""
    python: str = ""            # what its environment needs of a node: this python,
    conda: bool = False         # a conda builder,
    image: bool = False         # a container runtime


class LiveRow(NamedTuple):
    id: str
    node_id: str
    workspace: str
    compute: str
    cpus: float
    memory_bytes: int
    gpu_indices: tuple[int, ...]
    started_at: float | None    # None while Preparing
    timeout_s: float


def _queued_from_sql(r: Sequence[Any]) -> QueuedRow:
    return QueuedRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8] or 1, r[9] or "", r[10] or 0,
                     tuple(sorted(json.loads(r[11]).items())) if r[11] else (), r[12] or 0.0, r[13] or "", r[14] or "",
                     bool(r[15]), bool(r[16]))


def _queued_from_spec(run_id: str, workspace: str, priority: int, created_at: float, spec: RunSpec) -> QueuedRow:
    """The same row as `_queued_from_sql` reads back, from a spec in hand."""
    return QueuedRow(run_id, workspace, priority, created_at, spec.compute, spec.cpus, spec.memory_bytes, spec.gpus,
                     spec.instance_count or 1, spec.gpu_model or "", spec.gpu_memory_bytes or 0,
                     tuple(sorted(spec.node_labels.items())), spec.timeout_s or 0.0, spec.env_hash, spec.env.python,
                     bool(spec.env.conda), bool(spec.env.image))


_SPEC_FIELDS = tuple(field.name for field in dataclasses.fields(RunSpec))


def _spec_json(spec: RunSpec) -> str:
    """The text of `spec.to_json()`, without `dataclasses.asdict`'s deep copy: a spec's fields are plain values,
    but for its environment."""
    values = {name: getattr(spec, name) for name in _SPEC_FIELDS}
    values["env"] = envspec.to_dict(spec.env)
    return json.dumps(values, separators=(",", ":"))


def default_name(spec: RunSpec) -> str:
    """A display name from the command, for runs submitted without one: `python train.py --lr 0.1`."""
    argv = spec.argv[2:] if spec.argv[:2] == ("/bin/sh", "-c") else spec.argv
    text = " ".join(argv)
    return text if len(text) <= 48 else text[:47] + "…"


_NODE_ID_COLUMN = _RUN_COLUMNS.split(", ").index("node_id")


class RunStore(StoreBase):
    """Reads and writes of runs; part of `Store`."""

    _queue: dict[str, QueuedRow]                            # every Queued run, as of the last delivered commit
    _queue_log: list[tuple[str, QueuedRow | None]] | None   # see queue_changes()
    _node_cache: _NodeCache                                 # a Plan may move nodes too

    async def _load_queue(self) -> None:
        """Fill the mirror of the queue from the database (on open, before anyone else uses the store)."""
        rows = await self._write(
            lambda w, _: w.execute(f"SELECT {_QUEUED_COLUMNS} FROM runs WHERE state = 'Queued'").fetchall())
        self._queue = {r[0]: _queued_from_sql(r) for r in rows}

    # Effects: in-memory state that follows a commit (see GroupCommit).
    def _enqueued(self, row: QueuedRow) -> Callable[[], None]:
        def effect() -> None:
            self._queue[row.id] = row
            self._log_queue_change(row.id, row)
        return effect

    def _dequeued(self, run_id: str) -> Callable[[], None]:
        def effect() -> None:
            if self._queue.pop(run_id, None) is not None:
                self._log_queue_change(run_id, None)
        return effect

    def _log_queue_change(self, run_id: str, row: QueuedRow | None) -> None:
        log_ = self._queue_log
        if log_ is not None:
            log_.append((run_id, row))
            if len(log_) > 2 * len(self._queue) + 1000:     # nobody is reading it: stop, and say so
                self._queue_log = None

    async def create_run(self, new: NewRun, audit: AuditRecord | None = None) -> tuple[str, bool]:
        """Insert a Queued run with its first event; returns (run id, existed) honouring the idempotency key.
        `audit`, the submit's row of the audit trail, is written in the same transaction, its target the run."""
        spec_json, tags, properties = _spec_json(new.spec), json.dumps(new.tags), json.dumps(new.properties)
        display_name = new.display_name or default_name(new.spec)

        def work(w: sqlite3.Connection, effects: Effects) -> tuple[str, bool]:
            if new.idempotency_key:
                row = w.execute("SELECT id FROM runs WHERE workspace = ? AND idempotency_key = ?",
                                (new.workspace, new.idempotency_key)).fetchone()
                if row is not None:
                    _insert_audit(w, audit, row[0])
                    return row[0], True
            now = self.clock()
            run_id = new_run_id(now)
            w.execute(
                "INSERT OR IGNORE INTO experiments (workspace, name, created_at) VALUES (?, ?, ?)",
                (new.workspace, new.experiment, now),
            )
            w.execute(
                "INSERT INTO runs (id, workspace, experiment, parent_id, display_name, state, spec, snapshot_sha256, "
                "tags, properties, idempotency_key, created_at, pending_reason, priority, submitter, env_name, "
                "env_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id, new.workspace, new.experiment, new.parent_id or None, display_name, RunState.QUEUED,
                    spec_json, new.snapshot_sha256, tags, properties, new.idempotency_key or None, now,
                    "waiting for the scheduler", new.priority, new.submitter, new.env_name, new.env_version,
                ),
            )
            w.execute(
                "INSERT INTO run_events (run_id, at, from_state, to_state, event) VALUES (?, ?, '', ?, ?)",
                (run_id, now, RunState.QUEUED, Trigger.SUBMIT),
            )
            _insert_audit(w, audit, run_id)
            effects.append(self._enqueued(_queued_from_spec(run_id, new.workspace, new.priority, now, new.spec)))
            return run_id, False

        return await self._write(work)

    async def get_run(self, run_id: str, workspace: str | None = None) -> RunRecord:
        """The run, or NotFound; with `workspace`, another workspace's run is NotFound too."""
        row = await self._one(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,))
        if row is None or (workspace is not None and row[1] != workspace):
            raise NotFound(f"no run {shown(run_id)}")
        return _run(row)

    async def find_run(self, id_or_prefix: str, workspace: str) -> RunRecord:
        """The run of `workspace` whose id is `id_or_prefix`, or the only one whose id starts with it (at least
        MIN_PREFIX characters, any case), as git resolves a commit. NotFound when none does (another workspace's
        runs are not looked at); InvalidArgument, naming up to 10 candidates, when several do."""
        row = await self._one(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = ?", (id_or_prefix,))
        if row is not None and row[1] == workspace:
            return _run(row)
        prefix = id_or_prefix.lower()
        if len(prefix) < MIN_PREFIX or not prefix.isascii():
            raise NotFound(f"no run {shown(id_or_prefix)}" + (
                f" (a run id prefix needs at least {MIN_PREFIX} characters)" if len(prefix) < MIN_PREFIX else ""))
        # A range of the primary key, not LIKE: SQLite walks the id index from the prefix to the prefix's end.
        upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        ids = [r[0] for r in await self._all(PREFIX_SQL, (prefix, upper, workspace, MAX_CANDIDATES + 1))]
        if not ids:
            raise NotFound(f"no run {shown(id_or_prefix)}")
        if len(ids) > 1 and prefix not in ids:
            listed = ", ".join(ids[:MAX_CANDIDATES]) + (", ..." if len(ids) > MAX_CANDIDATES else "")
            raise InvalidArgument(f"run id prefix {shown(id_or_prefix)} is ambiguous: {listed}; give more characters")
        return await self.get_run(prefix if prefix in ids else ids[0], workspace)

    async def list_runs(self, workspace: str, query: RunQuery | None = None, *, experiment: str = "",
                        state: str = "", user: str = "", limit: int = 50) -> list[RunRecord]:
        """The runs of `workspace` that match every filter of `query` (or the keywords, for a short query),
        newest first, at most `query.limit`. Every filter is a condition of the SQL: nothing is filtered here."""
        return [_run(r) for r in await self.list_run_rows(workspace, query, experiment=experiment, state=state,
                                                          user=user, limit=limit)]

    @staticmethod
    def run_from_row(row: Sequence[Any]) -> RunRecord:
        """A row of `list_run_rows` as a run."""
        return _run(row)

    @staticmethod
    def node_of_row(row: Sequence[Any]) -> str:
        """The node id of a row of `list_run_rows` ("" for none), without decoding the row."""
        return row[_NODE_ID_COLUMN] or ""

    async def list_run_rows(self, workspace: str, query: RunQuery | None = None, *, experiment: str = "",
                            state: str = "", user: str = "", limit: int = 50) -> list[tuple[Any, ...]]:
        """The rows of `list_runs`, as stored (`run_from_row` decodes one): a caller that keeps what it made of a
        row can tell an unchanged run by its row, without decoding it again."""
        q = query or RunQuery(experiment=experiment, states=(state,) if state else (), user=user, limit=limit)
        # A parent's children and a node's runs are few: walk their own index, not every run of the workspace.
        selective = "+" if q.parent_id or q.node_id else ""
        sql = f"SELECT {_RUN_COLUMNS} FROM runs WHERE {selective}workspace = ?"
        args: list[Any] = [workspace]
        for column, value in (("submitter", q.user), ("experiment", q.experiment), ("parent_id", q.parent_id),
                              ("node_id", q.node_id)):
            if value:
                sql += f" AND {column} = ?"
                args.append(value)
        if q.states:
            sql += f" AND state IN ({', '.join('?' * len(q.states))})"
            args.extend(q.states)
        if q.compute:
            sql += " AND json_extract(spec, '$.compute') = ?"
            args.append(q.compute)
        for key, wanted in q.tags:
            if wanted is None:
                sql += " AND EXISTS (SELECT 1 FROM json_each(runs.tags) WHERE json_each.key = ?)"
                args.append(key)
            else:
                sql += " AND EXISTS (SELECT 1 FROM json_each(runs.tags) WHERE json_each.key = ? AND json_each.value = ?)"
                args.extend((key, wanted))
        if q.created_after:
            sql += " AND created_at >= ?"
            args.append(q.created_after)
        if q.created_before:
            sql += " AND created_at < ?"
            args.append(q.created_before)
        sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
        args.append(q.limit)
        return await self._all(sql, args)

    async def experiments(self, workspace: str) -> list[ExperimentRow]:
        """Every experiment of `workspace` with its runs counted by state, the most recently active first."""
        rows = await self._all(
            "SELECT e.name, "
            "COALESCE(SUM(r.state = 'Queued'), 0), "
            "COALESCE(SUM(r.state IN ('Preparing', 'Running', 'Finalizing')), 0), "
            "COALESCE(SUM(r.state = 'Completed'), 0), COALESCE(SUM(r.state = 'Failed'), 0), "
            "COALESCE(SUM(r.state = 'Canceled'), 0), COUNT(r.id), "
            "MAX(e.created_at, COALESCE(MAX(r.created_at), 0), COALESCE(MAX(r.ended_at), 0)) AS last "
            "FROM experiments e LEFT JOIN runs r ON r.workspace = e.workspace AND r.experiment = e.name "
            "WHERE e.workspace = ? GROUP BY e.name ORDER BY last DESC, e.name", (workspace,))
        return [ExperimentRow(*r) for r in rows]

    async def live_runs_on(self, node_id: str) -> list[RunRecord]:
        """The runs whose live attempt is on `node_id`."""
        marks = ", ".join("?" * len(ACTIVE))
        sql = (f"SELECT {_RUN_COLUMNS} FROM runs WHERE {_LIVE_INDEXED} AND state IN ({marks}) AND node_id = ? "
               "ORDER BY created_at, id")
        return [_run(r) for r in await self._all(sql, [*sorted(ACTIVE), node_id])]

    async def runs_in(self, states: Iterable[RunState]) -> list[RunRecord]:
        """Runs in any of `states`, oldest first (FIFO order for the queue)."""
        wanted = sorted(states)
        marks = ", ".join("?" * len(wanted))
        live = f"{_LIVE_INDEXED} AND " if set(wanted) <= _LIVE_STATES else ""
        sql = f"SELECT {_RUN_COLUMNS} FROM runs WHERE {live}state IN ({marks}) ORDER BY created_at, id"
        return [_run(r) for r in await self._all(sql, wanted)]

    async def queued(self) -> list[QueuedRow]:
        """Every queued run with what ordering and placement need, in no particular order. From memory: the rows
        as of the last commit that changed the queue (the order is `fairshare.queue_order`'s to decide)."""
        return list(self._queue.values())

    def queue_size(self) -> int:
        return len(self._queue)

    async def count_runs(self) -> tuple[list[tuple[str, str, int]], list[tuple[str, int]]]:
        """How many runs are in each state: the live ones by (state, cluster), read over the `runs_live` index, and
        the ended ones by state alone (a count over an index; the cluster is in the spec, which would mean reading
        every row ever submitted)."""
        live = await self._all(
            "SELECT state, json_extract(spec, '$.compute'), count(*) FROM runs "
            "WHERE state IN ('Queued', 'Preparing', 'Running', 'Finalizing') GROUP BY 1, 2")
        ended = await self._all("SELECT state, count(*) FROM runs WHERE state IN ('Completed', 'Failed', 'Canceled') "
                                "GROUP BY state")
        return [(r[0], r[1] or "default", r[2]) for r in live], [(r[0], r[1]) for r in ended]

    def queue_changes(self) -> list[tuple[str, QueuedRow | None]] | None:
        """The changes of the queue since the last call, in commit order: (run id, its row) for a run that entered
        the queue, (run id, None) for one that left. None on the first call, and when the changes were too many
        to keep: then read the whole queue with `queued()`. For one reader: each call starts a new log."""
        changes, self._queue_log = self._queue_log, []
        return changes

    async def live_attempts(self) -> list[LiveRow]:
        """What every live attempt holds on its node, and since when (gang parents hold nothing themselves)."""
        marks = ", ".join("?" * len(ACTIVE))
        rows = await self._all(
            "SELECT id, node_id, workspace, json_extract(spec, '$.compute'), json_extract(spec, '$.cpus'), "
            "json_extract(spec, '$.memory_bytes'), gpu_indices, started_at, "
            f"json_extract(spec, '$.timeout_s') FROM runs WHERE {_LIVE_INDEXED} AND state IN ({marks}) "
            "AND node_id IS NOT NULL",
            sorted(ACTIVE),
        )
        return [LiveRow(r[0], r[1], r[2], r[3], r[4], r[5], tuple(json.loads(r[6])), r[7], r[8] or 0.0) for r in rows]

    async def gpu_usage(self, since: float) -> list[tuple[str, str, int, float, float | None]]:
        """(workspace, compute, gpus, started_at, ended_at) of attempts that held GPUs at some time after `since`."""
        return await self._all(GPU_USAGE_SQL, (since,))

    async def run_events(self, run_id: str) -> list[RunEventRecord]:
        rows = await self._all(
            "SELECT at, from_state, to_state, event, detail FROM run_events WHERE run_id = ? ORDER BY id", (run_id,)
        )
        return [RunEventRecord(*r) for r in rows]

    async def transition(
        self, run_id: str, trigger: Trigger, *, attempt: int | None = None, detail: str = "", **sets: Any
    ) -> RunRecord:
        """Apply `trigger` to the run in one transaction: table check, guarded update, appended event. The
        dispatcher's `assign`; every other change of a live run is a reaction committed by `apply_plan`.

        With `attempt`, the run's current attempt must be that one: else NotCurrentAttempt, an InvalidTransition.
        Raises InvalidTransition or NotFound.
        """
        unknown = set(sets) - _SETTABLE
        if unknown:
            raise ValueError(f"cannot set {sorted(unknown)} in a transition")

        def work(w: sqlite3.Connection, effects: Effects) -> RunRecord:
            row = w.execute("SELECT state, attempt FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                raise NotFound(f"no run {shown(run_id)}")
            state, current_attempt = RunState(row[0]), row[1]
            if attempt is not None and attempt != current_attempt:
                raise NotCurrentAttempt(run_id, f"{state} (attempt {current_attempt}, not {attempt})", trigger)
            target = next_state(run_id, state, trigger)
            values = dict(sets)
            if trigger is Trigger.ASSIGN:
                values["attempt"] = current_attempt + 1
                values["pending_kind"] = ""
            if "gpu_indices" in values:
                values["gpu_indices"] = json.dumps(list(values["gpu_indices"]))
            assignments = ", ".join(f"{column} = ?" for column in values)
            cur = w.execute(
                f"UPDATE runs SET state = ?{', ' if values else ''}{assignments} WHERE id = ? AND state = ?",
                (target, *values.values(), run_id, state),
            )
            if cur.rowcount != 1:
                raise InvalidTransition(run_id, state, trigger)
            w.execute(
                "INSERT INTO run_events (run_id, at, from_state, to_state, event, detail) VALUES (?, ?, ?, ?, ?, ?)",
                (run_id, self.clock(), state, target, trigger, detail),
            )
            if target in TERMINAL or target is RunState.QUEUED:
                end_tracked_children(w, run_id, target, self.clock())
            run = _run(w.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,)).fetchone())
            if target is RunState.QUEUED:
                effects.append(self._enqueued(_queued_from_spec(run.id, run.workspace, run.priority, run.created_at,
                                                                run.spec)))
            elif state is RunState.QUEUED:
                effects.append(self._dequeued(run_id))
            return run

        return await self._write(work)

    async def apply_plan(self, plan: Plan) -> list[RunRecord]:
        """Commit every change of `plan` in one transaction, each guarded by the state it was decided in; returns
        the runs it changed or stopped, as committed. Raises Conflict (and writes nothing) if a guard fails."""
        now = self.clock()

        def work(w: sqlite3.Connection, effects: Effects) -> list[RunRecord]:
            for move in plan.moves:
                self._apply_move(w, effects, move, now)
            for stop in plan.stops:
                # While the run is live its reason says why it is being stopped (a Hello re-sends that stop).
                cur = w.execute(
                    "UPDATE runs SET desired_state = ?, reason = ? WHERE id = ? AND attempt = ? AND desired_state != ? "
                    f"AND state IN ({', '.join('?' * len(ACTIVE))})",
                    (DesiredState.STOP, stop.reason, stop.run_id, stop.attempt, DesiredState.STOP, *sorted(ACTIVE)),
                )
                if cur.rowcount == 1:
                    w.execute(
                        "INSERT INTO run_events (run_id, at, from_state, to_state, event, detail) "
                        "SELECT id, ?, state, state, 'stop_requested', ? FROM runs WHERE id = ?",
                        (now, stop.detail, stop.run_id),
                    )
            for node_move in plan.node_moves:
                row = w.execute("SELECT name, state FROM nodes WHERE id = ?", (node_move.node_id,)).fetchone()
                if row is None or row[1] != node_move.state:
                    raise Conflict(f"node {node_move.node_id} is no longer {node_move.state}")
                target = next_node_state(row[0], NodeState(row[1]), node_move.trigger)
                w.execute("UPDATE nodes SET state = ?, last_seen = ? WHERE id = ? AND state = ?",
                          (target, now, node_move.node_id, node_move.state))
                _node_event(w, node_move.node_id, now, node_move.state, target, node_move.trigger, node_move.detail)
            for count in plan.counts:
                if not count.node_side:
                    w.execute("UPDATE nodes SET failures_in_row = 0 WHERE id = ?", (count.node_id,))
                    continue
                w.execute("UPDATE nodes SET failures_in_row = failures_in_row + 1 WHERE id = ?", (count.node_id,))
                if count.quarantine:
                    _move_schedule(w, count.node_id, ScheduleTrigger.QUARANTINE, count.detail, now)
            for schedule in plan.schedules:
                _move_schedule(w, schedule.node_id, schedule.trigger, schedule.detail, now)
            for expect in plan.expects:
                row = w.execute("SELECT state FROM runs WHERE id = ?", (expect.run_id,)).fetchone()
                if row is None or row[0] != expect.state:
                    raise Conflict(f"run {expect.run_id} is no longer {expect.state}")
            if plan.node_moves or plan.counts or plan.schedules:
                effects.append(self._node_cache.changed)
            touched = sorted(plan.touched)
            return [_run(w.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,)).fetchone())
                    for run_id in touched]

        return await self._write(work)

    def _apply_move(self, w: sqlite3.Connection, effects: Effects, move: Move, now: float) -> None:
        row = w.execute("SELECT state, attempt, workspace, priority, created_at, spec FROM runs WHERE id = ?",
                        (move.run_id,)).fetchone()
        if row is None or row[0] != move.state or row[1] != move.attempt:
            raise Conflict(f"run {move.run_id} is no longer {move.state} at attempt {move.attempt}")
        target = next_state(move.run_id, move.state, move.trigger)
        values: dict[str, Any] = {"state": target}
        if move.reason is not None:
            values["reason"] = move.reason
        if move.exit_code is not None:
            values["exit_code"] = move.exit_code
        if move.trigger is Trigger.START:
            values["started_at"] = move.at or now
        elif move.trigger in _ENDS:
            values["ended_at"] = move.at or now
        if move.outputs_sha256:
            values["outputs_sha256"] = move.outputs_sha256
        if move.agent_error_node:
            values["agent_error_node"] = move.agent_error_node
        if move.trigger is Trigger.REQUEUE:
            values.update(node_id=None, gpu_indices="[]", pending_reason=move.pending_reason,
                          pending_kind=PendingKind.REQUEUED)
        assignments = ", ".join(f"{column} = ?" for column in values)
        w.execute(f"UPDATE runs SET {assignments} WHERE id = ? AND state = ? AND attempt = ?",
                  (*values.values(), move.run_id, move.state, move.attempt))
        w.execute(
            "INSERT INTO run_events (run_id, at, from_state, to_state, event, detail) VALUES (?, ?, ?, ?, ?, ?)",
            (move.run_id, now, move.state, target, move.trigger, move.detail),
        )
        if target in TERMINAL or target is RunState.QUEUED:   # the runs its script tracked end with the attempt
            end_tracked_children(w, move.run_id, target, now)
        if target is RunState.QUEUED:
            effects.append(self._enqueued(_queued_from_spec(move.run_id, row[2], row[3], row[4],
                                                            RunSpec.from_json(row[5]))))
        elif move.state is RunState.QUEUED:
            effects.append(self._dequeued(move.run_id))

    async def assign_gang(
        self, parent_id: str, members: Sequence[tuple[str, tuple[int, ...]]], detail: str,
        rendezvous: Sequence[RendezvousRange] = (),
    ) -> tuple[RunRecord, list[RunRecord]]:
        """Place a multi-node run in one transaction: the parent Queued -> Preparing (attempt N+1) and one child
        run per node, rank r on `members[r]` = (node id, GPU indices), each Preparing with `gangs.child_environment`
        in its environment. With `rendezvous` (each member's advertised address and port range, in rank order), the
        gang meets at rank 0's address, and its MASTER_PORT is the lowest port whose block of `gangs.port_width`
        ports fits in every member's range and overlaps no block a live run holds on any member node; every child
        gets the addresses as RUNYARD_NODE_ADDRESSES. Raises InvalidTransition if the parent is no longer queued,
        Conflict if no such block is free."""
        now = self.clock()

        def work(w: sqlite3.Connection, effects: Effects) -> tuple[RunRecord, list[RunRecord]]:
            row = w.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = ?", (parent_id,)).fetchone()
            if row is None:
                raise NotFound(f"no run {shown(parent_id)}")
            parent = _run(row)
            target = next_state(parent_id, parent.state, Trigger.ASSIGN)
            cur = w.execute(
                "UPDATE runs SET state = ?, attempt = attempt + 1, pending_reason = '', pending_kind = '' "
                "WHERE id = ? AND state = ?",
                (target, parent_id, parent.state),
            )
            if cur.rowcount != 1:
                raise InvalidTransition(parent_id, parent.state, Trigger.ASSIGN)
            w.execute(
                "INSERT INTO run_events (run_id, at, from_state, to_state, event, detail) VALUES (?, ?, ?, ?, ?, ?)",
                (parent_id, now, parent.state, target, Trigger.ASSIGN, detail),
            )
            meeting = None
            if rendezvous:
                width = gangs.port_width(parent.spec)
                nodes = sorted({node_id for node_id, _ in members})
                used = [(int(port), gangs.port_width(RunSpec.from_json(spec))) for port, spec in w.execute(
                    f"SELECT json_extract(spec, '$.environment.MASTER_PORT'), spec FROM runs WHERE {_LIVE_INDEXED} "
                    f"AND node_id IN ({', '.join('?' * len(nodes))}) "
                    "AND json_extract(spec, '$.environment.MASTER_PORT') IS NOT NULL", nodes) if str(port).isdigit()]
                port = gangs.free_block(used, max(r.port_min for r in rendezvous), min(r.port_max for r in rendezvous),
                                        width)
                if port is None:
                    raise Conflict(f"no block of {plural(width, 'rendezvous port')} free on every node of run {parent_id}")
                meeting = gangs.Rendezvous(rendezvous[0].address, port)
            addresses = [r.address for r in rendezvous]
            children = []
            for rank, (node_id, gpus) in enumerate(members):
                child_id = new_run_id(now)
                env = {**parent.spec.environment,
                       **gangs.child_environment(parent.spec, rank, len(members), meeting, addresses)}
                spec = dataclasses.replace(parent.spec, instance_count=1, environment=env)
                w.execute(
                    "INSERT INTO runs (id, workspace, experiment, parent_id, display_name, state, spec, snapshot_sha256, "
                    "tags, properties, created_at, priority, attempt, node_id, gpu_indices, submitter, env_name, "
                    "env_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?)",
                    (child_id, parent.workspace, parent.experiment, parent_id, f"{parent.display_name} [rank {rank}]",
                     RunState.PREPARING, _spec_json(spec), parent.snapshot_sha256, json.dumps(parent.tags),
                     json.dumps({RANK_PROPERTY: str(rank), ATTEMPT_PROPERTY: str(parent.attempt + 1)}),
                     now, parent.priority, node_id, json.dumps(list(gpus)), parent.submitter, parent.env_name,
                     parent.env_version),
                )
                w.executemany(
                    "INSERT INTO run_events (run_id, at, from_state, to_state, event, detail) VALUES (?, ?, ?, ?, ?, ?)",
                    [(child_id, now, "", RunState.QUEUED, Trigger.SUBMIT, f"rank {rank} of {parent_id}"),
                     (child_id, now, RunState.QUEUED, RunState.PREPARING, Trigger.ASSIGN, detail)],
                )
                children.append(_run(w.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = ?", (child_id,)).fetchone()))
            effects.append(self._dequeued(parent_id))
            return _run(w.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = ?", (parent_id,)).fetchone()), children

        return await self._write(work)

    async def children(self, parent_id: str) -> list[RunRecord]:
        rows = await self._all(f"SELECT {_RUN_COLUMNS} FROM runs WHERE parent_id = ? ORDER BY created_at, id", (parent_id,))
        return [_run(r) for r in rows]

    async def set_pending_reasons(self, reasons: Mapping[str, Pending]) -> None:
        if not reasons:
            return
        rows = [(p.text, p.kind, run_id, RunState.QUEUED, p.text, p.kind) for run_id, p in reasons.items()]

        def work(w: sqlite3.Connection, effects: Effects) -> None:
            w.executemany("UPDATE runs SET pending_reason = ?, pending_kind = ? WHERE id = ? AND state = ? "
                          "AND (pending_reason != ? OR pending_kind != ?)", rows)
        await self._write(work)

    # --- snapshots -------------------------------------------------------------------------------------------

    async def run_for_node(self, run_id: str, attempt: int, node_id: str) -> RunRecord:
        """The run if its current attempt is on `node_id`; else NotFound (a node acts only on its own runs)."""
        run = await self.get_run(run_id)
        if run.node_id != node_id or run.attempt != attempt:
            raise NotFound(f"run {shown(run_id)} attempt {attempt} is not assigned to this node")
        return run
