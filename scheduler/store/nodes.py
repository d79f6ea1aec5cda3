"""The store's nodes: enrollment, capacity, schedules (what admins allow on a node), node events, and the
cluster's decision events (autoscaler, quarantine).

A node's state and schedule change only by the tables of `core.nodes`, each change with its `node_events` row in
the same transaction. `list_nodes()` is kept in memory between node writes; every write of the `nodes` table goes
through the store and drops that copy after its commit (`_NodeCache.changed` as an effect).
Must not: write runs, decide anything (that is `core.nodes` and the reactor), or know about gRPC.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from typing import Any

from scheduler.errors import NotFound, shown
from scheduler.group_commit import Effects
from scheduler.core.nodes import Schedule, ScheduleTrigger, next_schedule
from scheduler.model import ClusterEvent, Capacity, NodeRecord, RunEventRecord
from scheduler.store.base import _NODE_COLUMNS, StoreBase, _node


class _NodeCache:
    """`list_nodes()` as of the last node write, when known, and a version that moves on every committed node write
    (a read that started before a write must not be kept)."""

    __slots__ = ("nodes", "version")

    def __init__(self) -> None:
        self.nodes: list[NodeRecord] | None = None
        self.version = 0

    def changed(self) -> None:
        self.nodes = None
        self.version += 1


def _node_event(w: sqlite3.Connection, node_id: str, at: float, source: str, target: str, event: str,
                detail: str) -> None:
    w.execute("INSERT INTO node_events (node_id, at, from_state, to_state, event, detail) VALUES (?, ?, ?, ?, ?, ?)",
              (node_id, at, source, target, event, detail))


def _move_schedule(w: sqlite3.Connection, node_id: str, trigger: ScheduleTrigger, detail: str,
                   now: float) -> NodeRecord:
    """Change a node's schedule by the table, with a node event (quarantine also with a cluster event)."""
    node = _node(w.execute(f"SELECT {_NODE_COLUMNS} FROM nodes WHERE id = ?", (node_id,)).fetchone())
    target = next_schedule(node.name, node.schedule, trigger)
    forgive = ", failures_in_row = 0" if target is Schedule.ACTIVE else ""
    w.execute(f"UPDATE nodes SET schedule = ?{forgive} WHERE id = ?", (target, node_id))
    _node_event(w, node_id, now, node.schedule, target, trigger, detail)
    if trigger is ScheduleTrigger.QUARANTINE:
        w.execute("INSERT INTO cluster_events (at, cluster, node, kind, detail) VALUES (?, ?, ?, 'quarantine', ?)",
                  (now, node.cluster, node.name, detail))
    return dataclasses.replace(node, schedule=target, failures_in_row=0 if forgive else node.failures_in_row)


class NodeStore(StoreBase):
    """Reads and writes of nodes and cluster events; part of `Store`."""

    _node_cache: _NodeCache

    async def set_node_capacity(self, node_id: str, capacity: Capacity) -> None:
        def work(w: sqlite3.Connection, effects: Effects) -> None:
            w.execute("UPDATE nodes SET capacity = ?, last_seen = ? WHERE id = ?",
                      (capacity.to_json(), self.clock(), node_id))
            effects.append(self._node_cache.changed)
        await self._write(work)

    async def set_node_schedule(self, name: str, trigger: ScheduleTrigger, detail: str) -> NodeRecord:
        """Change what admins allow on a node by the schedule table; `uncordon` also forgives its failures in a
        row. Raises NotFound, or InvalidNodeTransition when it already has that schedule."""
        def work(w: sqlite3.Connection, effects: Effects) -> NodeRecord:
            row = w.execute("SELECT id FROM nodes WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise NotFound(f"no node {shown(name)}")
            effects.append(self._node_cache.changed)
            return _move_schedule(w, row[0], trigger, detail, self.clock())
        return await self._write(work)

    async def node_events(self, node_id: str, limit: int = 50) -> list[RunEventRecord]:
        """The node's latest state and schedule transitions, oldest first."""
        rows = await self._all("SELECT at, from_state, to_state, event, detail FROM node_events WHERE node_id = ? "
                               "ORDER BY id DESC LIMIT ?", (node_id, limit))
        return [RunEventRecord(*r) for r in reversed(rows)]

    async def record_event(self, cluster: str, node: str, kind: str, detail: str) -> None:
        def work(w: sqlite3.Connection, effects: Effects) -> None:
            w.execute(
                "INSERT INTO cluster_events (at, cluster, node, kind, detail) VALUES (?, ?, ?, ?, ?)",
                (self.clock(), cluster, node, kind, detail),
            )
        await self._write(work)

    async def events(self, *, cluster: str = "", limit: int = 20) -> list[ClusterEvent]:
        """The latest decision events, oldest first."""
        sql = "SELECT at, cluster, node, kind, detail FROM cluster_events"
        args: list[Any] = []
        if cluster:
            sql += " WHERE cluster = ?"
            args.append(cluster)
        rows = await self._all(sql + " ORDER BY id DESC LIMIT ?", [*args, limit])
        return [ClusterEvent(*r) for r in reversed(rows)]

    async def list_nodes(self) -> list[NodeRecord]:
        """Every node by name. Kept between node writes: every node write goes through this store and drops it."""
        cache = self._node_cache
        if cache.nodes is not None:
            return list(cache.nodes)
        version = cache.version
        nodes = [_node(r) for r in await self._all(f"SELECT {_NODE_COLUMNS} FROM nodes ORDER BY name")]
        if version == cache.version:     # no node write was delivered meanwhile: this read is current
            cache.nodes = nodes
        return list(nodes)

    async def get_node(self, node_id: str) -> NodeRecord:
        row = await self._one(f"SELECT {_NODE_COLUMNS} FROM nodes WHERE id = ?", (node_id,))
        if row is None:
            raise NotFound(f"no node {shown(node_id)}")
        return _node(row)
