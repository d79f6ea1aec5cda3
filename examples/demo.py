"""`make demo`: start a local cluster, submit the quickstart run, stream its logs, show its metrics, then a run
whose conda file is built into an environment (its package from PyPI), stop.

Uses its own data directory and client config (.runyard-demo/), so it leaves a user's own cluster alone.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".runyard-demo"
ENV = {**{k: v for k, v in os.environ.items() if not k.startswith("RUNYARD_")},
       "RUNYARD_CONFIG": str(DATA / "config.toml")}


def runyard(*args: str, capture: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runyard", *args], env=ENV, text=True,
                          capture_output=capture, timeout=300)


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def wait_ready(up: subprocess.Popen[str]) -> None:
    assert up.stderr is not None
    deadline = time.monotonic() + 60
    for line in up.stderr:
        sys.stderr.write(line)
        if "cluster ready" in line:
            return
        if time.monotonic() > deadline or up.poll() is not None:
            break
    raise SystemExit(f"the local cluster did not start; see the logs in {DATA}")


def main() -> int:
    shutil.rmtree(DATA, ignore_errors=True)
    step("runyard up --agents 2   (a head and two agents on this machine)")
    up = subprocess.Popen([sys.executable, "-m", "runyard", "up", "--agents", "2", "--data", str(DATA)],
                          env=ENV, stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(up)
        runyard("nodes")
        step("runyard submit examples/quickstart -- python train.py   (streams the run's output)")
        submitted = runyard("submit", str(ROOT / "examples" / "quickstart"), "--", "python", "train.py")
        if submitted.returncode != 0:
            print(f"the run failed with exit code {submitted.returncode}", file=sys.stderr)
            return 1
        run_id = json.loads(runyard("runs", "--limit", "1", "-o", "json", capture=True).stdout)[0]["id"]
        step(f"runyard metrics {run_id}")
        runyard("metrics", run_id)
        step(f"runyard show {run_id}")
        runyard("show", run_id)
        step("runyard submit -f examples/environment/job.yml   (its conda file built once on the node, then shared)")
        started = time.monotonic()
        with_env = runyard("submit", "-f", str(ROOT / "examples" / "environment" / "job.yml"))
        if with_env.returncode != 0:
            print(f"the run with an environment failed with exit code {with_env.returncode}", file=sys.stderr)
            return 1
        print(f"(built and ran in {time.monotonic() - started:.1f}s)", flush=True)
        return 0
    finally:
        step("stopping the cluster")
        up.send_signal(signal.SIGINT)
        try:
            up.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            up.kill()


if __name__ == "__main__":
    sys.exit(main())
