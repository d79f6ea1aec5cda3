"""S7: metric ingestion through the SDK, batched and single, against a real MLflow tracking server.

Goals (docs: /work/shared/design/performance.md): >= 200,000 points/s batched (>= 30x MLflow on the same machine);
single >= 2,000 points/s.

Ours, end to end: a real head and one agent (testbed.harness, loopback, TLS as by default). A run's script (the
SDK, as a training script uses it) prints the wall-clock time just before its first log call, then
- batched: `log_metrics({k0..k9}, step=i)` for `--points / 10` steps (ten points a call);
- single: `log(key, value, step=i)` then `flush()` for every point, as a naive script that wants each point out
  at once would.
Its points have arrived when the head has stored them: the head commits an attempt's records before its end
(the agent ships them before it reports the exit), so the run's `complete` event is a time by which every point
was visible, and the stored count is checked equal to what was logged. points/s = points / (complete - first
log call): it includes the run's process exit and the agent's report, so it is at most what the pipeline does.

The peer, in the same run: the real MLflow tracking server (`mlflow server`, SQLite backend store), installed on
first use with pip into a venv of its own under `bench/.cache/` (skipped, with the reason, if that fails), driven
by `mlflow.tracking.MlflowClient` from a process of its own: `log_batch` of 1,000 metrics a call (MLflow's cap)
and `log_metric` per point. Both calls return once the server has committed. The heads (ours and MLflow's
server) are pinned to core 0 and the load (our agent and its run; MLflow's client) to core 1.

`mlflow_client_in_runyard_run` is the third figure: the real MLflow client (`log_batch`, `log_metric`, the same
sizes as the peer's) logging into a Runyard run through the agent's MLflow endpoint (`agent/tracking.py`),
measured end to end like the SDK; it says it is pending in a tree without that endpoint.
Prints one JSON object on stdout; logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import common  # noqa: E402
from common import PinPlan, emit, log, machine_info, ratio, row, summarize  # noqa: E402

GOAL_BATCHED = 200_000.0
GOAL_SINGLE = 2_000.0
GOAL_RATIO = 30.0
KEYS = 10
MLFLOW_VERSION = "3.17.2"       # the version the project's own MLflow client tests pin
MLFLOW_VENV = HERE / ".cache" / f"mlflow-{MLFLOW_VERSION}"
MLFLOW_BATCH = 1000             # MLflow's cap on metrics per log_batch

SCRIPT = '''
import sys, time
from runyard import Run
mode, points, keys = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
run = Run.get_context()
names = [f"k{i}" for i in range(keys)]
print(f"start {time.time():.6f}", flush=True)
if mode == "batched":
    for step in range(points // keys):
        run.log_metrics({name: step * 0.5 + i for i, name in enumerate(names)}, step=step)
else:
    for step in range(points):
        run.log(names[step % keys], step * 0.5, step=step // keys)
        run.flush()
run.flush()
print(f"logged {time.time():.6f}", flush=True)
'''

# The same logging, through the real MLflow client, against the peer server and inside a Runyard run.
MLFLOW_LOOP = '''
if mode == "batched":
    batch = []
    for step in range(points // keys):
        batch.extend(Metric(name, step * 0.5 + i, now, step) for i, name in enumerate(names))
        if len(batch) >= {batch}:
            client.log_batch(run_id, metrics=batch)
            batch = []
    if batch:
        client.log_batch(run_id, metrics=batch)
else:
    for step in range(points):
        client.log_metric(run_id, names[step % keys], step * 0.5, timestamp=now, step=step // keys)
'''.format(batch=MLFLOW_BATCH)

MLFLOW_DRIVER = '''
import json, sys, time
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
uri, mode, points, keys = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
client = MlflowClient(tracking_uri=uri)
experiment = client.create_experiment(f"s7-{mode}-{time.time_ns()}")
run_id = client.create_run(experiment).info.run_id
names = [f"k{i}" for i in range(keys)]
now = int(time.time() * 1000)
t0 = time.time()
''' + MLFLOW_LOOP + '''t1 = time.time()
stored = sum(len(client.get_metric_history(run_id, name)) for name in names)
print(json.dumps({"points": points, "seconds": t1 - t0, "stored": stored}))
'''


# --- ours ---------------------------------------------------------------------------------------------------------

def ours_once(cluster: Any, project: Path, mode: str, points: int, script: str = "log.py") -> dict[str, Any]:
    done = cluster.cli("submit", str(project), "--", "python", script, mode, str(points), str(KEYS),
                       timeout_s=600)
    if done.returncode != 0:
        raise RuntimeError(f"the run failed: {done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    run_id = done.stderr.split("run ", 1)[1].split()[0]
    started = float(next(line.split()[1] for line in done.stdout.splitlines() if line.startswith("start ")))
    logged = float(next(line.split()[1] for line in done.stdout.splitlines() if line.startswith("logged ")))
    run = cluster.client().get_run(run_id)
    completed = next(e.at for e in run.events if e.to_state == "Completed")
    stored = sum(s.count for s in cluster.client().metrics(run_id, summaries_only=True).summaries)
    if stored != points:
        raise RuntimeError(f"{stored} points stored of {points} logged")
    return {"points": points, "seconds": completed - started, "points_per_s": points / (completed - started),
            "script_logging_s": logged - started}


def ours(root: Path, plan: PinPlan, modes: dict[str, int], repeats: int, *, script: str = "log.py",
         text: str = SCRIPT) -> dict[str, Any]:
    from testbed.harness import Cluster

    project = root / "project"
    project.mkdir(parents=True)
    (project / script).write_text(text)
    cluster = Cluster.start(root / "cluster", agents=1)
    try:
        plan.apply("head", cluster.head.proc.pid)  # type: ignore[union-attr]
        plan.apply("agent", cluster.agents[0].proc.pid)  # type: ignore[union-attr]
        ours_once(cluster, project, "batched", 1000, script)      # warm-up: environment, snapshot, caches
        result: dict[str, Any] = {}
        for mode, points in modes.items():
            reps = []
            for rep in range(repeats):
                one = ours_once(cluster, project, mode, points, script)
                log(f"{script} {mode:8s} rep {rep}: {one['points_per_s']:10.0f} points/s "
                    f"({one['points']} in {one['seconds']:.2f} s; the script logged for {one['script_logging_s']:.2f} s)")
                reps.append(one)
            result[mode] = {"points_per_s": summarize([r["points_per_s"] for r in reps], 0), "repeats": reps}
        return result
    finally:
        cluster.stop()


MLFLOW_IN_RUN = '''
import os, sys, time
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
mode, points, keys = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
client = MlflowClient()                      # MLFLOW_TRACKING_URI and its token: the agent's endpoint
run_id = os.environ["MLFLOW_RUN_ID"]
names = [f"k{i}" for i in range(keys)]
now = int(time.time() * 1000)
print(f"start {time.time():.6f}", flush=True)
''' + MLFLOW_LOOP + '''print(f"logged {time.time():.6f}", flush=True)
'''


def mlflow_client_in_runyard_run(root: Path, plan: PinPlan, modes: dict[str, int], repeats: int) -> dict[str, Any]:
    """The real MLflow client (`MlflowClient.log_batch` of 1,000 metrics, `log_metric` per point) inside a Runyard
    run, through the agent's MLflow endpoint (`agent/tracking.py`), measured end to end like the SDK."""
    try:
        import mlflow  # noqa: F401  (the run's python is the agent's: it has the client if we do)
    except ImportError as err:
        return {"skipped": f"no mlflow client here: {err}"}
    return ours(root, plan, modes, repeats, script="mlflow_log.py", text=MLFLOW_IN_RUN)


