"""Tracked runs: the child runs a run's script starts (the SDK's `child_run`, MLflow's nested runs).

A tracked run is a row of `runs` like any other, with the property `runyard.tracked` = "1", a parent, and no node
and no process: it is created Running (trigger `track`) by the record that announces it, written to by the records
that name it, and ended by its script's `end` record or, at the latest, with the run that tracks it
(`end_tracked_children`, in the transaction that ends or requeues that run): Completed with a Completed run,
Canceled with a Canceled one, else Failed.

An attempt's records reach the head in that attempt's batches (`apply_records`): a batch may create and write
runs below its own run only, each checked along the `parent_id` chain (tracked all the way); a record naming any
other run is dropped and counted. The announcing record carries the child's id, chosen by the script, so a resent
batch creates nothing twice (and writes no point twice: the metrics' resend key).
Must not: create a run outside the tracking run's workspace, or move a run that is not tracked (those follow their
processes, `core.react`).
"""

from __future__ import annotations

import dataclasses
import json
import re
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import NamedTuple

from scheduler.core.lifecycle import RunState, Trigger, next_state
from scheduler.group_commit import Effects
from scheduler.model import TRACKED_PROPERTY, RunSpec
from scheduler.store.base import StoreBase
from scheduler.store.records import MetricLine, _write_metrics

_RUN_ID = re.compile(r"^[0-9a-hjkmnp-tv-z]{18}$")     # runyard.ids.new_run_id
_MAX_DEPTH = 32                                       # nested runs below a run, at most
_NAME_CHARS = 256
_ENDS = {"FINISHED": Trigger.COMPLETE, "FAILED": Trigger.FAIL, "KILLED": Trigger.CANCEL}
NO_TEXTS: Mapping[str, str] = MappingProxyType({})
END_WORDS = frozenset(_ENDS)      # what an `end` record may say
_LIVE_TRACKED = (f"state IN ('{RunState.RUNNING}') "
                 f"AND json_extract(properties, '$.\"{TRACKED_PROPERTY}\"') = '1'")


class TrackingRecord(NamedTuple):
    """One line of an attempt's records file, as the head applies it. A NamedTuple, not a frozen dataclass: one
    is made per line received, and a tuple is made at a quarter of the cost."""

    rank: int
    seq: int
    run_id: str                                   # "" for the attempt's run, else one of its tracked runs
    keys: Sequence[str] = ()                      # its metric points as columns; each at the record's ts
    steps: Sequence[int] = ()
    values: Sequence[float] = ()
    params: Mapping[str, str] = NO_TEXTS
    tags: Mapping[str, str] = NO_TEXTS
    child: tuple[str, str] | None = None          # (id, name): starts a tracked child of `run_id`
    end: str = ""                                 # FINISHED, FAILED or KILLED: `run_id` ended
    ts: float = 0.0


@dataclass(frozen=True, slots=True)
class Applied:
    """What a batch changed: the runs written to (for `logs -f`/`metrics` followers) and records dropped."""

    runs: frozenset[str]
    dropped: int


class TrackedStore(StoreBase):
    """Writes of an attempt's records, tracked runs included; part of `Store`."""

    async def apply_records(self, run_id: str, attempt: int, records: Sequence[TrackingRecord]) -> Applied:
        """Apply the records of attempt `attempt` of `run_id` in one transaction: tracked children created, points,
        params and tags stored per run, ends applied. A resent batch changes nothing."""
        now = self.clock()

        def work(w: sqlite3.Connection, effects: Effects) -> Applied:
            own = w.execute("SELECT workspace, experiment, spec, snapshot_sha256, priority, submitter, env_name, "
                            "env_version FROM runs WHERE id = ?", (run_id,)).fetchone()
            if own is None:
                return Applied(frozenset(), len(records))
            ours, theirs = {run_id}, set()
            points: dict[str, list[MetricLine]] = {}
            params: dict[str, dict[str, str]] = {}
            tags: dict[str, dict[str, str]] = {}
            dropped = 0
            for rec in records:
                target = rec.run_id or run_id
                if target not in ours and (target in theirs or not _below(w, target, run_id)):
                    theirs.add(target)
                    dropped += 1
                    continue
                ours.add(target)
                if rec.child is not None:
                    child = _start_child(w, own, target, rec.child, rec.ts or now, now)
                    if child is None:
                        dropped += 1
                    else:
                        ours.add(child)
                if rec.keys:
                    points.setdefault(target, []).append((rec.rank, rec.seq, rec.ts, rec.keys, rec.steps, rec.values))
                if rec.params:
                    params.setdefault(target, {}).update(rec.params)
                if rec.tags:
                    tags.setdefault(target, {}).update(rec.tags)
                if rec.end and target != run_id:
                    _end(w, target, _ENDS[rec.end], rec.ts or now, now, "ended by its script")
            written = set(points) | set(params) | set(tags)
            for target in written:
                _write_metrics(w, target, attempt, points.get(target, ()), params.get(target, {}),
                               tags.get(target, {}))
            return Applied(frozenset(written | (ours - {run_id})), dropped)

        return await self._write(work)


