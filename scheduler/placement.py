"""Placement: which queued run goes on which node(s), as a pure function of (queue, nodes, running). No I/O.

`place()` takes the queue in the order it must be considered (`fairshare.queue_order`), the nodes with what is
free on them and the live attempts, and returns a plan: placements to commit and, for every run left queued, the
one-line reason why.

Policy, per compute cluster:
- FIFO with EASY backfill. The first run that does not fit gets a reservation: the earliest time the live runs'
  time limits free enough for it. A later run may start ahead of it only if it fits now and its own time limit
  ends before that reserved start, so it cannot delay it; a run without a time limit never backfills, and when the
  reservation waits on a run without a limit nothing backfills. A large run is never starved by small ones.
- A run over its workspace's GPU quota in the cluster waits with that reason and blocks nobody.
- GPU runs go to the node where they fit most tightly (fewest usable free GPUs left over), so whole nodes stay
  free for large runs; CPU-only runs prefer nodes without free GPUs, then the node with the most free CPUs.
- A run with an environment goes only to nodes that can build it (the python it asks for, a conda builder for
  conda packages, a container runtime for an image). Among nodes where it fits equally tightly (the same free
  GPUs left over) one that has its environment built already comes first, before the spread by free CPUs: a
  build costs minutes, the spread only balances. `Placement.env_built` says which it was.
- A multi-node run (gang) gets all its nodes in the same pass or none.
Concrete GPU indices are chosen here; nothing is over-committed.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from runyard.units import format_size, plural
from scheduler.core.lifecycle import Pending, PendingKind

CONDA_BUILDERS = frozenset({"micromamba", "conda"})
CONTAINER_RUNTIMES = frozenset({"podman", "docker", "apptainer"})


def minor_versions(interpreters: Iterable[str]) -> frozenset[str]:
    """MAJOR.MINOR of each interpreter version a node reports (`3.11.7` -> `3.11`)."""
    found = set()
    for version in interpreters:
        parts = version.split(".")
        if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit():
            found.add(f"{int(parts[0])}.{int(parts[1])}")
    return frozenset(found)


@dataclass(frozen=True, slots=True)
class Request:
    run_id: str
    cluster: str
    cpus: float                         # per node
    memory_bytes: int                   # per node
    gpus: int                           # per node
    nodes: int = 1                      # a gang: this many nodes at once
    workspace: str = "default"
    gpu_model: str = ""                 # only GPUs whose model contains this, case-insensitive
    gpu_memory_bytes: int = 0           # only GPUs with at least this much memory
    labels: tuple[tuple[str, str], ...] = ()   # only nodes carrying all of these
    timeout_s: float = 0.0              # 0: no time limit (cannot backfill)
    env_hash: str = ""                  # its environment: nodes that have it built come first
    python: str = ""                    # what building it needs of a node: this python (MAJOR.MINOR),
    conda: bool = False                 # a conda builder,
    image: bool = False                 # a container runtime

    @property
    def gpu_filtered(self) -> bool:
        return bool(self.gpu_model or self.gpu_memory_bytes)


@dataclass(frozen=True, slots=True)
class NodeView:
    id: str
    name: str
    cluster: str
    cpus_free: float
    memory_free: int
    gpus_free: tuple[int, ...]          # free GPU indices
    cpus_total: float
    memory_total: int
    gpus_total: int
    schedulable: bool = True            # False: disconnected, draining, cordoned, quarantined
    labels: Mapping[str, str] = field(default_factory=dict)
    gpu_specs: tuple[tuple[int, str, int], ...] = ()    # (index, model, memory bytes) of every GPU
    pythons: frozenset[str] | None = None               # MAJOR.MINOR it has; None: not known (a node to be added)
    builders: frozenset[str] | None = None              # its environment builders; None: not known
    env_hashes: frozenset[str] = frozenset()            # the environments it has built

    def can_build(self, req: Request) -> bool:
        """Whether the node has what building the request's environment needs (a node not known yet has)."""
        return (
            (not req.python or self.pythons is None or req.python in self.pythons)
            and (not req.conda or self.builders is None or bool(self.builders & CONDA_BUILDERS))
            and (not req.image or self.builders is None or bool(self.builders & CONTAINER_RUNTIMES))
        )

    def has_built(self, req: Request) -> bool:
        return bool(req.env_hash) and req.env_hash in self.env_hashes

    def usable_gpus(self, req: Request, among: tuple[int, ...] | None = None) -> tuple[int, ...]:
        """The GPUs of `among` (default: the free ones) that match the request's model and memory filters."""
        gpus = self.gpus_free if among is None else among
        if not req.gpu_filtered:
            return gpus
        model = req.gpu_model.lower()
        specs = {index: (m.lower(), mem) for index, m, mem in self.gpu_specs}
        return tuple(
            g for g in gpus if g in specs and model in specs[g][0] and specs[g][1] >= req.gpu_memory_bytes
        )

    def has_labels(self, req: Request) -> bool:
        return not req.labels or all(self.labels.get(key) == value for key, value in req.labels)

    def fits(self, req: Request) -> bool:
        return (
            self.schedulable
            and req.cpus <= self.cpus_free + 1e-9
            and req.memory_bytes <= self.memory_free
            and req.gpus <= len(self.gpus_free)
            and (not req.labels or self.has_labels(req))
            and (not req.gpu_filtered or req.gpus <= len(self.usable_gpus(req)))
            and (not (req.python or req.conda or req.image) or self.can_build(req))
        )

    def could_ever_fit(self, req: Request) -> bool:
        if not (req.cpus <= self.cpus_total + 1e-9 and req.memory_bytes <= self.memory_total):
            return False
        if (req.python or req.conda or req.image) and not self.can_build(req):
            return False
        if req.gpu_filtered:
            every_gpu = tuple(index for index, _, _ in self.gpu_specs)
            return req.gpus <= len(self.usable_gpus(req, every_gpu)) and self.has_labels(req)
        return req.gpus <= self.gpus_total and self.has_labels(req)

    def take(self, req: Request) -> tuple[NodeView, tuple[int, ...]]:
        gpus = self.usable_gpus(req)[: req.gpus]
        rest = replace(
            self,
            cpus_free=self.cpus_free - req.cpus,
            memory_free=self.memory_free - req.memory_bytes,
            gpus_free=tuple(g for g in self.gpus_free if g not in gpus),
        )
        return rest, gpus

    def give_back(self, cpus: float, memory_bytes: int, gpus: tuple[int, ...]) -> NodeView:
        return replace(
            self, cpus_free=self.cpus_free + cpus, memory_free=self.memory_free + memory_bytes,
            gpus_free=tuple(sorted(self.gpus_free + gpus)),
        )


