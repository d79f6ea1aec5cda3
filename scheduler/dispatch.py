"""The dispatch loop: on every wake-up, one scheduling pass over the queue.

A pass takes the queued runs, orders them (`fairshare.queue_order`: priority, fair share, FIFO), builds each
connected node's free capacity from the live attempts, asks `placement.place()` for a plan, commits each
placement (Queued -> Preparing, attempt N+1; a multi-node run and its children in one transaction) and only then
sends the assignments to the nodes. A crash between the commit and the send leaves a Preparing run the node does not know; the node's next
Hello reconciles it (requeued). Runs left queued get their pending reason written.

Why it stays cheap on a busy head:
- The queue comes from the store's in-memory mirror, and what ordering and placement need of a queued run is
  derived once per run, not once per pass.
- Wake-ups are coalesced: those that arrive during a pass are served by one next pass. After a pass the loop
  pauses for PAUSE_PER_PASS times the time the pass took, so however fast runs are submitted
  (`queue_grew()`), scheduling takes a bounded share of the head's CPU. A `wake()` (a run ended, a node came or
  changed: capacity may be free) ends the pause at once; an idle dispatcher answers either at once.
- Most passes are quick: they consider only the first PREFIX_PER_CLUSTER runs of each cluster, in queue order.
  `place()` decides each run from the runs before it in its own cluster only, so a quick pass places exactly what
  a full pass would place among those runs. What it leaves out waits for the next full pass, at most
  FULL_PASS_EVERY_S away, which the loop makes by itself if nothing else wakes it: a run further back that could
  backfill, the autoscaler's demand, and the pending reasons (a long queue's "N run(s) ahead" moves on every
  placement; rewriting them on every pass would cost a durable write of the whole queue each time).

`run()` ends only by cancellation; an error in a pass is logged and the pass retried after a back-off.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

from runyard.clock import Clock, SystemClock, wait_event
from scheduler.followers import Followers
from scheduler.core.lifecycle import InvalidTransition, Pending, PendingKind, Trigger
from scheduler.autoscale import Demand
from scheduler.fairshare import Queued, Usage, decayed_usage, queue_order
from scheduler.placement import NodeView, Placement, Request, Running, place
from scheduler.sessions import Assign, Sessions
from scheduler.store import Conflict, LiveRow, QueuedRow, RendezvousRange, Store

log = logging.getLogger(__name__)
USAGE_REFRESH_S = 10.0
PAUSE_PER_PASS = 8.0        # paced passes take at most 1 / (1 + PAUSE_PER_PASS) of the time
MAX_PAUSE_S = 0.25
PREFIX_PER_CLUSTER = 64     # runs of each cluster a quick pass considers
FULL_PASS_EVERY_S = 1.0


class _Derived(NamedTuple):
    """A queued run as the store has it, and what ordering and placement make of it."""

    row: QueuedRow
    queued: Queued
    request: Request


def _derive(row: QueuedRow) -> _Derived:
    return _Derived(
        row,
        Queued(row.id, row.workspace, row.compute, row.priority, row.created_at),
        Request(row.id, row.compute, row.cpus, row.memory_bytes, row.gpus, row.instance_count, row.workspace,
                row.gpu_model, row.gpu_memory_bytes, row.node_labels, row.timeout_s, row.env_hash, row.python,
                row.conda, row.image),
    )


class _Queue:
    """The dispatcher's ordered copy of the queue, kept from the store's queue changes.

    The order is `fairshare.queue_order`'s. A run's place depends only on its own row and the usage, so while the
    usage is the same object the order is kept: a run that leaves is skipped (and dropped when many have), and the
    runs that arrive are put after the last one when they all order after it (the usual case: first come, first
    served within a priority); otherwise the whole queue is ordered anew.
    """

    def __init__(self) -> None:
        self.runs: dict[str, _Derived] = {}
        self._order: list[_Derived] = []        # may hold runs that left; `runs` says which are current
        self._usage: Mapping[tuple[str, str], float] | None = None
        self._left = 0                          # runs in _order that left
        self._clusters: dict[str, int] = {}     # queued runs per cluster

    def __len__(self) -> int:
        return len(self.runs)

    def _current(self, d: _Derived) -> bool:
        return self.runs.get(d.row.id) is d

    def _add(self, d: _Derived) -> None:
        self.runs[d.row.id] = d
        self._clusters[d.request.cluster] = self._clusters.get(d.request.cluster, 0) + 1

    def _drop(self, run_id: str) -> None:
        d = self.runs.pop(run_id, None)
        if d is not None:
            self._left += 1
            cluster = d.request.cluster
            self._clusters[cluster] -= 1
            if not self._clusters[cluster]:
                del self._clusters[cluster]

    def update(self, changes: Sequence[tuple[str, QueuedRow | None]] | None, rows: Sequence[QueuedRow],
               usage: Mapping[tuple[str, str], float]) -> None:
        """Apply the store's changes (or, when it has none to give, its whole queue `rows`) and order."""
        fresh: list[_Derived] = []
        if changes is None:
            known = self.runs
            self.runs, self._clusters, self._order, self._usage, self._left = {}, {}, [], None, 0
            for row in rows:
                d = known.get(row.id)
                if d is None or d.row is not row:
                    d = _derive(row)
                self._add(d)
        else:
            for run_id, entered in changes:
                self._drop(run_id)
                if entered is not None:
                    d = _derive(entered)
                    self._add(d)
                    fresh.append(d)
            fresh = [d for d in fresh if self._current(d)]
        if self._left > len(self.runs):
            self._order = [d for d in self._order if self._current(d)]
            self._left = 0
        if usage is self._usage:
            if not fresh:
                return
            ordered = queue_order([d.queued for d in fresh], usage)
            last = next((d for d in reversed(self._order) if self._current(d)), None)
            if last is None or queue_order([last.queued, ordered[0]], usage)[0] is last.queued:
                self._order.extend(self.runs[q.run_id] for q in ordered)
                return
        self._order = [self.runs[q.run_id] for q in queue_order([d.queued for d in self.runs.values()], usage)]
        self._usage, self._left = usage, 0

    def ordered(self) -> list[_Derived]:
        """Every queued run, in order."""
        if self._left:
            self._order = [d for d in self._order if self._current(d)]
            self._left = 0
        return list(self._order)

    def prefix(self, per_cluster: int) -> list[_Derived]:
        """The first `per_cluster` runs of each cluster, in order."""
        wanted = {cluster: min(count, per_cluster) for cluster, count in self._clusters.items()}
        clusters_left = len(wanted)
        taken: dict[str, int] = {}
        prefix = []
        for d in self._order:
            if not clusters_left:
                break
            if not self._current(d):
                continue
            cluster = d.request.cluster
            seen = taken.get(cluster, 0)
            if seen < wanted[cluster]:
                taken[cluster] = seen = seen + 1
                prefix.append(d)
                if seen == wanted[cluster]:
                    clusters_left -= 1
        return prefix


