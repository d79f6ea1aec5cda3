"""Placement: which queued run goes on which node, as a pure function of (queue, nodes). No I/O.

`place()` takes the queue in the order it must be considered and the nodes with what is free on them, and
returns a plan: placements to commit and, for every run left queued, the one-line reason why.

Policy: strict FIFO per compute cluster. A run that does not fit blocks the runs behind it in its cluster, so a
large run is never starved by a stream of small ones. GPU runs go to the node where they fit most tightly (fewest
free GPUs left over), so whole nodes stay free for large runs; CPU-only runs prefer nodes without free GPUs,
then the node with the most free CPUs. Concrete GPU indices are chosen here; nothing is over-committed.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, replace

from runyard.units import format_size


@dataclass(frozen=True, slots=True)
class Request:
    run_id: str
    cluster: str
    cpus: float
    memory_bytes: int
    gpus: int


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
    schedulable: bool = True            # False: disconnected, draining, cordoned

    def fits(self, req: Request) -> bool:
        return (
            self.schedulable
            and req.cpus <= self.cpus_free + 1e-9
            and req.memory_bytes <= self.memory_free
            and req.gpus <= len(self.gpus_free)
        )

    def could_ever_fit(self, req: Request) -> bool:
        return req.cpus <= self.cpus_total + 1e-9 and req.memory_bytes <= self.memory_total and req.gpus <= self.gpus_total

    def take(self, req: Request) -> tuple[NodeView, tuple[int, ...]]:
        gpus = self.gpus_free[: req.gpus]
        rest = replace(
            self,
            cpus_free=self.cpus_free - req.cpus,
            memory_free=self.memory_free - req.memory_bytes,
            gpus_free=self.gpus_free[req.gpus :],
        )
        return rest, gpus


@dataclass(frozen=True, slots=True)
class Placement:
    run_id: str
    node_id: str
    gpu_indices: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Plan:
    placements: tuple[Placement, ...]
    pending: dict[str, str]             # run id -> reason it stays queued


class _Pool:
    """What is free on the schedulable nodes of one cluster, indexed for best fit.

    Nodes are bucketed by their number of free GPUs; in each bucket a heap orders them by most free CPUs. A
    node that changes is pushed again and its old heap entry is dropped when it reaches the top (lazy deletion),
    so one placement costs O(buckets + log nodes) instead of a scan of every node.
    """

    def __init__(self, nodes: Sequence[NodeView]) -> None:
        self.nodes = {n.id: n for n in nodes}
        self._heaps: dict[int, list[tuple[float, str, str]]] = {}
        for node in nodes:
            self._push(node)

    def _push(self, node: NodeView) -> None:
        heapq.heappush(self._heaps.setdefault(len(node.gpus_free), []), (-node.cpus_free, node.name, node.id))

    def _current(self, entry: tuple[float, str, str], free_gpus: int) -> bool:
        node = self.nodes[entry[2]]
        return len(node.gpus_free) == free_gpus and node.cpus_free == -entry[0]

    def best(self, req: Request) -> NodeView | None:
        """The node where `req` fits most tightly: fewest free GPUs left over, then most free CPUs."""
        for free_gpus in sorted(k for k in self._heaps if k >= req.gpus):
            heap = self._heaps[free_gpus]
            while heap and not self._current(heap[0], free_gpus):
                heapq.heappop(heap)
            if not heap:
                continue
            top = self.nodes[heap[0][2]]
            if top.fits(req):
                return top
            # The node with the most free CPUs does not fit (its memory may be short): look at the rest.
            fitting = [self.nodes[e[2]] for e in heap if self._current(e, free_gpus) and self.nodes[e[2]].fits(req)]
            if fitting:
                return min(fitting, key=lambda n: (-n.cpus_free, n.name))
        return None

    def take(self, node: NodeView, req: Request) -> tuple[int, ...]:
        rest, gpus = node.take(req)
        self.nodes[node.id] = rest
        self._push(rest)
        return gpus


def place(queue: Sequence[Request], nodes: Sequence[NodeView]) -> Plan:
    """Place as many runs of `queue` (in order) as fit on `nodes` without passing a blocked run of the same cluster."""
    by_cluster: dict[str, list[NodeView]] = {}
    for node in nodes:
        by_cluster.setdefault(node.cluster, []).append(node)
    pools = {cluster: _Pool([n for n in members if n.schedulable]) for cluster, members in by_cluster.items()}
    placements: list[Placement] = []
    pending: dict[str, str] = {}
    blocked: dict[str, int] = {}        # cluster -> queued runs ahead that could not be placed
    for req in queue:
        if req.cluster in blocked:
            blocked[req.cluster] += 1
            pending[req.run_id] = f"{blocked[req.cluster]} run(s) ahead in cluster {req.cluster}"
            continue
        pool = pools.get(req.cluster)
        best = pool.best(req) if pool else None
        if pool is None or best is None:
            members = [pool.nodes.get(n.id, n) if pool else n for n in by_cluster.get(req.cluster, [])]
            pending[req.run_id] = pending_reason(req, members)
            blocked[req.cluster] = 0
            continue
        placements.append(Placement(req.run_id, best.id, pool.take(best, req)))
    return Plan(tuple(placements), pending)


def pending_reason(req: Request, nodes: Sequence[NodeView]) -> str:
    """One line saying why `req` cannot start now on any of `nodes` (all of its cluster)."""
    asked = _describe(req)
    up = [n for n in nodes if n.schedulable]
    if not up:
        held = f" ({len(nodes)} cordoned or draining)" if nodes else ""
        return f"no node in cluster {req.cluster} is up{held}"
    never = never_fits(req, up)
    if never:
        return never
    if req.gpus and not any(len(n.gpus_free) >= req.gpus for n in up):
        best = max(up, key=lambda n: len(n.gpus_free))
        return (
            f"waiting for {req.gpus} GPUs on one node in cluster {req.cluster}; "
            f"largest free: {len(best.gpus_free)} on {best.name}"
        )
    best = max(up, key=lambda n: (n.cpus_free, n.memory_free))
    return (
        f"waiting for {asked} in cluster {req.cluster}; largest free: {best.cpus_free:g} CPUs, "
        f"{format_size(best.memory_free)} on {best.name}"
    )


def never_fits(req: Request, nodes: Sequence[NodeView]) -> str:
    """Why no node of `nodes` could hold `req` even when empty; '' if one could (or there are none to judge by)."""
    if not nodes or any(n.could_ever_fit(req) for n in nodes):
        return ""
    largest = max(nodes, key=lambda n: (n.gpus_total, n.cpus_total, n.memory_total))
    return (
        f"no node in cluster {req.cluster} can hold {_describe(req)}; largest: {largest.name} with "
        f"{largest.cpus_total:g} CPUs, {format_size(largest.memory_total)}, {largest.gpus_total} GPUs"
    )


def _describe(req: Request) -> str:
    text = f"{req.cpus:g} CPUs, {format_size(req.memory_bytes)}"
    return text + (f", {req.gpus} GPUs" if req.gpus else "")
