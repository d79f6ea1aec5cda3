"""S8: footprint. An idle head's and an idle agent's resident memory, the head's memory per queued run, and no
process per run on the head.

Goals (docs: /work/shared/design/performance.md): idle head <= 120 MB RSS, idle agent <= 80 MB RSS; <= 4 KB of
head memory per queued run; no process per run on the head.

A real head (testbed.harness, TLS) and one real agent (node-1, cluster `default`) are started and left idle
until the head's CPU is quiet; then each one's RSS (and USS, the memory only it holds) is sampled `--samples`
times and the median taken: the idle figures (the agent's own process; its children, if any, are listed apart).
The head's children are counted (recursively). Then `--runs` runs are submitted through `Runyard.Submit` to the
cluster `s8-empty`, which head.toml declares and no node belongs to: each is accepted and stays Queued (pending
kind `no_node`), held by the head's queue, its dispatcher's passes and its database, with no agent able to place
it. Once the head is quiet again its RSS is sampled the same way: (after - before) / runs is the memory per
queued run. Python keeps memory it freed for reuse, so the figure also holds what answering the submits left
behind: an upper bound of what the queue itself costs. The head's children are counted during the submits
(sampled every 20 ms from another thread) and after; a process per run would show as a count that grows with
the runs. For reference, the head is then restarted on its database and measured again once quiet: the memory
the queue holds in a head that did not answer the submits. The head is pinned to core 0 and this client to core 1.
Prints one JSON object on stdout; logs go to stderr.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil  # noqa: E402

import common  # noqa: E402
from common import PinPlan, emit, log, machine_info, metadata, row  # noqa: E402

MB = 1_000_000
GOAL_HEAD_MB = 120.0
GOAL_AGENT_MB = 80.0
GOAL_PER_RUN_KB = 4.0
EMPTY_CLUSTER = "s8-empty"
QUIET_SHARE = 0.03          # a process using under 3 % of one core over a window is taken as idle
QUIET_WINDOW_S = 0.5


def per_run_kb(before_mb: float, after_mb: float, runs: int) -> float:
    """Memory grown per run, in KB (10^3 bytes), from two readings in MB (10^6 bytes)."""
    return (after_mb - before_mb) * MB / 1000 / runs


def processes_started(before: int, most_during: int, after: int) -> int:
    """Processes the head gained over the submits: the more of those still there after and those seen at once
    during them (a process per run that ends quickly shows only during)."""
    return max(after - before, most_during - before, 0)


def wait_quiet(proc: psutil.Process, deadline_s: float = 120.0) -> float:
    """Wait until `proc` used under QUIET_SHARE of a core in two windows in a row; returns the seconds waited."""
    t0 = time.monotonic()
    quiet = 0
    while quiet < 2:
        before = sum(proc.cpu_times()[:2])
        time.sleep(QUIET_WINDOW_S)
        quiet = quiet + 1 if sum(proc.cpu_times()[:2]) - before < QUIET_SHARE * QUIET_WINDOW_S else 0
        if time.monotonic() - t0 > deadline_s:
            raise RuntimeError(f"pid {proc.pid} did not go quiet within {deadline_s} s")
    return time.monotonic() - t0


def memory(proc: psutil.Process, samples: int) -> dict[str, Any]:
    """Median RSS and USS in MB over `samples` readings 0.2 s apart."""
    rss, uss = [], []
    for n in range(samples):
        if n:
            time.sleep(0.2)
        info = proc.memory_full_info()
        rss.append(info.rss / MB)
        uss.append(info.uss / MB)
    return {"rss_mb": round(statistics.median(rss), 2), "uss_mb": round(statistics.median(uss), 2),
            "rss_min_mb": round(min(rss), 2), "rss_max_mb": round(max(rss), 2), "n": samples}


def children(proc: psutil.Process) -> list[dict[str, Any]]:
    out = []
    for child in proc.children(recursive=True):
        try:
            out.append({"pid": child.pid, "name": child.name(), "rss_mb": round(child.memory_info().rss / MB, 2)})
        except psutil.Error:
            pass
    return out


class ChildWatch:
    """The most children `proc` had at once, sampled every 20 ms from a thread of its own."""

    def __init__(self, proc: psutil.Process) -> None:
        self._proc = proc
        self._stop = threading.Event()
        self.most = 0
        self.samples = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.most = max(self.most, len(self._proc.children(recursive=True)))
                self.samples += 1
            except psutil.Error:
                return

    def __enter__(self) -> ChildWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def submit_runs(stub: Any, md: Any, sha: str, count: int) -> list[str]:
    from protos import runyard_pb2 as pb

    spec = pb.RunSpec(argv=["python", "train.py", "--epochs", "10"], compute=EMPTY_CLUSTER)
    return [stub.Submit(pb.SubmitRequest(
        experiment=f"bench-s8-{i % 7}", display_name=f"run {i}", tags={"team": "bench", "i": str(i)},
        snapshot_sha256=sha, spec=spec, idempotency_key=uuid.uuid4().hex), metadata=md, timeout=30).run_id
        for i in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="1,000 runs, 5 samples (smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.samples = 1000, 5
    common.exit_on_sigterm()

    from protos import runyard_pb2 as pb
    from protos import runyard_pb2_grpc as pb_grpc
    from testbed.harness import Cluster

    root = common.temp_root("runyard-bench-s8-")
    machine = machine_info(root)
    plan = PinPlan.make()
    cluster = Cluster.start(root, agents=1, head_settings={"clusters": {"default": {}, EMPTY_CLUSTER: {}}})
    figures: dict[str, Any] = {}
    try:
        head = psutil.Process(cluster.head.proc.pid)          # type: ignore[union-attr]
        agent = psutil.Process(cluster.agents[0].proc.pid)    # type: ignore[union-attr]
        plan.apply("head", head.pid)
        if plan.enabled:
            common.pin_self(plan.generator_cpus)
        config = cluster.head.client_config()
        channel = common.channel(config)
        stub = pb_grpc.RunyardStub(channel)
        md = metadata(config.token)
        snap = common.make_snapshot(root)
        common.upload_snapshot(stub, config.token, snap)     # its check is a process of its own; it ends here

        figures["head_quiet_after_s"] = round(wait_quiet(head), 2)
        figures["agent_quiet_after_s"] = round(wait_quiet(agent), 2)
        figures["idle_head"] = memory(head, args.samples)
        figures["idle_agent"] = memory(agent, args.samples)
        figures["agent_children"] = children(agent)
        figures["head_children_before"] = children(head)
        log(f"idle head {figures['idle_head']}; idle agent {figures['idle_agent']}")

        t = time.monotonic()
        with ChildWatch(head) as watch:
            ids = submit_runs(stub, md, snap.sha256, args.runs)
        figures["submit_s"] = round(time.monotonic() - t, 1)
        figures["head_children_most_during"] = watch.most
        figures["child_samples_during"] = watch.samples
        log(f"submitted {len(ids)} runs in {figures['submit_s']} s")
        figures["head_quiet_after_submits_s"] = round(wait_quiet(head), 2)
        queue = stub.ListQueue(pb.QueueRequest(compute=EMPTY_CLUSTER), metadata=md, timeout=120).runs
        figures["queued"] = sum(r.state == pb.RUN_STATE_QUEUED for r in queue)
        figures["pending_reasons"] = sorted({r.pending_reason for r in queue})[:5]
        # ListQueue built its answer in the head: let that settle too before the reading that counts.
        wait_quiet(head)
        figures["head_with_queue"] = memory(head, args.samples)
        figures["head_children_after"] = children(head)
        channel.close()
        # For reference: the same queue loaded by a head restarted on the database, without what answering 10,000
        # submits left in its allocator.
        cluster.head.stop()
        cluster.head.start()
        restarted = psutil.Process(cluster.head.proc.pid)     # type: ignore[union-attr]
        plan.apply("head", restarted.pid)
        cluster.wait_nodes_ready(1)
        wait_quiet(restarted)
        figures["head_restarted_with_queue"] = memory(restarted, args.samples)
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)

    per_run = per_run_kb(figures["idle_head"]["rss_mb"], figures["head_with_queue"]["rss_mb"], args.runs)
    uss_per_run = per_run_kb(figures["idle_head"]["uss_mb"], figures["head_with_queue"]["uss_mb"], args.runs)
    figures["per_queued_run_kb"] = round(per_run, 3)
    figures["per_queued_run_uss_kb"] = round(uss_per_run, 3)
    figures["per_queued_run_restarted_kb"] = round(
        per_run_kb(figures["idle_head"]["rss_mb"], figures["head_restarted_with_queue"]["rss_mb"], args.runs), 3)
    per_run_processes = processes_started(len(figures["head_children_before"]), figures["head_children_most_during"],
                                          len(figures["head_children_after"]))
    table = [
        row("idle head RSS", figures["idle_head"]["rss_mb"], "MB", GOAL_HEAD_MB, "<="),
        row("idle agent RSS", figures["idle_agent"]["rss_mb"], "MB", GOAL_AGENT_MB, "<="),
        row(f"head memory per queued run ({args.runs:,} queued)", per_run, "KB", GOAL_PER_RUN_KB, "<=", digits=2),
        row(f"head processes started for {args.runs:,} runs", per_run_processes, "processes", 0, "<=", digits=0),
    ]
    table[3].update(ratio_to_goal=None, meets=per_run_processes == 0)   # a goal of 0 has no ratio
    log(f"S8: per queued run {per_run:.2f} KB (USS {uss_per_run:.2f} KB; a restarted head holding the queue "
        f"{figures['per_queued_run_restarted_kb']:.2f} KB); "
        f"head children before {len(figures['head_children_before'])}, most during {watch.most}, "
        f"after {len(figures['head_children_after'])}")
    emit({"scenario": "S8", "name": "footprint", "table": table, "met": all(r["meets"] for r in table),
          "figures": figures, "sizes": {"runs": args.runs, "samples": args.samples},
          "method": {"memory": "psutil memory_full_info, median of samples 0.2 s apart, once the process used "
                               f"under {QUIET_SHARE:.0%} of a core over two {QUIET_WINDOW_S} s windows",
                     "queued_runs": f"Submit to cluster {EMPTY_CLUSTER!r}: configured, no node",
                     "mb": "10^6 bytes; KB 10^3 bytes"},
          "pinning": plan.record(), "machine": machine})


if __name__ == "__main__":
    main()
