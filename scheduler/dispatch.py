"""The dispatch loop: on every wake-up, one scheduling pass over the queue.

A pass reads the queued runs, orders them (`fairshare.queue_order`: priority, fair share, FIFO), builds each
connected node's free capacity from the live attempts, asks `placement.place()` for a plan, commits each
placement (Queued -> Preparing, attempt N+1; a multi-node run and its children in one transaction) and only then
sends the assignments to the nodes. A crash between the commit and the send leaves a Preparing run the node does not know; the node's next
Hello reconciles it (requeued). Runs left queued get their pending reason written.

`run()` ends only by cancellation; an error in a pass is logged and the pass retried after a back-off.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Mapping, Sequence

from protos import runyard_pb2 as pb
from scheduler.convert import spec_to_pb
from scheduler.followers import Followers
from scheduler.lifecycle import InvalidTransition, Trigger
from scheduler.model import RunRecord
from scheduler.autoscale import Demand
from scheduler.fairshare import Queued, Usage, decayed_usage, queue_order
from scheduler.placement import NodeView, Placement, Request, Running, place
from scheduler.sessions import Sessions
from scheduler.store import LiveRow, QueuedRow, Store

log = logging.getLogger(__name__)
USAGE_REFRESH_S = 10.0


def assignment(run: RunRecord) -> pb.HeadMessage:
    return pb.HeadMessage(
        assign=pb.Assignment(
            run_id=run.id,
            attempt=run.attempt,
            workspace=run.workspace,
            experiment=run.experiment,
            parent_run_id=run.parent_id,
            snapshot_sha256=run.snapshot_sha256,
            spec=spec_to_pb(run.spec),
            gpu_indices=run.gpu_indices,
        )
    )


class Dispatcher:
    def __init__(
        self, *, store: Store, sessions: Sessions, followers: Followers,
        quotas: Mapping[tuple[str, str], int] | None = None, half_life_s: float = 7 * 86400.0,
    ) -> None:
        self._store = store
        self._sessions = sessions
        self._followers = followers
        self._quotas = dict(quotas or {})
        self._half_life_s = half_life_s
        # Set by the autoscaler when there is one: nodes it is starting per cluster, and its wake-up.
        self.starting: Callable[[], dict[str, int]] = dict
        self.on_demand: Callable[[], None] = lambda: None
        self._wake = asyncio.Event()
        self._reasons: dict[str, str] = {}     # pending reasons as last written, so a pass writes only changes
        self._usage: dict[tuple[str, str], float] = {}
        self._usage_at = -math.inf
        self.demand: list[Demand] = []         # queued runs the last pass could not place for lack of capacity

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Run scheduling passes until cancelled."""
        backoff_s = 0.1
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.pass_once()
                backoff_s = 0.1
            except Exception:
                log.exception("scheduling pass failed", extra={"retry_in_s": backoff_s})
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 5.0)
                self._wake.set()

    async def usage(self) -> dict[tuple[str, str], float]:
        """Decayed GPU-seconds per (workspace, cluster), recomputed at most every USAGE_REFRESH_S."""
        now = self._store.clock()
        if now - self._usage_at >= USAGE_REFRESH_S:
            rows = await self._store.gpu_usage(since=now - 10 * self._half_life_s)
            self._usage = decayed_usage((Usage(*row) for row in rows), now, self._half_life_s)
            self._usage_at = now
        return self._usage

    async def ordered_queue(self) -> list[QueuedRow]:
        """Queued runs in the order the next pass considers them."""
        rows = {r.id: r for r in await self._store.queued()}
        if not rows:
            return []
        order = queue_order([Queued(r.id, r.workspace, r.compute, r.priority, r.created_at) for r in rows.values()],
                            await self.usage())
        return [rows[q.run_id] for q in order]

    def views(self, live: Sequence[LiveRow]) -> list[NodeView]:
        """Connected nodes with what their live attempts leave free."""
        used: dict[str, tuple[float, int, set[int]]] = {}
        for a in live:
            held = used.get(a.node_id, (0.0, 0, set()))
            used[a.node_id] = (held[0] + a.cpus, held[1] + a.memory_bytes, held[2] | set(a.gpu_indices))
        views = []
        for s in self._sessions.all():
            cpus_used, memory_used, gpus_used = used.get(s.node_id, (0.0, 0, set()))
            views.append(
                NodeView(
                    id=s.node_id,
                    name=s.name,
                    cluster=s.cluster,
                    cpus_free=s.capacity.cpus - cpus_used,
                    memory_free=s.capacity.memory_bytes - memory_used,
                    gpus_free=tuple(g.index for g in s.capacity.gpus if g.index not in gpus_used),
                    cpus_total=s.capacity.cpus,
                    memory_total=s.capacity.memory_bytes,
                    gpus_total=len(s.capacity.gpus),
                    schedulable=s.schedule == "active",
                    labels=s.labels,
                    gpu_specs=tuple((g.index, g.model, g.memory_bytes) for g in s.capacity.gpus),
                )
            )
        return views

    async def pass_once(self) -> int:
        """One scheduling pass; returns how many runs it placed."""
        queued = await self.ordered_queue()
        if not queued:
            self._reasons.clear()
            self.demand = []
            return 0
        now = self._store.clock()
        requests = [
            Request(r.id, r.compute, r.cpus, r.memory_bytes, r.gpus, r.instance_count, r.workspace, r.gpu_model,
                    r.gpu_memory_bytes, r.node_labels, r.timeout_s)
            for r in queued
        ]
        live = await self._store.live_attempts()
        running = [
            Running(a.node_id, a.workspace, a.compute, a.cpus, a.memory_bytes, a.gpu_indices,
                    (a.started_at or now) + a.timeout_s if a.timeout_s else math.inf)
            for a in live
        ]
        plan = place(requests, self.views(live), running=running, now=now, quotas=self._quotas)
        by_id = {r.run_id: r for r in requests}
        self.demand = [Demand(by_id[i].cluster, by_id[i].cpus, by_id[i].memory_bytes, by_id[i].gpus, by_id[i].nodes)
                       for i in plan.waiting]
        if self.demand:
            self.on_demand()
        gangs: dict[str, list[Placement]] = {}
        for p in plan.placements:
            gangs.setdefault(p.run_id, []).append(p)
        placed = 0
        for run_id, members in gangs.items():
            placed += await self._commit(run_id, sorted(members, key=lambda p: p.rank))
        await self._write_reasons(plan.pending, by_id)
        return placed

    async def _commit(self, run_id: str, members: list[Placement]) -> int:
        """Commit one run's placement, then send its assignment(s); 0 if it was canceled meanwhile."""
        names = [self._sessions.name(p.node_id) for p in members]
        try:
            if len(members) == 1:
                p = members[0]
                runs = [await self._store.transition(
                    run_id, Trigger.ASSIGN, node_id=p.node_id, gpu_indices=p.gpu_indices, pending_reason="",
                    detail=f"placed on {names[0]}",
                )]
            else:
                parent, runs = await self._store.assign_gang(
                    run_id, [(p.node_id, p.gpu_indices) for p in members], detail=f"placed on {', '.join(names)}")
                self._followers.notify(parent.id)
        except InvalidTransition:
            return 0
        for run in runs:
            log.info("run assigned", extra={"run_id": run.id, "node": self._sessions.name(run.node_id),
                                            "attempt": run.attempt})
            self._sessions.send(run.node_id, assignment(run))
            self._followers.notify(run.id)
        return 1

    async def _write_reasons(self, pending: dict[str, str], requests: Mapping[str, Request]) -> None:
        starting = self.starting()
        if starting:
            pending = {
                run_id: f"{reason}; autoscaler starting {starting[requests[run_id].cluster]}"
                if starting.get(requests[run_id].cluster) and not reason.startswith("over quota") else reason
                for run_id, reason in pending.items()
            }
        changed = {run_id: reason for run_id, reason in pending.items() if self._reasons.get(run_id) != reason}
        await self._store.set_pending_reasons(changed)
        self._reasons = dict(pending)