@dataclass(frozen=True, slots=True)
class Running:
    """A live attempt: what it holds on its node, whose it is, and when its time limit frees it."""

    node_id: str
    workspace: str
    cluster: str
    cpus: float
    memory_bytes: int
    gpu_indices: tuple[int, ...]
    ends_at: float = math.inf           # start + time limit; inf without one


@dataclass(frozen=True, slots=True)
class Placement:
    run_id: str
    node_id: str
    gpu_indices: tuple[int, ...]
    rank: int = 0                       # node rank within a gang
    env_built: bool = False             # the node has the run's environment built already


@dataclass(frozen=True, slots=True)
class Plan:
    placements: tuple[Placement, ...]
    pending: dict[str, Pending]         # run id -> why it stays queued
    waiting: tuple[str, ...] = ()       # pending runs that wait for capacity (not for quota): autoscaler demand


class _Pool:
    """What is free on the schedulable nodes of one cluster, indexed for best fit.

    Nodes are bucketed by their number of free GPUs; in each bucket a heap orders them by most free CPUs. A
    node that changes is pushed again and its old heap entry is dropped when it reaches the top (lazy deletion),
    so one placement costs O(buckets + log nodes) instead of a scan of every node.
    """

    def __init__(self, nodes: Sequence[NodeView]) -> None:
        self.nodes = {n.id: n for n in nodes}
        self._heaps: dict[int, list[tuple[float, str, str]]] = {}
        self._built: dict[str, list[str]] = {}     # environment hash -> the nodes that have it built
        for node in nodes:
            self._push(node)
            for env_hash in node.env_hashes:
                self._built.setdefault(env_hash, []).append(node.id)

    def _push(self, node: NodeView) -> None:
        heapq.heappush(self._heaps.setdefault(len(node.gpus_free), []), (-node.cpus_free, node.name, node.id))

    def _current(self, entry: tuple[float, str, str], free_gpus: int) -> bool:
        node = self.nodes[entry[2]]
        return len(node.gpus_free) == free_gpus and node.cpus_free == -entry[0]

    def best(self, req: Request) -> NodeView | None:
        """The node where `req` fits most tightly: fewest free GPUs left over, then one that has its environment
        built, then most free CPUs."""
        built = [self.nodes[n] for n in self._built.get(req.env_hash, ())] if req.env_hash else []
        for free_gpus in sorted(k for k in self._heaps if k >= req.gpus):
            if built:
                ready = [n for n in built if len(n.gpus_free) == free_gpus and n.fits(req)]
                if ready:
                    return min(ready, key=lambda n: (-n.cpus_free, n.name))
            heap = self._heaps[free_gpus]
            while heap and not self._current(heap[0], free_gpus):
                heapq.heappop(heap)
            if not heap:
                continue
            top = self.nodes[heap[0][2]]
            if top.fits(req):
                return top
            # The node with the most free CPUs does not fit (memory, labels, GPU model): look at the rest.
            fitting = [self.nodes[e[2]] for e in heap if self._current(e, free_gpus) and self.nodes[e[2]].fits(req)]
            if fitting:
                return min(fitting, key=lambda n: (-n.cpus_free, n.name))
        return None

    def best_set(self, req: Request) -> list[NodeView]:
        """`req.nodes` distinct nodes that each fit `req`, tightest first; [] unless all of them can be had."""
        if req.nodes == 1:
            best = self.best(req)
            return [best] if best else []
        fitting = sorted(
            (n for n in self.nodes.values() if n.fits(req)),
            key=lambda n: (len(n.usable_gpus(req)), not n.has_built(req), -n.cpus_free, n.name),
        )
        return fitting[: req.nodes] if len(fitting) >= req.nodes else []

    def take(self, node: NodeView, req: Request) -> tuple[int, ...]:
        rest, gpus = node.take(req)
        self.nodes[node.id] = rest
        self._push(rest)
        return gpus


