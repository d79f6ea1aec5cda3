"""The head's state store: every read and write of the SQLite database, as one `Store`.

`Store` is assembled from one part per concern, each a class over the shared connections of `base.StoreBase`:

    base.py         the writer (group commit) and reader connections, row decoders, the store's errors and the
                    translation of SQLite's
    runs.py         runs: submit, reads, transitions, `apply_plan`, gang assignment, the in-memory queue
    nodes.py        nodes, node events, schedules, cluster events, the cached node list
    records.py      logs, metrics, params
    tracked.py      an attempt's records applied, and the tracked child runs its script starts
    credentials.py  workspaces, users' tokens, join tokens, node keys, snapshot grants, the audit trail
    environments.py registered environments, each version immutable
    tracking.py     the MLflow API's reads: experiments, run searches, latest metrics, metric histories
    usage.py        runs' system metrics (the agents' samples), their peaks and means, CPU- and GPU-hours

Callers import from here only (`from scheduler.store import Store, Conflict, ...`); names with a leading
underscore in the part modules are shared among the parts, not with the rest of the head.
Must not: decide anything (that is `core`, placement, fairshare) or know about gRPC.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import aiosqlite

from scheduler import db
from scheduler.core.lifecycle import InvalidTransition
from scheduler.group_commit import GroupCommit
from scheduler.store.base import Conflict, NotCurrentAttempt, _translated
from scheduler.store.credentials import CredentialStore
from scheduler.store.environments import EnvironmentStore
from scheduler.store.nodes import NodeStore, _NodeCache
from scheduler.store.records import LOG_CONTINUED, LOG_GAP, RecordStore
from scheduler.store.runs import ExperimentRow, LiveRow, QueuedRow, RendezvousRange, RunQuery, RunStore, _spec_json  # noqa: F401  (its test imports it from here)
from scheduler.store.tracked import END_WORDS, NO_TEXTS, Applied, TrackedStore, TrackingRecord  # noqa: F401
from scheduler.store.tracking import TrackingStore
from scheduler.store.usage import UsagePoint, UsageRow, UsageStore, UsageSummary  # noqa: F401


class Store(RunStore, NodeStore, RecordStore, TrackedStore, CredentialStore, EnvironmentStore, TrackingStore,
            UsageStore):
    """Reads and writes of the head's database. Create with `await Store.open(data_dir)`."""

    def __init__(
        self, writer: GroupCommit, reader: aiosqlite.Connection, cluster_id: str, clock: Callable[[], float],
    ) -> None:
        super().__init__(writer, reader, cluster_id, clock)
        # In-memory state that follows the commits (effects, see GroupCommit); the parts that use it say how.
        self._queue = {}
        self._queue_log = None
        self._node_cache = _NodeCache()

    @classmethod
    async def open(
        cls, data_dir: Path, *, synchronous: str = "FULL", clock: Callable[[], float] = time.time
    ) -> Store:
        opening, cluster_id = await db.open_database(data_dir, synchronous=synchronous)
        await opening.close()  # migrated and checked; from here on the writer thread owns the writes
        writer = GroupCommit(data_dir / "runyard.db", synchronous, asyncio.get_running_loop(), translate=_translated)
        await writer.start()
        try:
            reader = await db.open_reader(data_dir)
        except BaseException:
            await writer.close()
            raise
        store = cls(writer, reader, cluster_id, clock)
        try:
            await store._load_queue()
        except BaseException:
            await store.close()
            raise
        return store


__all__ = [
    "Store", "Conflict", "InvalidTransition", "NotCurrentAttempt", "LOG_CONTINUED", "LOG_GAP", "QueuedRow", "LiveRow",
    "RendezvousRange",
]
