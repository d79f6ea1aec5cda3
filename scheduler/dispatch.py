"""The dispatch loop: on every wake-up, one scheduling pass over the queue.

A pass reads the queued and active runs, builds each connected node's free capacity, asks `placement.place()`
for a plan, commits each placement (Queued -> Preparing, attempt N+1) and only then sends the assignment to the
node. A crash between the commit and the send leaves a Preparing run the node does not know; the node's next
Hello reconciles it (requeued). Runs left queued get their pending reason written.

`run()` ends only by cancellation; an error in a pass is logged and the pass retried after a back-off.
"""

from __future__ import annotations

import asyncio
import logging

from protos import runyard_pb2 as pb
from scheduler.convert import spec_to_pb
from scheduler.followers import Followers
from scheduler.lifecycle import InvalidTransition, Trigger
from scheduler.model import RunRecord
from scheduler.placement import NodeView, Request, place
from scheduler.sessions import Sessions
from scheduler.store import Store

log = logging.getLogger(__name__)


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
    def __init__(self, *, store: Store, sessions: Sessions, followers: Followers) -> None:
        self._store = store
        self._sessions = sessions
        self._followers = followers
        self._wake = asyncio.Event()
        self._reasons: dict[str, str] = {}     # pending reasons as last written, so a pass writes only changes

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

    async def views(self) -> list[NodeView]:
        """Connected nodes with what their active runs leave free."""
        used: dict[str, tuple[float, int, set[int]]] = {}
        for node_id, cpus, memory, gpus in await self._store.allocations():
            held = used.get(node_id, (0.0, 0, set()))
            used[node_id] = (held[0] + cpus, held[1] + memory, held[2] | set(gpus))
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
                )
            )
        return views

    async def pass_once(self) -> int:
        """One scheduling pass; returns how many runs it placed."""
        requests = [Request(*row) for row in await self._store.queued_demand()]
        if not requests:
            self._reasons.clear()
            return 0
        plan = place(requests, await self.views())
        names = {s.node_id: s.name for s in self._sessions.all()}
        placed = 0
        for p in plan.placements:
            try:
                run = await self._store.transition(
                    p.run_id, Trigger.ASSIGN, node_id=p.node_id, gpu_indices=p.gpu_indices, pending_reason="",
                    detail=f"placed on {names[p.node_id]}",
                )
            except InvalidTransition:
                continue  # canceled while the pass ran
            placed += 1
            log.info("run assigned", extra={"run_id": run.id, "node": names[p.node_id], "attempt": run.attempt})
            self._sessions.send(p.node_id, assignment(run))
            self._followers.notify(run.id)
        changed = {run_id: reason for run_id, reason in plan.pending.items() if self._reasons.get(run_id) != reason}
        await self._store.set_pending_reasons(changed)
        self._reasons = dict(plan.pending)
        return placed