@dataclass(slots=True)
class _Blocked:
    """The first run of a cluster that could not start, and when it is reserved to (math.inf: unknown)."""

    run_id: str
    start: float
    behind: int = 0


def place(
    queue: Sequence[Request],
    nodes: Sequence[NodeView],
    *,
    running: Sequence[Running] = (),
    now: float = 0.0,
    quotas: Mapping[tuple[str, str], int] | None = None,
) -> Plan:
    """Place as many runs of `queue` (in order) as fit on `nodes`, by the policy in the module docstring.

    `running` are the live attempts (for quota use and reserved starts), `quotas` maps (workspace, cluster) to
    the GPUs that workspace may hold there.
    """
    quotas = quotas or {}
    by_cluster: dict[str, list[NodeView]] = {}
    for node in nodes:
        by_cluster.setdefault(node.cluster, []).append(node)
    pools = {cluster: _Pool([n for n in members if n.schedulable]) for cluster, members in by_cluster.items()}
    gpus_used: dict[tuple[str, str], int] = {}
    releases: dict[str, list[tuple[float, str, float, int, tuple[int, ...]]]] = {}
    for r in running:
        gpus_used[(r.workspace, r.cluster)] = gpus_used.get((r.workspace, r.cluster), 0) + len(r.gpu_indices)
        releases.setdefault(r.cluster, []).append((r.ends_at, r.node_id, r.cpus, r.memory_bytes, r.gpu_indices))
    placements: list[Placement] = []
    pending: dict[str, Pending] = {}
    waiting: list[str] = []
    blocked: dict[str, _Blocked] = {}
    unfit: dict[str, set[_Shape]] = {}         # cluster -> request shapes that did not fit (free space only shrinks)
    reasons: dict[tuple[str, int, _Shape], Pending] = {}    # (cluster, placements so far, shape) -> pending reason
    for req in queue:
        quota = quotas.get((req.workspace, req.cluster))
        used = gpus_used.get((req.workspace, req.cluster), 0)
        if quota is not None and req.gpus and used + req.gpus * req.nodes > quota:
            pending[req.run_id] = Pending(PendingKind.QUOTA,
                                          f"over quota: {req.workspace} uses {used} of {quota} GPUs in {req.cluster}")
            continue
        pool = pools.get(req.cluster)
        ahead = blocked.get(req.cluster)
        why_not = _cannot_backfill(req, ahead, now)
        shape = _shape(req)
        misfits = unfit.setdefault(req.cluster, set())
        chosen = pool.best_set(req) if pool and not why_not and shape not in misfits else []
        if not chosen:
            fits_now = bool(why_not) and pool is not None and shape not in misfits and bool(pool.best_set(req))
            if not fits_now:
                misfits.add(shape)
            key = (req.cluster, len(placements), shape)
            if key not in reasons:
                members = [pool.nodes.get(n.id, n) if pool else n for n in by_cluster.get(req.cluster, [])]
                reasons[key] = pending_reason(req, members)
            own = reasons[key]
            waiting.append(req.run_id)
            if ahead is None:
                pending[req.run_id] = own
                if own.kind is PendingKind.CAPACITY:    # it could fit once runs end: reserve its start
                    blocked[req.cluster] = _Blocked(req.run_id, _reserved_start(req, pool, releases.get(req.cluster, ())))
                continue
            ahead.behind += 1
            runs = f"{plural(ahead.behind, 'run')} ahead"
            pending[req.run_id] = (Pending(PendingKind.BEHIND, f"{runs} in cluster {req.cluster}; cannot backfill: {why_not}")
                                   if fits_now else Pending(own.kind, f"{own.text}; {runs}"))
            continue
        assert pool is not None
        for rank, node in enumerate(chosen):
            gpus = pool.take(node, req)
            placements.append(Placement(req.run_id, node.id, gpus, rank, env_built=node.has_built(req)))
            ends_at = now + req.timeout_s if req.timeout_s else math.inf
            releases.setdefault(req.cluster, []).append((ends_at, node.id, req.cpus, req.memory_bytes, gpus))
        gpus_used[(req.workspace, req.cluster)] = used + req.gpus * req.nodes
    return Plan(tuple(placements), pending, tuple(waiting))


