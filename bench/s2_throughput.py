"""S2: 1,000 trivial runs (`true`) through a head and 2 local agents: completed runs/s.

Goal (docs: /work/shared/design/performance.md): >= 120 runs/s (>= 3x HTC-tuned Slurm on the same machine).

A real head and 2 agents (testbed.harness, loopback; TLS as by default: the agents enroll and talk mTLS to the
node port, the submitters use the harness's client_config()). One snapshot is uploaded once; then N runs of `true`
are submitted as fast as 2 threads (one blocking channel each) can, without waiting for them, and
`ListRuns(experiment, state=Completed, limit=10000)` is polled until all N are Completed or a deadline passes
(then `complete` is false and the figure counts what completed). The figure is
N / (head commit of the last `complete` event - send time of the first Submit).

Each agent offers as many runs at once as it reports CPUs (a run asks 1 CPU by default) and each reports the whole
machine, so 2 agents on a 2-core machine run up to 4 at once; the capacity seen is recorded.

Floor measured in the same run: the same N `true` processes spawned straight from one asyncio loop (default loop,
like the agent) with concurrency = the agents' total CPUs: what any runner pays on this machine. Also with the
agent's own spawn recipe (setpriv --pdeathsig, new session). Ours is reported as a ratio to it.
The head is pinned to core 0 and this generator to core 1; the agents and their runs may use every core, and the
floor is measured with the same CPUs. CPU of head, agents (with their runs) and generator are reported.
Prints one JSON object on stdout; logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import common  # noqa: E402
from common import CpuMeter, PinPlan, emit, log, machine_info, metadata, ratio, row, summarize  # noqa: E402

GOAL_RUNS_PER_S = 120.0
POLL_S = 0.5


# --- the floor: spawn the same processes straight from asyncio ----------------------------------------------------

def spawn_floor(n: int, concurrency: int, like_agent: bool) -> float:
    """runs/s of `true` spawned from one asyncio loop, `concurrency` at a time, pipes read to EOF."""
    prefix = ["setpriv", "--pdeathsig", "KILL", "--"] if like_agent and shutil.which("setpriv") else []

    async def one(limit: asyncio.Semaphore) -> None:
        async with limit:
            proc = await asyncio.create_subprocess_exec(
                *prefix, "true", stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, start_new_session=like_agent,
            )
            await proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"true exited {proc.returncode}")

    async def go() -> float:
        limit = asyncio.Semaphore(concurrency)
        t0 = time.perf_counter()
        await asyncio.gather(*(one(limit) for _ in range(n)))
        return n / (time.perf_counter() - t0)

    return asyncio.run(go())


# --- ours ---------------------------------------------------------------------------------------------------------

def submit_all(config: Any, sha: str, experiment: str, n: int, threads: int) -> dict[str, Any]:
    from protos import runyard_pb2 as pb
    from protos import runyard_pb2_grpc as pb_grpc

    md = metadata(config.token)
    ids: list[str] = []
    starts: list[float] = []
    ends: list[float] = []
    errors: list[str] = []
    go = threading.Barrier(threads)

    def work(count: int) -> None:
        channel = common.channel(config)
        stub = pb_grpc.RunyardStub(channel)
        spec = pb.RunSpec(argv=["true"])
        mine = []
        try:
            go.wait()
            starts.append(time.time())
            for _ in range(count):
                mine.append(stub.Submit(pb.SubmitRequest(experiment=experiment, snapshot_sha256=sha, spec=spec,
                                                         idempotency_key=uuid.uuid4().hex),
                                        metadata=md, timeout=60).run_id)
            ends.append(time.time())
        except Exception as err:
            errors.append(f"{type(err).__name__}: {err}")
        finally:
            ids.extend(mine)
            channel.close()

    workers = [threading.Thread(target=work, args=(n // threads + (1 if i < n % threads else 0),))
               for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if errors:
        raise RuntimeError(f"submit failed: {errors[0]}")
    return {"run_ids": ids, "first_submit": min(starts), "last_submit_done": max(ends)}


def one_batch(stub: Any, pb: Any, md: Any, config: Any, sha: str, n: int, threads: int,
              deadline_s: float, meter: CpuMeter) -> dict[str, Any]:
    experiment = f"bench-s2-{uuid.uuid4().hex[:8]}"
    meter.start()
    cpu0 = time.process_time()
    sub = submit_all(config, sha, experiment, n, threads)
    submitted = time.time()
    log(f"    {n} submitted in {submitted - sub['first_submit']:.2f} s")
    deadline = sub["first_submit"] + deadline_s
    done: list[Any] = []
    polls = 0
    while True:
        polls += 1
        done = list(stub.ListRuns(pb.ListRunsRequest(experiment=experiment, state=pb.RUN_STATE_COMPLETED, limit=10_000),
                                  metadata=md, timeout=30).runs)
        if len(done) >= n or time.time() > deadline:
            break
        time.sleep(POLL_S)
    seen_all = time.time()
    cpu = meter.stop()
    gen_cpu = time.process_time() - cpu0
    failed = [r for state in (pb.RUN_STATE_FAILED, pb.RUN_STATE_CANCELED) for r in stub.ListRuns(
        pb.ListRunsRequest(experiment=experiment, state=state, limit=10_000), metadata=md, timeout=30).runs]
    complete = len(done) >= n
    last = max(done, key=lambda r: r.ended_at) if done else None
    last_commit = None
    if last is not None:
        events = stub.GetRun(pb.RunRef(run_id=last.id), metadata=md, timeout=10).events
        last_commit = next((e.at for e in events if e.event == "complete"), last.ended_at)
    span = (last_commit - sub["first_submit"]) if (complete and last_commit) else (seen_all - sub["first_submit"])
    return {
        "experiment": experiment, "complete": complete, "completed": len(done), "failed_or_canceled": len(failed),
        "runs_per_s": len(done) / span if span > 0 else None,
        "span_s": round(span, 3),
        "submit_phase_s": round(sub["last_submit_done"] - sub["first_submit"], 3),
        "submits_per_s": round(n / (sub["last_submit_done"] - sub["first_submit"]), 1),
        "poll_observed_span_s": round(seen_all - sub["first_submit"], 3), "polls": polls,
        "cpu": cpu, "generator_cpu_s": round(gen_cpu, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1000, help="runs per batch")
    parser.add_argument("--repeats", type=int, default=3, help="batches (each N runs) on the same cluster")
    parser.add_argument("--budget-s", type=float, default=90.0,
                        help="start no further batch when the batches so far suggest it would end after this")
    parser.add_argument("--agents", type=int, default=2)
    parser.add_argument("--submitters", type=int, default=2)
    parser.add_argument("--deadline-s", type=float, default=75.0, help="per batch, from the first submit")
    parser.add_argument("--floor-repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="200 runs (smoke run)")
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    common.exit_on_sigterm()
    if args.quick:
        args.runs, args.deadline_s = 200, 40.0

    from protos import runyard_pb2 as pb
    from protos import runyard_pb2_grpc as pb_grpc
    from testbed.harness import Cluster

    root = common.temp_root("runyard-bench-s2-")
    plan = PinPlan.make(not args.no_pin)
    result: dict[str, Any] = {"scenario": "S2", "what": f"{args.runs} trivial runs (`true`) through head + "
                              f"{args.agents} local agents: completed runs/s", "machine": machine_info(root)}
    log(f"S2: cluster in {root}")
    cluster = Cluster.start(root, agents=args.agents)
    try:
        head_pid = cluster.head.proc.pid  # type: ignore[union-attr]
        agent_pids = {f"agent_{i + 1}": a.proc.pid for i, a in enumerate(cluster.agents)}  # type: ignore[union-attr]
        agent_cpus = sorted(os.sched_getaffinity(next(iter(agent_pids.values())))) \
            if hasattr(os, "sched_getaffinity") else None
        plan.apply("head", head_pid)
        plan.apply("generator", os.getpid())
        config = cluster.head.client_config()
        md = metadata(config.token)
        channel = common.channel(config)
        stub = pb_grpc.RunyardStub(channel)
        nodes = list(stub.ListNodes(pb.ListNodesRequest(), metadata=md, timeout=10).nodes)
        capacity = {n.name: n.capacity.cpus for n in nodes}
        concurrency = max(1, int(sum(capacity.values())))
        snap = common.make_snapshot(root)
        common.upload_snapshot(stub, cluster.head.token, snap)

        def floor() -> dict[str, float]:
            if plan.enabled and agent_cpus:
                common.pin_self(agent_cpus)  # the same CPUs the agents and their runs have
            try:
                return {"plain": spawn_floor(args.runs, concurrency, like_agent=False),
                        "agent_recipe": spawn_floor(args.runs, concurrency, like_agent=True)}
            finally:
                if plan.enabled:
                    common.pin_self(plan.generator_cpus)

        # Warm-up: a few runs through the cluster (snapshot fetched and cached by each agent) and a small floor.
        log("  warm-up")
        one_batch(stub, pb, md, config, snap.sha256, 4 * args.agents,
                  args.submitters, 30.0, CpuMeter({"head": head_pid}))
        spawn_floor(min(50, args.runs), concurrency, like_agent=False)

        floors: list[dict[str, float]] = []
        batches: list[dict[str, Any]] = []
        half = max(1, args.floor_repeats // 2)
        for _ in range(half):
            floors.append(floor())
            log(f"  floor: {floors[-1]['plain']:.1f} runs/s plain, {floors[-1]['agent_recipe']:.1f} runs/s agent recipe")
        began = time.monotonic()
        for rep in range(args.repeats):
            if batches and (time.monotonic() - began) * (rep + 1) / rep > args.budget_s:
                log(f"  budget of {args.budget_s:g} s reached: {rep} batches")
                break
            meter = CpuMeter({"head": head_pid, **agent_pids}, children=True)
            b = one_batch(stub, pb, md, config, snap.sha256, args.runs,
                          args.submitters, args.deadline_s, meter)
            batches.append(b)
            log(f"  batch {rep + 1}: {b['completed']}/{args.runs} completed, {b['runs_per_s']:.1f} runs/s "
                f"(submits {b['submits_per_s']}/s; head cpu {b['cpu']['head']['share_of_one_core']})")
        for _ in range(args.floor_repeats - half):
            floors.append(floor())
            log(f"  floor: {floors[-1]['plain']:.1f} runs/s plain, {floors[-1]['agent_recipe']:.1f} runs/s agent recipe")
        channel.close()

        ours = summarize([b["runs_per_s"] for b in batches], 1)
        floor_plain = summarize([f["plain"] for f in floors], 1)
        floor_agent = summarize([f["agent_recipe"] for f in floors], 1)
        complete = all(b["complete"] for b in batches)
        head_share = summarize([b["cpu"]["head"]["share_of_one_core"] for b in batches])
        result["figures"] = {"completed_runs_per_s": ours, "floor_spawn_runs_per_s": floor_plain,
                             "floor_agent_recipe_runs_per_s": floor_agent,
                             "head_cpu_share_of_one_core": head_share,
                             "head_cpu_ms_per_run": summarize(
                                 [b["cpu"]["head"]["cpu_s"] * 1000 / max(b["completed"], 1) for b in batches], 2),
                             "batches": batches}
        # The head is pinned to one core: near a full core, it is what bounds the figure.
        result["head_cpu_bound"] = (head_share["median"] or 0) >= common.SATURATED_SHARE
        result["complete"] = complete
        result["ratios"] = {
            "to_goal_120": ratio(ours["median"], GOAL_RUNS_PER_S),
            "to_spawn_floor": ratio(ours["median"], floor_plain["median"]),
            "to_agent_recipe_floor": ratio(ours["median"], floor_agent["median"]),
        }
        result["table"] = [
            row(f"{args.runs} `true` runs, head + {args.agents} agents, completed runs/s"
                + ("" if complete else " (deadline hit)"), ours["median"], "/s", GOAL_RUNS_PER_S, ">=",
                peer=f"asyncio spawn of `true`, {concurrency} at a time", peer_ratio=result["ratios"]["to_spawn_floor"]),
        ]
        result["method"] = {
            "runs_per_batch": args.runs, "batches": len(batches), "batches_asked": args.repeats, "floor_repeats": args.floor_repeats,
            "submitters": f"{args.submitters} threads, one blocking grpc channel each, no waiting for runs",
            "transport": f"client port {common.transport(config)}, agents mTLS on the node port",
            "end": f"ListRuns(experiment, state=Completed) polled every {POLL_S} s; span ends at the head's commit "
                   "of the last `complete` event",
            "agents_capacity_cpus": capacity,
            "concurrency": f"up to {concurrency} runs at once (1 CPU per run, each agent reports the whole machine)",
            "floor": f"asyncio.create_subprocess_exec('true'), default loop, {concurrency} at a time, pipes drained; "
                     "measured before and after ours",
            "warmup": f"{4 * args.agents} runs through the cluster and a 50-process floor before measuring",
            "pinning": {**plan.record(), "agents_and_runs_cpus": agent_cpus,
                        "floor_cpus": agent_cpus if plan.enabled else None},
        }
        if len(batches) < 3:
            result["method"]["note"] = (f"{len(batches)} batch(es) of N runs (asked {args.repeats}, time budget "
                                        f"{args.budget_s:g} s): fewer than 3 repeats, so no real median")
        log(f"S2: {ours['median']} runs/s (floor {floor_plain['median']} runs/s), complete={complete}")
    finally:
        cluster.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    emit(result)


if __name__ == "__main__":
    main()
