"""S13 (the CLI answers at once): wall time of CLI commands as processes, and serial submits of an unchanged directory.

Goals (issue "operations"): p50 `runyard --version` <= 120 ms; `runyard runs`, `show RUN` and `nodes` <= 250 ms
each; >= 5 serial `runyard submit -d DIR -- true` per second of a directory that does not change between them.

A real head and one agent (testbed.harness, TLS as by default). Each command runs as a process of its own, as a
user types it (`python -m runyard ...`, this checkout first on the path), and its wall time from spawn to exit is
one sample; the commands take turns, so that a burst of load on the shared machine falls on all of them alike.
Beside them, in the same run: `python -c pass` of the same interpreter (the floor: the start-up of Python itself),
and for the submits `sbatch --wrap true` when `sbatch` is on the PATH (Slurm's submit), else `python -c pass`
again as many times. The CLI processes run with bytecode caching on (in a directory of the bench's), as an
installed CLI does: pip compiles the package when it installs it.
Prints one JSON object on stdout; logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import common  # noqa: E402
from common import emit, latency_ms, log, machine_info, row  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
GOAL_VERSION_P50_MS = 120.0
GOAL_READ_P50_MS = 250.0
GOAL_SUBMITS_PER_S = 5.0
READY_S = 60.0


def wall(argv: list[str], env: dict[str, str], cwd: Path | None = None) -> tuple[float, subprocess.CompletedProcess[bytes]]:
    t = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, timeout=120)
    return time.perf_counter() - t, done


def checked(argv: list[str], env: dict[str, str], cwd: Path | None = None) -> tuple[float, bytes]:
    took, done = wall(argv, env, cwd)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.decode()[-2000:]}")
    return took, done.stdout


def make_project(root: Path) -> Path:
    """A small code directory: a script, a config and a package of a few modules."""
    code = root / "project"
    (code / "model").mkdir(parents=True)
    (code / "train.py").write_text("import model\nprint('training')\n")
    (code / "config.yaml").write_text("lr: 0.1\nepochs: 10\n")
    for i in range(8):
        (code / "model" / f"layer{i}.py").write_text(f"def layer{i}(x):\n    return x * {i}\n" * 20)
    (code / "model" / "__init__.py").write_text("")
    return code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=15, help="samples of each command")
    parser.add_argument("--submits", type=int, default=100, help="serial submits of the unchanged directory")
    parser.add_argument("--quick", action="store_true", help="5 samples, 10 submits")
    args = parser.parse_args()
    if args.quick:
        args.samples, args.submits = 5, 10
    common.exit_on_sigterm()

    from testbed.harness import Cluster, wait_until

    root = common.temp_root("runyard-s13-")
    machine = machine_info()
    code = make_project(root)       # made before the cluster starts: by the first submit it is seconds old
    cluster = Cluster.start(root / "cluster", agents=1)
    try:
        env = {k: v for k, v in cluster.env().items() if k != "PYTHONDONTWRITEBYTECODE"}
        env |= {"PYTHONPATH": str(ROOT), "PYTHONPYCACHEPREFIX": str(root / "pycache")}
        cache_file = Path(env["XDG_CACHE_HOME"]) / "runyard" / "snapshots.json"
        cli = [sys.executable, "-m", "runyard"]
        submit = [*cli, "submit", "-d", str(code), "--", "true"]

        # warm up: bytecode compiled, the snapshot uploaded and its hash remembered (a directory younger than the
        # cache's 2 s timestamp window is zipped again until it is older)
        run_id = checked(submit, env)[1].decode().strip().splitlines()[-1]
        wait_until("the snapshot's hash in the cache", lambda: checked(submit, env) and cache_file.exists(),
                   timeout_s=READY_S, every_s=0.5)
        cluster.wait_state(run_id, "Completed", timeout_s=READY_S)
        commands: dict[str, list[str]] = {
            "python_pass": [sys.executable, "-c", "pass"],
            "version": [*cli, "--version"],
            "runs": [*cli, "runs"],
            "show": [*cli, "show", run_id],
            "nodes": [*cli, "nodes"],
        }
        for argv in commands.values():
            checked(argv, env)
        samples: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.samples):
            for name, argv in commands.items():
                samples[name].append(checked(argv, env)[0])
        figures: dict[str, Any] = {name: latency_ms(s) for name, s in samples.items()}
        for name in commands:
            log(f"{name:12s} p50 {figures[name]['p50']:8.1f} ms  p99 {figures[name]['p99']:8.1f} ms")

        t = time.perf_counter()
        for _ in range(args.submits):
            checked(submit, env)
        submit_s = time.perf_counter() - t
        cached = json.loads(cache_file.read_text())
        figures["submits"] = {"count": args.submits, "wall_s": round(submit_s, 3),
                              "per_s": round(args.submits / submit_s, 2),
                              "cache_entries": len(cached)}
        log(f"{args.submits} serial submits in {submit_s:.2f} s: {args.submits / submit_s:.2f}/s")

        sbatch = shutil.which("sbatch")
        peer_argv = [sbatch, "--wrap", "true"] if sbatch else [sys.executable, "-c", "pass"]
        peer_name = "sbatch --wrap true" if sbatch else "python -c pass"
        t = time.perf_counter()
        for _ in range(args.submits):
            checked(peer_argv, env)
        peer_s = time.perf_counter() - t
        figures["submits_peer"] = {"command": peer_name, "count": args.submits, "wall_s": round(peer_s, 3),
                                   "per_s": round(args.submits / peer_s, 2)}
        log(f"{args.submits} x {peer_name} in {peer_s:.2f} s: {args.submits / peer_s:.2f}/s")
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)

    floor = figures["python_pass"]["p50"]

    def read_row(name: str, label: str, goal: float) -> dict[str, Any]:
        p50 = figures[name]["p50"]
        return row(f"`runyard {label}` p50 (python -c pass {floor:.0f} ms)", p50, "ms", goal, "<=",
                   peer="python -c pass", peer_ratio=common.ratio(p50, floor), digits=1)

    per_s, peer_per_s = figures["submits"]["per_s"], figures["submits_peer"]["per_s"]
    rows = [
        read_row("version", "--version", GOAL_VERSION_P50_MS),
        read_row("runs", "runs", GOAL_READ_P50_MS),
        read_row("show", "show RUN", GOAL_READ_P50_MS),
        read_row("nodes", "nodes", GOAL_READ_P50_MS),
        row(f"serial `runyard submit -d DIR -- true` of an unchanged directory ({peer_name}: {peer_per_s:g}/s)",
            per_s, "/s", GOAL_SUBMITS_PER_S, ">=", peer=peer_name, peer_ratio=common.ratio(per_s, peer_per_s),
            digits=2),
    ]
    emit({"scenario": "S13", "name": "the CLI answers at once", "table": rows, "figures": figures,
          "medians_ms": {name: round(statistics.median(s) * 1000, 1) for name, s in samples.items()},
          "sizes": {"samples": args.samples, "submits": args.submits}, "machine": machine})


if __name__ == "__main__":
    main()