# What a request asks of one node: requests of the same shape fit or do not fit alike.
_Shape = tuple[float, int, int, int, str, int, tuple[tuple[str, str], ...], str, bool, bool]


def _shape(req: Request) -> _Shape:
    return (req.cpus, req.memory_bytes, req.gpus, req.nodes, req.gpu_model, req.gpu_memory_bytes, req.labels,
            req.python, req.conda, req.image)


def _cannot_backfill(req: Request, ahead: _Blocked | None, now: float) -> str:
    """Why `req` may not start ahead of the blocked run `ahead`; '' if it cannot delay its reserved start."""
    if ahead is None:
        return ""
    if not req.timeout_s:
        return "it has no time limit"
    if math.isinf(ahead.start):
        return f"run {ahead.run_id} waits on runs without a time limit"
    if now + req.timeout_s > ahead.start:
        return f"its time limit would delay run {ahead.run_id}, reserved to start in {ahead.start - now:.0f}s"
    return ""


def _reserved_start(
    req: Request, pool: _Pool | None, releases: Sequence[tuple[float, str, float, int, tuple[int, ...]]]
) -> float:
    """The earliest time the live runs' time limits free enough for `req`; math.inf when no limit ever does."""
    if pool is None:
        return math.inf
    free = dict(pool.nodes)
    fitting = sum(1 for n in free.values() if n.fits(req))
    for ends_at, node_id, cpus, memory, gpus in sorted(r for r in releases if not math.isinf(r[0])):
        node = free.get(node_id)
        if node is None:
            continue
        was = node.fits(req)
        free[node_id] = node = node.give_back(cpus, memory, gpus)
        fitting += int(node.fits(req) and not was)
        if fitting >= req.nodes:
            return ends_at
    return math.inf


def pending_reason(req: Request, nodes: Sequence[NodeView]) -> Pending:
    """Why `req` cannot start now on any of `nodes` (all of its cluster), in one line."""
    up = [n for n in nodes if n.schedulable]
    if not up:
        held = f" ({len(nodes)} cordoned, draining or quarantined)" if nodes else ""
        return Pending(PendingKind.NO_NODE, f"no node in cluster {req.cluster} is up{held}")
    never = never_fits(req, up)
    if never:
        return Pending(PendingKind.UNFIT, never)
    return Pending(PendingKind.CAPACITY, _waiting_for(req, up))