def end_tracked_children(w: sqlite3.Connection, run_id: str, state: RunState, now: float) -> None:
    """In the transaction that moves `run_id` to `state`: end its live tracked children (and theirs) with it."""
    trigger = {RunState.COMPLETED: Trigger.COMPLETE, RunState.CANCELED: Trigger.CANCEL}.get(state, Trigger.FAIL)
    detail = (f"its parent {run_id} was queued again (its attempt was lost)" if state is RunState.QUEUED
              else f"its parent {run_id} ended {state}")
    for (child,) in w.execute(f"SELECT id FROM runs WHERE parent_id = ? AND {_LIVE_TRACKED}", (run_id,)).fetchall():
        _end(w, child, trigger, now, now, detail)


def _below(w: sqlite3.Connection, run_id: str, ancestor: str) -> bool:
    """True when `run_id` is a tracked run whose chain of tracked parents reaches `ancestor`."""
    current = run_id
    for _ in range(_MAX_DEPTH):
        row = w.execute("SELECT parent_id, json_extract(properties, ?) FROM runs WHERE id = ?",
                        (f'$."{TRACKED_PROPERTY}"', current)).fetchone()
        if row is None or row[1] != "1" or not row[0]:
            return False
        if row[0] == ancestor:
            return True
        current = row[0]
    return False


def _start_child(w: sqlite3.Connection, own: Sequence[object], parent_id: str, child: tuple[str, str], at: float,
                 now: float) -> str | None:
    """Create tracked run `child` = (id, name) under `parent_id`; its id if it is (now or already) that parent's
    tracked child, None when the id is malformed or another run's."""
    child_id, name = child
    if not _RUN_ID.match(child_id):
        return None
    found = w.execute("SELECT parent_id FROM runs WHERE id = ?", (child_id,)).fetchone()
    if found is not None:
        return child_id if found[0] == parent_id else None
    workspace, experiment, spec_json, snapshot, priority, submitter, env_name, env_version = own
    spec = dataclasses.replace(RunSpec.from_json(str(spec_json)), instance_count=1, environment={})
    w.execute(
        "INSERT INTO runs (id, workspace, experiment, parent_id, display_name, state, spec, snapshot_sha256, tags, "
        "properties, created_at, started_at, priority, attempt, gpu_indices, submitter, env_name, env_version) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, '{}', ?, ?, ?, ?, 1, '[]', ?, ?, ?)",
        (child_id, workspace, experiment, parent_id, (name or child_id)[:_NAME_CHARS], RunState.RUNNING,
         spec.to_json(), snapshot, json.dumps({TRACKED_PROPERTY: "1"}), at, at, priority, submitter, env_name,
         env_version),
    )
    w.execute("INSERT INTO run_events (run_id, at, from_state, to_state, event, detail) VALUES (?, ?, ?, ?, ?, ?)",
              (child_id, now, "", RunState.RUNNING, Trigger.TRACK, f"started by the script of {parent_id}"))
    return child_id


def _end(w: sqlite3.Connection, run_id: str, trigger: Trigger, at: float, now: float, detail: str) -> None:
    """End tracked run `run_id` if it is still live (a resent end, or one after its parent's, does nothing); its
    own live tracked children end with it."""
    target = next_state(run_id, RunState.RUNNING, trigger)
    cur = w.execute(f"UPDATE runs SET state = ?, ended_at = ? WHERE id = ? AND {_LIVE_TRACKED}",
                    (target, max(at, 0.0), run_id))
    if cur.rowcount != 1:
        return
    w.execute("INSERT INTO run_events (run_id, at, from_state, to_state, event, detail) VALUES (?, ?, ?, ?, ?, ?)",
              (run_id, now, RunState.RUNNING, target, trigger, detail))
    end_tracked_children(w, run_id, target, now)
