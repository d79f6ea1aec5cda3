"""S3: one run on an idle cluster: submit -> process started, and submit -> Completed.

Goals (docs: /work/shared/design/performance.md): p50 <= 50 ms to start, <= 100 ms to Completed; p99 <= 300 ms.

A real head and one agent (testbed.harness, loopback; TLS as by default: the client uses the harness's
client_config(), the agent enrolls and talks mTLS to the node port). One run at a time, each after the previous one
ended, over one client channel opened before the first. The run's
command is `/bin/sh -c 'date +%s.%N'`: its first stdout line is the wall-clock time the process was running,
read back through `Runyard.StreamLogs` and compared with the client's clock just before it sent `Submit` (same
machine, same clock). A Python command would add its own start-up time, so it is not used.
Per run:
- started:   date's timestamp - submit send time;
- completed: the head's commit of the `complete` event (the run is Completed) - submit send time; also the agent's
  `ended_at` and what the client saw (its `StreamLogs(follow=True)` ended, then `GetRun` says Completed);
- a breakdown from the run's events (assign, start, finalize, complete).

Limit measured in the same run: the same command spawned with `asyncio.create_subprocess_exec` (default loop, like
the agent) until it exits; also with the agent's own recipe (setpriv --pdeathsig, new session). Our figures are
reported as ratios to it. The head is pinned to core 0 and this client to core 1; the agent and its runs may use
every core, and the limit is measured with the same CPUs the agent has.
Prints one JSON object on stdout; logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import common  # noqa: E402
from common import CpuMeter, PinPlan, emit, latency_ms, log, machine_info, metadata, ratio, row  # noqa: E402

GOAL_START_P50_MS = 50.0
GOAL_DONE_P50_MS = 100.0
GOAL_P99_MS = 300.0
ARGV = ["/bin/sh", "-c", "date +%s.%N"]


# --- the limit: the same command from asyncio ---------------------------------------------------------------------

async def _spawn_once(argv: list[str], like_agent: bool) -> tuple[float, float]:
    prefix = ["setpriv", "--pdeathsig", "KILL", "--"] if like_agent and shutil.which("setpriv") else []
    t0 = time.time()
    proc = await asyncio.create_subprocess_exec(
        *prefix, *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=like_agent,
    )
    out, _ = await proc.communicate()
    t1 = time.time()
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} exited {proc.returncode}")
    return float(out.split()[0]) - t0, t1 - t0


def spawn_limit(runs: int, warmup: int, like_agent: bool) -> dict[str, list[float]]:
    async def go() -> dict[str, list[float]]:
        for _ in range(warmup):
            await _spawn_once(ARGV, like_agent)
        started, exited = [], []
        for _ in range(runs):
            s, e = await _spawn_once(ARGV, like_agent)
            started.append(s)
            exited.append(e)
        return {"started": started, "exited": exited}
    return asyncio.run(go())


# --- ours ---------------------------------------------------------------------------------------------------------

def one_run(stub: Any, pb: Any, md: Any, sha: str, *, env: Any = None,
            experiment: str = "bench-s3") -> dict[str, float]:
    """One run of ARGV, in the environment `env` (a pb.EnvironmentSpec) when given, timed as the docstring says."""
    spec = pb.RunSpec(argv=ARGV) if env is None else pb.RunSpec(argv=ARGV, env=env)
    request = pb.SubmitRequest(experiment=experiment, snapshot_sha256=sha, spec=spec)
    import uuid
    request.idempotency_key = uuid.uuid4().hex
    t0 = time.time()
    run_id = stub.Submit(request, metadata=md, timeout=10).run_id
    t_ack = time.time()
    first_line = None
    for response in stub.StreamLogs(pb.LogsRequest(run_id=run_id, follow=True), metadata=md, timeout=60):
        for line in response.lines:
            if first_line is None and line.record.stream == pb.STDOUT:
                first_line = line.record.data.decode()
    t_seen = time.time()
    run = stub.GetRun(pb.RunRef(run_id=run_id), metadata=md, timeout=10)
    if run.state != pb.RUN_STATE_COMPLETED:
        raise RuntimeError(f"run {run_id} ended {run.state} ({run.reason}); logs: {first_line!r}")
    if first_line is None:
        raise RuntimeError(f"run {run_id} printed nothing")
    events = {}
    for e in run.events:
        events.setdefault(e.event, e.at)
    sample = {
        "submit_rpc": t_ack - t0,
        "started": float(first_line.split()[0]) - t0,
        "completed": events.get("complete", float("nan")) - t0,
        "ended_at": run.ended_at - t0,
        "client_seen_end": t_seen - t0,
        "agent_reported_running": run.started_at - t0,
    }
    for name in ("assign", "start", "finalize"):
        if name in events:
            sample[f"event_{name}"] = events[name] - t0
    return sample


@dataclass
class Target:
    """A head with one agent (testbed.harness) and one open client channel to it, the snapshot uploaded."""
    cluster: Any
    channel: Any
    stub: Any
    md: tuple[tuple[str, str], ...]
    transport: str

    @property
    def head_pid(self) -> int:
        return int(self.cluster.head.proc.pid)

    @property
    def agent_pid(self) -> int:
        return int(self.cluster.agents[0].proc.pid)

    def run(self, sha: str) -> dict[str, float]:
        from protos import runyard_pb2 as pb
        return one_run(self.stub, pb, self.md, sha)

    def close(self) -> None:
        self.channel.close()
        self.cluster.stop()


def open_target(root: Path, snap: Any, *, plaintext: bool = False) -> Target:
    """Start a head and one agent in `root`: TLS by default (the agent enrolls, then mTLS on the node port), or the
    head's client port in plaintext (`insecure_plaintext`; the agent joins over plaintext, the node port stays
    mTLS). Opens the client channel from the harness's client_config() and uploads `snap`."""
    from protos import runyard_pb2_grpc as pb_grpc
    from testbed.harness import Cluster

    cluster = Cluster.start(root, agents=1, head_settings={"insecure_plaintext": True} if plaintext else None)
    try:
        config = cluster.head.client_config()
        channel = common.channel(config)
        stub = pb_grpc.RunyardStub(channel)
        common.upload_snapshot(stub, config.token, snap)
    except BaseException:
        cluster.stop()
        raise
    return Target(cluster, channel, stub, metadata(config.token), common.transport(config))


