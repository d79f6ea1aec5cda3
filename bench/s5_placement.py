"""S5: one full scheduling pass, 10,000 queued runs x 1,000 nodes with 8 GPUs each (goal: <= 200 ms).

Measures `scheduler.placement.place()` (the pure pass the dispatcher runs) and, in the same run, a straightforward
peer: the same policy by scanning every node for every run, which is what the index in `place()` replaces.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence

sys.path.insert(0, str(__import__('pathlib').Path(__file__).resolve().parent))
sys.path.insert(0, str(__import__('pathlib').Path(__file__).resolve().parents[1]))
from common import row  # noqa: E402
from scheduler.core.lifecycle import Pending, PendingKind
from scheduler.placement import NodeView, Plan, Placement, Request, pending_reason, place

GOAL_S = 0.200


def workload(runs: int, nodes: int, seed: int = 1) -> tuple[list[Request], list[NodeView]]:
    rng = random.Random(seed)
    views = [NodeView(f"n{i}", f"node-{i:04d}", "a100", 64.0, 512 * 2**30, tuple(range(8)), 64.0, 512 * 2**30, 8)
             for i in range(nodes)]
    queue = [Request(f"r{i}", "a100", rng.choice([1, 2, 4, 8]), rng.choice([4, 16, 64]) * 2**30,
                     rng.choice([0, 1, 2, 4, 8])) for i in range(runs)]
    return queue, views


def scan_place(queue: Sequence[Request], nodes: Sequence[NodeView]) -> Plan:
    """The peer: the same policy, choosing each run's node by scanning every node."""
    free = {n.id: n for n in nodes}
    placements, pending, blocked = [], {}, set()
    for req in queue:
        if req.cluster in blocked:
            pending[req.run_id] = Pending(PendingKind.BEHIND, "blocked")
            continue
        fits = [n for n in free.values() if n.cluster == req.cluster and n.fits(req)]
        if not fits:
            pending[req.run_id] = pending_reason(req, list(free.values()))
            blocked.add(req.cluster)
            continue
        best = min(fits, key=lambda n: (len(n.gpus_free) - req.gpus, -n.cpus_free, n.name))
        free[best.id], gpus = best.take(req)
        placements.append(Placement(req.run_id, best.id, gpus))
    return Plan(tuple(placements), pending)


def timed(fn: Callable[[], Plan], repeats: int) -> tuple[list[float], Plan]:
    fn()  # warm-up
    samples, plan = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        plan = fn()
        samples.append(time.perf_counter() - start)
    return samples, plan  # type: ignore[return-value]


def summary(samples: list[float]) -> dict[str, float]:
    return {"median_ms": round(statistics.median(samples) * 1000, 2), "min_ms": round(min(samples) * 1000, 2),
            "max_ms": round(max(samples) * 1000, 2), "n": len(samples)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--nodes", type=int, default=1_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    queue, nodes = workload(args.runs, args.nodes)
    ours, plan = timed(lambda: place(queue, nodes), args.repeats)
    peer, peer_plan = timed(lambda: scan_place(queue, nodes), max(3, args.repeats // 2))
    same = [(p.run_id, p.node_id, p.gpu_indices) for p in plan.placements] == \
           [(p.run_id, p.node_id, p.gpu_indices) for p in peer_plan.placements]
    median = statistics.median(ours)
    print(json.dumps({
        "scenario": "S5",
        "what": f"one scheduling pass, {args.runs} queued runs x {args.nodes} nodes with 8 GPUs",
        "placed": len(plan.placements), "pending": len(plan.pending),
        "place": summary(ours), "peer_full_scan": summary(peer), "same_plan_as_peer": same,
        "goal_ms": GOAL_S * 1000, "ratio_to_goal": round(median / GOAL_S, 3),
        "speedup_over_peer": round(statistics.median(peer) / median, 1),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "table": [row("one pass, 10k runs x 1k nodes", median * 1000, "ms", GOAL_S * 1000, "<=",
                      peer="full scan of every node", peer_ratio=round(median / statistics.median(peer), 3), digits=1)],
    }))


if __name__ == "__main__":
    main()