def _environment_note(request: Request, members: Sequence[Placement], names: Sequence[str]) -> str:
    """What the placement event says of the run's environment: built already on the node(s) chosen, or not."""
    if not request.env_hash:
        return ""
    built = [name for p, name in zip(members, names) if p.env_built]
    if len(members) == 1:
        return " (environment already built there)" if built else " (environment to be built there)"
    return f" (environment already built on {', '.join(built)})" if built else " (environment to be built on each)"


class Dispatcher:
    def __init__(
        self, *, store: Store, sessions: Sessions, followers: Followers,
        quotas: Mapping[tuple[str, str], int] | None = None, half_life_s: float = 7 * 86400.0,
        heartbeat_window_s: float = 20.0, clock: Clock | None = None,
    ) -> None:
        self._clock = clock or SystemClock()
        self._store = store
        self._window_s = heartbeat_window_s     # a node not heard from for this long takes no new runs
        self._sessions = sessions
        self._followers = followers
        self._quotas = dict(quotas or {})
        self._half_life_s = half_life_s
        # Set by the autoscaler when there is one: nodes it is starting per cluster, and its wake-up.
        self.starting: Callable[[], dict[str, int]] = dict
        self.on_demand: Callable[[], None] = lambda: None
        self._wake = asyncio.Event()
        self._urgent = asyncio.Event()          # ends the pause between passes
        self._reasons: dict[str, Pending] = {}  # pending reasons as last written, so a pass writes only changes
        self._full_at = -math.inf              # clock time of the last full pass
        self._full_due: float | None = None    # when a full pass is owed to the runs quick passes left out
        self._usage: dict[tuple[str, str], float] = {}
        self._usage_at = -math.inf
        self._queue = _Queue()
        self._waiting: list[Request] = []
        self._demand: list[Demand] | None = []
        self.took_s = 0.0                       # how long the last pass took
        self.on_pass: Callable[[float], None] = lambda seconds: None   # told each pass's seconds (the metrics)

    @property
    def demand(self) -> list[Demand]:
        """Queued runs the last pass could not place for lack of capacity."""
        if self._demand is None:    # as of the last full pass, less what was placed since
            self._demand = [Demand(r.cluster, r.cpus, r.memory_bytes, r.gpus, r.nodes) for r in self._waiting
                            if r.run_id in self._queue.runs]
        return self._demand

    def wake(self) -> None:
        """Capacity may have changed (a run ended, a node came, went or changed): pass as soon as possible."""
        self._wake.set()
        self._urgent.set()

    def queue_grew(self) -> None:
        """A run was queued: the next pass, paced when the dispatcher is busy, considers it."""
        self._wake.set()

    async def run(self) -> None:
        """Run scheduling passes until cancelled."""
        backoff_s = 0.1
        while True:
            due = self._full_due
            woken = await wait_event(self._clock, self._wake, None if due is None else due - self._clock.now())
            owed = not woken    # the full pass quick passes put off
            self._wake.clear()
            self._urgent.clear()
            try:
                await self.pass_once(full=True if owed else None)
                backoff_s = 0.1
            except Exception:
                log.exception("scheduling pass failed", extra={"retry_in_s": backoff_s})
                await self._clock.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 5.0)
                self._wake.set()
                continue
            # Wake-ups that come meanwhile are served by the next pass: a bounded share of the CPU for passes.
            await wait_event(self._clock, self._urgent, min(self.took_s * PAUSE_PER_PASS, MAX_PAUSE_S))

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
        await self._refresh()
        return [d.row for d in self._queue.ordered()]

    async def _refresh(self) -> None:
        """Bring the ordered queue up to date with the store (no awaiting between the two reads of the store)."""
        usage = await self.usage()
        changes = self._store.queue_changes()
        self._queue.update(changes, await self._store.queued() if changes is None else (), usage)

    def views(self, live: Sequence[LiveRow]) -> list[NodeView]:
        """Nodes that may take new runs (connected, Ready, heard from within the heartbeat window, active) with
        what their live attempts leave free."""
        used: dict[str, tuple[float, int, set[int]]] = {}
        for a in live:
            held = used.get(a.node_id, (0.0, 0, set()))
            used[a.node_id] = (held[0] + a.cpus, held[1] + a.memory_bytes, held[2] | set(a.gpu_indices))
        views = []
        now = self._store.clock()
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
                    schedulable=self._sessions.takes_new_runs(s.node_id, now, self._window_s),
                    labels=s.labels,
                    gpu_specs=tuple((g.index, g.model, g.memory_bytes) for g in s.capacity.gpus),
                    pythons=s.pythons,
                    builders=s.builders,
                    env_hashes=s.env_hashes,
                )
            )
        return views

    async def pass_once(self, *, full: bool | None = None) -> int:
        """One scheduling pass; returns how many runs it placed. Full when asked, or when the last full pass is
        FULL_PASS_EVERY_S old, else quick (see the module docstring)."""
        started = time.perf_counter()
        try:
            return await self._pass(full)
        finally:
            self.took_s = time.perf_counter() - started
            self.on_pass(self.took_s)

    async def _pass(self, full: bool | None) -> int:
        await self._refresh()
        if not self._queue:
            self._reasons.clear()
            self._full_due = None
            self._waiting, self._demand = [], []
            return 0
        live = await self._store.live_attempts()
        if full is None:
            full = self._clock.now() - self._full_at >= FULL_PASS_EVERY_S
        queued = self._queue.ordered() if full else self._queue.prefix(PREFIX_PER_CLUSTER)
        full = full or len(queued) == len(self._queue)
        now = self._store.clock()
        requests = [d.request for d in queued]
        running = [
            Running(a.node_id, a.workspace, a.compute, a.cpus, a.memory_bytes, a.gpu_indices,
                    (a.started_at or now) + a.timeout_s if a.timeout_s else math.inf)
            for a in live
        ]
        plan = place(requests, self.views(live), running=running, now=now, quotas=self._quotas)
        by_id = self._queue.runs
        if full:
            self._waiting = [by_id[i].request for i in plan.waiting]
            self._full_at, self._full_due = self._clock.now(), None
        elif self._full_due is None:
            self._full_due = self._full_at + FULL_PASS_EVERY_S
        self._demand = None
        reasons = self._reasons_to_write(plan.pending, by_id) if full else {}
        if plan.waiting:
            self.on_demand()
        gangs: dict[str, list[Placement]] = {}
        for p in plan.placements:
            gangs.setdefault(p.run_id, []).append(p)
        if not gangs:
            await self._store.set_pending_reasons(reasons)
            return 0
        # Together, so that they share one group commit; each sends its assignment once its own commit returned.
        done = await asyncio.gather(
            *(self._commit(run_id, sorted(members, key=lambda p: p.rank), by_id[run_id].request)
              for run_id, members in gangs.items()),
            self._store.set_pending_reasons(reasons), return_exceptions=True,
        )
        placed = 0
        for result in done:         # the placements' counts, then None from set_pending_reasons
            if isinstance(result, BaseException):
                raise result
            placed += result or 0
        return placed

    async def _commit(self, run_id: str, members: list[Placement], request: Request) -> int:
        """Commit one run's placement, then send its assignment(s); 0 if it was canceled meanwhile."""
        names = [self._sessions.name(p.node_id) for p in members]
        detail = f"placed on {', '.join(names)}" + _environment_note(request, members, names)
        try:
            if len(members) == 1:
                p = members[0]
                runs = [await self._store.transition(
                    run_id, Trigger.ASSIGN, node_id=p.node_id, gpu_indices=p.gpu_indices, pending_reason="",
                    detail=detail,
                )]
            else:
                parent, runs = await self._store.assign_gang(
                    run_id, [(p.node_id, p.gpu_indices) for p in members], detail=detail,
                    rendezvous=[self._rendezvous(p.node_id) for p in members])
                self._followers.notify(parent.id)
        except InvalidTransition:
            return 0
        except Conflict as err:     # no block of rendezvous ports is free on all its nodes: it waits for a later pass
            log.warning("gang not placed", extra={"run_id": run_id, "why": str(err)})
            return 0
        for run in runs:
            log.info("run assigned", extra={"run_id": run.id, "node": self._sessions.name(run.node_id),
                                            "attempt": run.attempt})
            self._sessions.send(run.node_id, Assign(run))
            self._followers.notify(run.id)
        return 1

    def _rendezvous(self, node_id: str) -> RendezvousRange:
        """A gang member's part of the rendezvous: the node's advertised address (else the address it connected
        to the head from) and its rendezvous port range."""
        session = self._sessions.get(node_id)
        if session is None:
            return RendezvousRange("127.0.0.1", 29500, 29999)
        cap = session.capacity
        return RendezvousRange(cap.advertise_address or peer_host(session.peer) or "127.0.0.1",
                               cap.rendezvous_port_min, cap.rendezvous_port_max)

    def _reasons_to_write(self, pending: dict[str, Pending], derived: Mapping[str, _Derived]) -> dict[str, Pending]:
        """The pending reasons of a full pass that differ from those last written."""
        starting = self.starting()
        if starting:
            pending = {
                run_id: Pending(reason.kind, f"{reason.text}; autoscaler starting {starting[derived[run_id].request.cluster]}")
                if starting.get(derived[run_id].request.cluster) and reason.kind is not PendingKind.QUOTA else reason
                for run_id, reason in pending.items()
            }
        written, self._reasons = self._reasons, dict(pending)
        return {run_id: reason for run_id, reason in pending.items() if written.get(run_id) != reason}


def peer_host(peer: str) -> str:
    """The host of a gRPC peer string: 'ipv4:10.0.0.5:4411' -> '10.0.0.5', 'ipv6:[::1]:4411' -> '::1'."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]")
    return ""