def _waiting_for(req: Request, up: Sequence[NodeView]) -> str:
    if req.nodes > 1:
        return (
            f"waiting for {req.nodes} nodes with {_describe(req)} each in cluster {req.cluster}; "
            f"{sum(1 for n in up if n.fits(req))} fit now"
        )
    builds = bool(req.python or req.conda or req.image)
    eligible = [n for n in up if n.has_labels(req) and (not builds or n.can_build(req))]
    if req.gpus and not any(len(n.usable_gpus(req)) >= req.gpus for n in eligible):
        best = max(eligible, key=lambda n: len(n.usable_gpus(req)))
        return (
            f"waiting for {req.gpus} {_gpu_kind(req)}GPUs on one node in cluster {req.cluster}; "
            f"largest free: {len(best.usable_gpus(req))} on {best.name}"
        )
    best = max(eligible, key=lambda n: (n.cpus_free, n.memory_free))
    return (
        f"waiting for {_describe(req)} in cluster {req.cluster}; largest free: {best.cpus_free:g} CPUs, "
        f"{format_size(best.memory_free)} on {best.name}"
    )


def never_fits(req: Request, nodes: Sequence[NodeView]) -> str:
    """Why no node of `nodes` could hold `req` even when empty; '' if enough could (or there are none to judge by)."""
    if not nodes:
        return ""
    able = 0
    for node in nodes:
        able += node.could_ever_fit(req)
        if able >= req.nodes:
            return ""
    missing = _cannot_build(req, nodes)
    if missing:
        return missing
    nodes = [n for n in nodes if n.can_build(req)]
    if able:
        return (f"cluster {req.cluster} has only {plural(able, 'node')} that can hold {_describe(req)}; the run asks "
                f"for {req.nodes}")
    if req.labels and not any(n.has_labels(req) for n in nodes):
        wanted = ", ".join(f"{k}={v}" for k, v in req.labels)
        return f"no node in cluster {req.cluster} has the labels {wanted}"
    largest = max(nodes, key=lambda n: (n.gpus_total, n.cpus_total, n.memory_total))
    return (
        f"no node in cluster {req.cluster} can hold {_describe(req)}; largest: {largest.name} with "
        f"{largest.cpus_total:g} CPUs, {format_size(largest.memory_total)}, {largest.gpus_total} GPUs"
        + (f" ({_models(largest)})" if req.gpu_filtered and largest.gpu_specs else "")
    )


def _cannot_build(req: Request, nodes: Sequence[NodeView]) -> str:
    """Why no node of `nodes` can build the request's environment, naming what is missing; '' if one can."""
    if any(n.can_build(req) for n in nodes):
        return ""
    needs: list[tuple[str, bool, str]] = []     # (what, some node has it, what the nodes have instead)
    if req.python:
        found = sorted(set().union(*(n.pythons or () for n in nodes)), key=lambda v: tuple(map(int, v.split("."))))
        needs.append((f"python {req.python}", any(req.python in (n.pythons or ()) for n in nodes),
                      f"they have {', '.join(found)}" if found else "none reports a python"))
    if req.conda:
        needs.append(("a conda builder (micromamba or conda) for its conda packages",
                      any(n.builders and n.builders & CONDA_BUILDERS for n in nodes), ""))
    if req.image:
        needs.append(("a container runtime (podman, docker or apptainer) for its image",
                      any(n.builders and n.builders & CONTAINER_RUNTIMES for n in nodes), ""))
    lacking = [f"{what} ({instead})" if instead else what for what, had, instead in needs if not had]
    if lacking:
        return f"no node in cluster {req.cluster} has {'; nor '.join(lacking)}"
    return f"no node in cluster {req.cluster} has all of {', '.join(what for what, _, _ in needs)}"


def _gpu_kind(req: Request) -> str:
    parts = [req.gpu_model] if req.gpu_model else []
    if req.gpu_memory_bytes:
        parts.append(f"{format_size(req.gpu_memory_bytes)}+")
    return " ".join(parts) + " " if parts else ""


def _models(node: NodeView) -> str:
    return ", ".join(sorted({f"{model} {format_size(memory)}" for _, model, memory in node.gpu_specs}))


def _describe(req: Request) -> str:
    text = f"{req.cpus:g} CPUs, {format_size(req.memory_bytes)}"
    return text + (f", {req.gpus} {_gpu_kind(req)}GPUs" if req.gpus else "")