def pooled_ms(samples: list[list[dict[str, float]]]) -> dict[str, dict[str, Any]]:
    """Latency percentiles (ms) of every measured step, over the runs of all repeats pooled."""
    pooled = [s for rep in samples for s in rep]
    return {key: latency_ms([s[key] for s in pooled if key in s]) for key in pooled[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=40, help="runs per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--peer-runs", type=int, default=40, help="limit samples per repeat")
    parser.add_argument("--quick", action="store_true", help="fewer runs (smoke run)")
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    common.exit_on_sigterm()
    if args.quick:
        args.runs, args.warmup, args.peer_runs, args.repeats = 10, 2, 10, 3

    root = common.temp_root("runyard-bench-s3-")
    plan = PinPlan.make(not args.no_pin)
    result: dict[str, Any] = {"scenario": "S3", "what": "idle single run: submit -> process started, -> Completed",
                              "machine": machine_info(root)}
    log(f"S3: cluster in {root}")
    snap = common.make_snapshot(root)
    target = open_target(root / "cluster", snap)
    try:
        head_pid, agent_pid = target.head_pid, target.agent_pid
        agent_cpus = sorted(os.sched_getaffinity(agent_pid)) if hasattr(os, "sched_getaffinity") else None
        plan.apply("head", head_pid)

        def limit(n: int) -> dict[str, dict[str, list[float]]]:
            # The limit runs with the CPUs the agent has, then the client goes back to its own core.
            if plan.enabled and agent_cpus:
                common.pin_self(agent_cpus)
            try:
                return {"plain": spawn_limit(n, 3, like_agent=False), "agent_recipe": spawn_limit(n, 3, like_agent=True)}
            finally:
                if plan.enabled:
                    common.pin_self(plan.generator_cpus)

        plan.apply("client", os.getpid())
        for _ in range(args.warmup):
            target.run(snap.sha256)
        samples: list[list[dict[str, float]]] = []
        peers: list[dict[str, dict[str, list[float]]]] = []
        cpus = []
        for rep in range(args.repeats):
            peers.append(limit(args.peer_runs))  # the limit, then ours, in every repeat
            meter = CpuMeter({"head": head_pid, "agent": agent_pid}, children=True).start()
            cpu0 = time.process_time()
            mine = [target.run(snap.sha256) for _ in range(args.runs)]
            cpus.append({**meter.stop(), "client_cpu_s": round(time.process_time() - cpu0, 3)})
            samples.append(mine)
            log(f"  rep {rep + 1}: started p50 {common.percentile([s['started'] for s in mine], 50) * 1000:6.1f} ms, "
                f"completed p50 {common.percentile([s['completed'] for s in mine], 50) * 1000:6.1f} ms, "
                f"max {max(s['completed'] for s in mine) * 1000:6.1f} ms; spawn exit p50 "
                f"{common.percentile(peers[-1]['plain']['exited'], 50) * 1000:5.2f} ms")

        pooled = [s for rep in samples for s in rep]
        ours = pooled_ms(samples)
        peer = {kind: {what: latency_ms([x for p in peers for x in p[kind][what]]) for what in ("started", "exited")}
                for kind in ("plain", "agent_recipe")}

        def per_repeat(key: str, q: float) -> dict[str, Any]:
            return common.summarize([common.percentile([s[key] for s in rep], q) * 1000 for rep in samples], 3)

        result["figures"] = {
            "ours_ms": ours, "limit_spawn_ms": peer,
            "per_repeat_ms": {f"{key}_p{q}": per_repeat(key, q) for key in ("started", "completed") for q in (50, 99)},
            # Where the tail comes from: the slowest runs with their whole breakdown (ms after the submit was sent).
            "slowest_runs_ms": [{k: round(v * 1000, 1) for k, v in sorted(s.items(), key=lambda kv: kv[1])}
                                for s in sorted(pooled, key=lambda s: -s["completed"])[:3]],
        }
        result["cpu_during_our_runs"] = cpus

        st, done = ours["started"], ours["completed"]
        p_st, p_ex = peer["plain"]["started"], peer["plain"]["exited"]
        result["ratios"] = {
            "started_p50_to_goal_50ms": ratio(st["p50"], GOAL_START_P50_MS),
            "completed_p50_to_goal_100ms": ratio(done["p50"], GOAL_DONE_P50_MS),
            "started_p99_to_goal_300ms": ratio(st["p99"], GOAL_P99_MS),
            "completed_p99_to_goal_300ms": ratio(done["p99"], GOAL_P99_MS),
            "started_p50_to_spawn_started_p50": ratio(st["p50"], p_st["p50"], 1),
            "completed_p50_to_spawn_exit_p50": ratio(done["p50"], p_ex["p50"], 1),
            "completed_p50_to_agent_recipe_exit_p50": ratio(done["p50"], peer["agent_recipe"]["exited"]["p50"], 1),
        }
        result["table"] = [
            row("idle run, submit -> process started, p50", st["p50"], "ms", GOAL_START_P50_MS, "<=",
                peer="asyncio spawn of the same command", peer_ratio=result["ratios"]["started_p50_to_spawn_started_p50"]),
            row("idle run, submit -> Completed, p50", done["p50"], "ms", GOAL_DONE_P50_MS, "<=",
                peer="asyncio spawn to exit", peer_ratio=result["ratios"]["completed_p50_to_spawn_exit_p50"]),
            row("idle run, submit -> process started, p99", st["p99"], "ms", GOAL_P99_MS, "<="),
            row("idle run, submit -> Completed, p99", done["p99"], "ms", GOAL_P99_MS, "<="),
        ]
        result["method"] = {
            "runs_per_repeat": args.runs, "repeats": args.repeats, "warmup_runs": args.warmup,
            "limit_runs_per_repeat": args.peer_runs,
            "command": ARGV, "one run at a time": True,
            "transport": f"client port {target.transport}, the agent mTLS on the node port",
            "started": "the command's own `date +%s.%N` - client time before Submit",
            "completed": "head commit time of the run's `complete` event - client time before Submit",
            "limit": "asyncio.create_subprocess_exec (default loop) of the same command, stdout/stderr piped; "
                     "measured just before ours in every repeat",
            "percentiles": "over the runs of all repeats pooled (linear interpolation); per_repeat_ms gives the "
                           "median, min and max of each repeat's p50 and p99",
            "pinning": {**plan.record(), "agent_and_runs_cpus": agent_cpus,
                        "limit_cpus": agent_cpus if plan.enabled else None},
        }
        log(f"S3: started p50 {st['p50']} ms p99 {st['p99']} ms; completed p50 {done['p50']} ms p99 {done['p99']} ms; "
            f"spawn exit p50 {p_ex['p50']} ms")
    finally:
        target.close()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    emit(result)


if __name__ == "__main__":
    main()