# --- the peer: a real MLflow tracking server -------------------------------------------------------------------

def mlflow_python() -> tuple[Path | None, str]:
    """The bench venv's python with the full `mlflow` package, installed on first use; or why there is none."""
    python = MLFLOW_VENV / "bin" / "python"
    if python.exists() and subprocess.run([str(python), "-c", "import mlflow.server"], capture_output=True).returncode == 0:
        return python, ""
    log(f"installing mlflow=={MLFLOW_VERSION} into {MLFLOW_VENV} (first run only)")
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(MLFLOW_VENV)], check=True, capture_output=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"mlflow=={MLFLOW_VERSION}"], check=True,
                       capture_output=True, timeout=1800)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as err:
        detail = getattr(err, "stderr", b"") or b""
        return None, f"pip install mlflow=={MLFLOW_VERSION} failed: {err}; {detail.decode(errors='replace')[-500:]}"
    return python, ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mlflow_peer(root: Path, plan: PinPlan, modes: dict[str, int], repeats: int) -> dict[str, Any]:
    python, why = mlflow_python()
    if python is None:
        return {"skipped": why}
    store = root / "mlflow"
    store.mkdir(parents=True)
    port = _free_port()
    command = [str(python.parent / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
               "--default-artifact-root", str(store / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1"]
    with open(root / "mlflow-server.log", "wb") as out:
        server = subprocess.Popen(command, stdout=out, stderr=out, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                return {"skipped": "mlflow server did not start: " + (root / "mlflow-server.log").read_text()[-1000:]}
            time.sleep(0.2)
        if plan.enabled:
            for pid in [server.pid, *_children(server.pid)]:
                plan.apply("mlflow-server", pid, plan.head_cpus)
        driver = root / "mlflow_driver.py"
        driver.write_text(MLFLOW_DRIVER)
        uri = f"http://127.0.0.1:{port}"

        def once(mode: str, points: int) -> dict[str, Any]:
            taskset = ["taskset", "-c", ",".join(map(str, plan.generator_cpus))] if plan.enabled and shutil.which("taskset") else []
            done = subprocess.run([*taskset, str(python), str(driver), uri, mode, str(points), str(KEYS)],
                                  capture_output=True, text=True, timeout=1800)
            if done.returncode != 0:
                raise RuntimeError(f"mlflow driver failed: {done.stderr[-2000:]}")
            found = json.loads(done.stdout.strip().splitlines()[-1])
            if found["stored"] != points:
                raise RuntimeError(f"mlflow stored {found['stored']} of {points}")
            found["points_per_s"] = points / found["seconds"]
            return found

        once("batched", 1000)   # warm-up
        result: dict[str, Any] = {"version": MLFLOW_VERSION, "command": " ".join(command[1:])}
        for mode, points in modes.items():
            reps = []
            for rep in range(repeats):
                one = once(mode, points)
                log(f"mlflow {mode:8s} rep {rep}: {one['points_per_s']:10.0f} points/s ({points} in {one['seconds']:.2f} s)")
                reps.append(one)
            result[mode] = {"points_per_s": summarize([r["points_per_s"] for r in reps], 0), "repeats": reps}
        return result
    finally:
        os.killpg(server.pid, 15)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
            server.wait()


def _children(pid: int) -> list[int]:
    import psutil
    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


# --- main ---------------------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batched-points", type=int, default=500_000)
    parser.add_argument("--single-points", type=int, default=20_000)
    parser.add_argument("--mlflow-batched-points", type=int, default=50_000)
    parser.add_argument("--mlflow-single-points", type=int, default=1_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-peer", action="store_true", help="leave MLflow out")
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 repeat")
    args = parser.parse_args()
    if args.quick:
        args.batched_points, args.single_points, args.repeats = 50_000, 1000, 1
        args.mlflow_batched_points, args.mlflow_single_points = 10_000, 200
    common.exit_on_sigterm()
    machine = machine_info()
    plan = PinPlan.make()
    root = common.temp_root("runyard-s7-")
    try:
        mine = ours(root / "ours", plan, {"batched": args.batched_points, "single": args.single_points}, args.repeats)
        peer_modes = {"batched": args.mlflow_batched_points, "single": args.mlflow_single_points}
        in_run = mlflow_client_in_runyard_run(root / "in-run", plan, peer_modes, args.repeats)
        peer = {"skipped": "--no-peer"} if args.no_peer else mlflow_peer(root / "peer", plan, peer_modes, args.repeats)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    batched = mine["batched"]["points_per_s"]["median"]
    single = mine["single"]["points_per_s"]["median"]
    peer_batched = peer.get("batched", {}).get("points_per_s", {}).get("median")
    peer_single = peer.get("single", {}).get("points_per_s", {}).get("median")
    rows = [
        row("metrics batched, SDK -> store", batched, "points/s", GOAL_BATCHED, ">=", peer="MLflow log_batch",
            peer_ratio=ratio(batched, peer_batched), digits=0),
        row("metrics single (flush per point)", single, "points/s", GOAL_SINGLE, ">=", peer="MLflow log_metric",
            peer_ratio=ratio(single, peer_single), digits=0),
    ]
    emit({"scenario": "S7", "name": "metric ingestion", "table": rows, "ours": mine, "mlflow": peer,
          "ratio_batched_to_mlflow": ratio(batched, peer_batched), "ratio_goal": GOAL_RATIO,
          "ratio_single_to_mlflow": ratio(single, peer_single),
          "mlflow_client_in_runyard_run": in_run,
          "ratio_mlflow_client_in_runyard_to_mlflow_server_batched": ratio(
              in_run.get("batched", {}).get("points_per_s", {}).get("median"), peer_batched),
          "pinning": plan.record(), "machine": machine})


if __name__ == "__main__":
    main()
