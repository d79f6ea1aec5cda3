"""S11: runs' environments: warm start overhead, a cold 3-package build vs venv + pip, ten cold runs of one spec.

Goals (docs: /work/shared/design/performance.md): warm overhead p50 <= 50 ms; a cold build >= 5x faster than
`python -m venv` + `pip install` of the same packages; ten concurrent runs of one new spec on one node: 1 build.

A real head and one agent (testbed.harness, TLS as by default), the agent installing offline from a wheelhouse of
tiny packages built in this run (testbed.wheelhouse; `pip_index_url = "none"`, `pip_find_links = [wheelhouse]`).
Every run is S3's: `/bin/sh -c 'date +%s.%N'`, started = date's timestamp - the client's time before Submit.
1. warm: runs WITH an environment already built on the node (3.11 + tinyalpha) and runs WITHOUT one, one at a
   time and interleaved (without, with, without, ...); overhead = with p50 - without p50 (and p99).
2. cold: per repeat, first the peer: `python -m venv` + `pip install --no-index --find-links WHEELHOUSE` of
   tinyalpha, tinybeta==1.0, tinygamma, timed end to end; then ours: a run whose environment (the same 3
   packages, under a spec the node has never seen: one requirement carries a no-op bound, `tinyalpha>=0.N`) is
   not built yet, submit -> process started. The agent's own build time ("environment built" in its log) is
   reported too. The cold builds come first: the first fills the node's empty uv cache, later ones find the
   wheels there. The pip peer's `pip install` step alone is reported as well (most of its time is `venv`'s pip).
3. ten runs of one new spec submitted at once (ten client threads): builds counted as the agent's "environment
   built" log lines and as the new directories of its `envs/.builds/`; all ten must complete.
Prints one JSON object on stdout; logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import common  # noqa: E402
from common import emit, latency_ms, log, machine_info, metadata, ratio, row  # noqa: E402
from s3_latency import one_run  # noqa: E402

GOAL_OVERHEAD_P50_MS = 50.0
GOAL_SPEEDUP = 5.0
GOAL_BUILDS = 1
PACKAGES = ["tinyalpha", "tinybeta==1.0", "tinygamma"]


def agent_builds(log_file: Path, builds_dir: Path) -> dict[str, Any]:
    """What the agent has built so far: its "environment built" log lines (with their seconds) and build dirs."""
    lines = [line for line in log_file.read_text(errors="replace").splitlines() if "environment built" in line]
    seconds = []
    for line in lines:
        try:
            seconds.append(float(json.loads(line)["seconds"]))
        except (ValueError, KeyError, TypeError):
            pass
    dirs = sorted(p.name for p in builds_dir.iterdir()) if builds_dir.exists() else []
    return {"logged": len(lines), "seconds": seconds, "dirs": dirs}


def pip_peer(workdir: Path, wheels: Path) -> dict[str, float]:
    """`python -m venv` then `pip install --no-index --find-links` of PACKAGES; seconds of each and in all."""
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    venv = workdir / f"venv-{time.monotonic_ns()}"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env, timeout=300)
    t1 = time.perf_counter()
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-index", "--find-links",
                    str(wheels), *PACKAGES], check=True, env=env, timeout=300)
    t2 = time.perf_counter()
    subprocess.run([str(venv / "bin" / "python"), "-c", "import tinyalpha, tinybeta, tinygamma"], check=True,
                   timeout=60)
    shutil.rmtree(venv, ignore_errors=True)
    return {"venv_s": t1 - t0, "pip_install_s": t2 - t1, "total_s": t2 - t0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=40, help="warm: runs with and runs without, each")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--cold", type=int, default=3, help="cold builds (and peer installs)")
    parser.add_argument("--concurrent", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="fewer runs (smoke run)")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    common.exit_on_sigterm()
    if args.quick:
        args.runs, args.warmup, args.cold = 10, 2, 2

    from protos import runyard_pb2 as pb
    from protos import runyard_pb2_grpc as pb_grpc
    from testbed.harness import Cluster
    from testbed.wheelhouse import build_wheelhouse

    root = common.temp_root("runyard-bench-s11-")
    result: dict[str, Any] = {"scenario": "S11", "what": "environments: warm start overhead, cold build vs "
                              "venv + pip, concurrent cold runs of one spec", "machine": machine_info(root)}
    log(f"S11: cluster in {root}")
    cluster = None
    channel = None
    try:
        wheels = build_wheelhouse(root / "wheelhouse")
        snap = common.make_snapshot(root)
        root.chmod(0o711)   # runs, as uids of their own, pass through it to their directories in run_root
        run_root = root / "runs"
        cluster = Cluster.start(root / "cluster", agents=1, cpus=16.0, pip_index_url="none",
                                pip_find_links=[str(wheels)], run_root=str(run_root))
        agent_log = cluster.agents[0].log_file
        builds_dir = run_root / "envs" / ".builds"
        config = cluster.head.client_config()
        channel = common.channel(config)
        stub = pb_grpc.RunyardStub(channel)
        md = metadata(config.token)
        common.upload_snapshot(stub, config.token, snap)

        def run(env: Any = None) -> dict[str, float]:
            return one_run(stub, pb, md, snap.sha256, env=env, experiment="bench-s11")

        for _ in range(args.warmup):   # runs without an environment: the cluster's first runs are not timed
            run()
        # 2. cold, before 1, so that the node's uv cache is empty for the first build: peer then ours, per
        # repeat; each of ours a spec the node has not built.
        peers, cold, agent_s = [], [], []
        for i in range(args.cold):
            peers.append(pip_peer(root, wheels))
            before = agent_builds(agent_log, builds_dir)
            spec = pb.EnvironmentSpec(python="3.11", pip=[f"tinyalpha>=0.{i + 1}", "tinybeta==1.0", "tinygamma"])
            cold.append(run(spec)["started"])
            after = wait_logged(agent_log, builds_dir, before["logged"] + 1)
            agent_s.extend(after["seconds"][len(before["seconds"]):])
            log(f"  cold {i + 1}: venv + pip {peers[-1]['total_s']:.2f} s; ours submit -> started {cold[-1]:.2f} s")
        peer_total = common.summarize([p["total_s"] for p in peers], 3)
        ours_cold = common.summarize(cold, 3)
        speedup = ratio(peer_total["median"], ours_cold["median"], 1)
        speedup_first = ratio(peers[0]["total_s"], cold[0], 1)

        # 1. warm: the environment is built by the first of these warm-up runs; then without / with, interleaved.
        warm_env = pb.EnvironmentSpec(python="3.11", pip=["tinyalpha"])
        for _ in range(args.warmup):
            run()
            run(warm_env)
        without, with_env = [], []
        for i in range(args.runs):
            without.append(run()["started"])
            with_env.append(run(warm_env)["started"])
        w, e = latency_ms(without), latency_ms(with_env)
        log(f"  warm: without p50 {w['p50']} ms p99 {w['p99']} ms; with p50 {e['p50']} ms p99 {e['p99']} ms")

        # 3. ten runs of one new spec at once.
        before = agent_builds(agent_log, builds_dir)
        shared = pb.EnvironmentSpec(python="3.11", pip=["tinyalpha", "tinybeta==2.0", "tinygamma"])
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.concurrent) as pool:
            outcomes = list(pool.map(lambda _: _try(lambda: run(shared)), range(args.concurrent)))
        wall = time.perf_counter() - t0
        after = wait_logged(agent_log, builds_dir, before["logged"] + 1)
        completed = sum(1 for o in outcomes if "error" not in o)
        logged_builds = after["logged"] - before["logged"]
        new_dirs = sorted(set(after["dirs"]) - set(before["dirs"]))
        log(f"  concurrent: {completed}/{args.concurrent} completed in {wall:.2f} s; builds logged {logged_builds}, "
            f"new build dirs {len(new_dirs)}")

        overhead_p50 = e["p50"] - w["p50"]
        overhead_p99 = e["p99"] - w["p99"]
        result["figures"] = {
            "warm_without_env_started_ms": w, "warm_with_env_started_ms": e,
            "warm_overhead_ms": {"p50": round(overhead_p50, 3), "p99": round(overhead_p99, 3)},
            "cold_ours_submit_to_started_s": {**ours_cold, "each": [round(x, 3) for x in cold]},
            "cold_agent_build_s": {**common.summarize(agent_s, 3), "each": agent_s},
            "cold_peer_venv_pip_s": {**peer_total, "each": [{k: round(v, 3) for k, v in p.items()} for p in peers]},
            "concurrent": {"runs": args.concurrent, "completed": completed, "wall_s": round(wall, 3),
                           "builds_logged": logged_builds, "new_build_dirs": len(new_dirs),
                           "started_s": common.summarize([o["started"] for o in outcomes if "started" in o], 3),
                           "errors": [o["error"] for o in outcomes if "error" in o][:3]},
        }
        result["ratios"] = {
            "warm_overhead_p50_to_goal_50ms": ratio(overhead_p50, GOAL_OVERHEAD_P50_MS),
            "warm_with_p50_to_without_p50": ratio(e["p50"], w["p50"], 2),
            "cold_peer_to_ours_median": speedup, "cold_peer_to_ours_first_build": speedup_first,
            "cold_peer_to_agent_build_median": ratio(peer_total["median"], common.summarize(agent_s, 3)["median"], 1),
            "cold_pip_install_step_to_ours_median": ratio(
                common.summarize([p["pip_install_s"] for p in peers], 3)["median"], ours_cold["median"], 1),
        }
        result["table"] = [
            row("warm environment: start overhead (with - without), p50", overhead_p50, "ms", GOAL_OVERHEAD_P50_MS,
                "<=", peer="same run without an environment",
                peer_ratio=result["ratios"]["warm_with_p50_to_without_p50"]),
            row("warm environment: start overhead (with - without), p99", overhead_p99, "ms", None, "<="),
            row("cold 3-package environment: venv + pip time / ours (submit -> started)", speedup, "x", GOAL_SPEEDUP,
                ">=", peer=f"venv + pip install, median {peer_total['median']} s vs ours {ours_cold['median']} s",
                peer_ratio=speedup),
            row(f"{args.concurrent} concurrent cold runs of one spec: builds", logged_builds, "builds", GOAL_BUILDS,
                "<=", peer=f"{completed}/{args.concurrent} runs completed, {len(new_dirs)} new build dir(s)",
                digits=0),
        ]
        result["method"] = {
            "command": ["/bin/sh", "-c", "date +%s.%N"], "packages": PACKAGES, "warm_runs_each": args.runs,
            "warmup": args.warmup, "cold_repeats": args.cold, "concurrent_runs": args.concurrent,
            "warm": "runs with a built environment (python 3.11, tinyalpha) and without, one at a time, interleaved; "
                    "started = date's timestamp - client time before Submit; percentiles over all runs",
            "cold_ours": "a run whose environment is not built on the node (a new spec each repeat), submit -> "
                         "process started; the agent builds it with uv from the wheelhouse, offline",
            "cold_peer": f"{Path(sys.executable).name} -m venv, then pip install --no-index --find-links "
                         "WHEELHOUSE of the same packages; measured just before ours in every repeat",
            "uv_cache": "empty for the first cold build (the cold builds come first); later builds find the "
                        "wheels in the node's uv cache",
            "builds": "the agent's 'environment built' log lines and the new directories of envs/.builds",
            "transport": "TLS client port; the agent mTLS on the node port",
        }
        log(f"S11: warm overhead p50 {overhead_p50:.1f} ms; cold speedup {speedup}x (first {speedup_first}x); "
            f"concurrent builds {logged_builds}, completed {completed}/{args.concurrent}")
    finally:
        if channel is not None:
            channel.close()
        if cluster is not None:
            cluster.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    emit(result)


def _try(fn: Any) -> dict[str, Any]:
    try:
        return dict(fn())
    except Exception as err:  # a failed run is counted, not hidden
        return {"error": f"{type(err).__name__}: {err}"[:500]}


def wait_logged(log_file: Path, builds_dir: Path, at_least: int, timeout_s: float = 10.0) -> dict[str, Any]:
    """agent_builds() once the log has at least `at_least` "environment built" lines (the line may trail the run's
    start by a moment), or as it is after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = agent_builds(log_file, builds_dir)
        if found["logged"] >= at_least or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


if __name__ == "__main__":
    main()
