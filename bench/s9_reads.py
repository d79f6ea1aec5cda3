"""S9 (runs and metrics): list 10,000 runs; a 100,000-point series, whole and downsampled for a chart.

Goals (docs: /work/shared/design/performance.md): ListRuns of 10k runs p99 <= 100 ms; a 100k-point series
p99 <= 200 ms. (The 10M-line log tail of S9 is measured by a script of its own.)

A real head (testbed.harness, no agents: every run stays Queued, TLS as by default) gets `--runs` runs through
`Runyard.Submit`. One of them gets `--points` points of one key (plus three other keys of as many points, so that
the series is read out of a bigger run), written straight into the head's database with sqlite3 while the head
runs (WAL: the head's reader sees them at once): this scenario measures reads, S7 measures ingest. Then, over one
client channel opened and warmed up before:
- `ListRuns(limit=10000)` as `runyard runs --limit 10000` sends it;
- `GetMetrics(run, key)` packed as `runyard metrics RUN --key K` asks for it (columns per series);
- the same downsampled to at most 1,000 buckets (`max_points`, `runyard metrics RUN --key K --points 1000`);
- references: the same series unpacked (one message per point, what clients that predate the columns get), and
  the summaries of the whole run (`runyard metrics RUN`: aggregated in SQL);
- the CLI itself, `runyard metrics RUN --key K -o json` as a process, wall time (python start-up included).
Each is warmed up, then called `--calls` times; p50/p99 per figure. The head is pinned to core 0 and this client to
core 1. The load average is in the machine facts: the machine is shared.
Prints one JSON object on stdout; logs go to stderr.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import common  # noqa: E402
from common import PinPlan, emit, latency_ms, log, machine_info, metadata, row  # noqa: E402

GOAL_LIST_P99_MS = 100.0
GOAL_SERIES_P99_MS = 200.0
KEY = "loss"
OTHER_KEYS = ("accuracy", "lr", "grad_norm")


def submit_runs(stub: Any, md: Any, sha: str, count: int) -> list[str]:
    from protos import runyard_pb2 as pb

    spec = pb.RunSpec(argv=["python", "train.py", "--epochs", "10"])
    ids = []
    for i in range(count):
        ids.append(stub.Submit(pb.SubmitRequest(
            experiment=f"bench-s9-{i % 7}", display_name=f"run {i}", tags={"team": "bench", "i": str(i)},
            snapshot_sha256=sha, spec=spec, idempotency_key=uuid.uuid4().hex), metadata=md, timeout=30).run_id)
    return ids


def write_points(db: Path, run_id: str, points: int) -> None:
    """`points` points of KEY and of each other key, as one rank-0 attempt-1 run would have logged them (a point
    every step, one line per step holding every key), a few NaN and infinities among them."""
    rng = random.Random(9)
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout=10000")
        conn.execute("BEGIN IMMEDIATE")
        t0 = time.time() - points
        for key in (KEY, *OTHER_KEYS):
            series = conn.execute("INSERT INTO metric_series (run_id, key, rank) VALUES (?, ?, 0)", (run_id, key)).lastrowid
            rows = [(series, step, t0 + step, 1, step,
                     float("nan") if step % 10007 == 5 else (float("inf") if step % 20011 == 7 else rng.random()))
                    for step in range(points)]
            conn.executemany("INSERT INTO metric_points (series, step, ts, attempt, seq, value) VALUES (?, ?, ?, ?, ?, ?)",
                             rows)
        conn.execute("COMMIT")
    finally:
        conn.close()


def timed(call: Callable[[], Any], calls: int, warmup: int) -> tuple[list[float], Any]:
    last = None
    for _ in range(warmup):
        last = call()
    samples = []
    for _ in range(calls):
        t = time.perf_counter()
        last = call()
        samples.append(time.perf_counter() - t)
    return samples, last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--cli-calls", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="1,000 runs, 10k points, 5 calls")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.points, args.calls, args.cli_calls = 1000, 10_000, 5, 2
    common.exit_on_sigterm()

    from protos import runyard_pb2 as pb
    from protos import runyard_pb2_grpc as pb_grpc
    from testbed.harness import Cluster

    root = common.temp_root("runyard-s9-")
    machine = machine_info()
    plan = PinPlan.make()
    cluster = Cluster.start(root, agents=0, head_settings={"clusters": {"default": {}}})
    try:
        plan.apply("head", cluster.head.proc.pid)  # type: ignore[union-attr]
        if plan.enabled:
            common.pin_self(plan.generator_cpus)
        config = cluster.head.client_config()
        channel = common.channel(config, [("grpc.max_receive_message_length", 256 * 1024 * 1024)])
        stub = pb_grpc.RunyardStub(channel)
        md = metadata(config.token)
        snap = common.make_snapshot(root)
        common.upload_snapshot(stub, config.token, snap)
        t = time.monotonic()
        ids = submit_runs(stub, md, snap.sha256, args.runs)
        log(f"submitted {len(ids)} runs in {time.monotonic() - t:.1f} s")
        run_id = ids[len(ids) // 2]
        t = time.monotonic()
        write_points(cluster.head.data_dir / "runyard.db", run_id, args.points)
        log(f"wrote {args.points} points x {1 + len(OTHER_KEYS)} keys in {time.monotonic() - t:.1f} s")

        figures: dict[str, Any] = {}

        def measure(name: str, call: Callable[[], Any], check: Callable[[Any], Any]) -> None:
            samples, last = timed(call, args.calls, 3)
            figures[name] = {**latency_ms(samples), "answer": check(last)}
            log(f"{name:28s} p50 {figures[name]['p50']:8.2f} ms  p99 {figures[name]['p99']:8.2f} ms  "
                f"{figures[name]['answer']}")

        measure("list_runs", lambda: stub.ListRuns(pb.ListRunsRequest(limit=10_000), metadata=md, timeout=60),
                lambda r: {"runs": len(r.runs), "truncated": r.truncated, "bytes": r.ByteSize()})
        series_request = pb.MetricsRequest(run_id=run_id, key=KEY, packed=True)
        measure("series_full", lambda: stub.GetMetrics(series_request, metadata=md, timeout=60),
                lambda r: {"points": len(r.series[0].steps), "bytes": r.ByteSize()})
        down_request = pb.MetricsRequest(run_id=run_id, key=KEY, packed=True, max_points=1000)
        measure("series_downsampled_1000", lambda: stub.GetMetrics(down_request, metadata=md, timeout=60),
                lambda r: {"buckets": len(r.series[0].steps), "total": r.series[0].total, "bytes": r.ByteSize()})
        summary_request = pb.MetricsRequest(run_id=run_id, summaries_only=True)
        measure("run_summaries", lambda: stub.GetMetrics(summary_request, metadata=md, timeout=60),
                lambda r: {"keys": len(r.summaries), "count": r.summaries[0].count if r.summaries else 0})
        unpacked = pb.MetricsRequest(run_id=run_id, key=KEY)
        samples, last = timed(lambda: stub.GetMetrics(unpacked, metadata=md, timeout=60), max(3, args.calls // 3), 1)
        figures["series_full_unpacked_reference"] = {**latency_ms(samples), "answer": {"points": len(last.points)}}
        log(f"series unpacked (reference)    p50 {figures['series_full_unpacked_reference']['p50']:8.2f} ms")

        exe = [sys.executable, "-m", "runyard", "metrics", run_id, "--key", KEY, "-o", "json"]
        env = cluster.env()

        def cli_call() -> int:
            done = subprocess.run(exe, env=env, capture_output=True, timeout=120)
            if done.returncode != 0:
                raise RuntimeError(done.stderr.decode()[-2000:])
            return len(done.stdout)
        samples, size = timed(cli_call, args.cli_calls, 1)
        figures["cli_series_json"] = {**latency_ms(samples), "answer": {"stdout_bytes": size}}
        log(f"cli metrics --key -o json      p50 {figures['cli_series_json']['p50']:8.2f} ms")
        channel.close()
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)

    rows = [
        row(f"list {args.runs} runs p99", figures["list_runs"]["p99"], "ms", GOAL_LIST_P99_MS, "<=", digits=1),
        row(f"{args.points}-point series p99", figures["series_full"]["p99"], "ms", GOAL_SERIES_P99_MS, "<=",
            digits=1),
        row(f"{args.points}-point series, 1000 buckets p99", figures["series_downsampled_1000"]["p99"], "ms",
            GOAL_SERIES_P99_MS, "<=", digits=1),
    ]
    emit({"scenario": "S9", "name": "reads: runs and metric series", "table": rows, "figures": figures,
          "sizes": {"runs": args.runs, "points": args.points, "keys": 1 + len(OTHER_KEYS), "calls": args.calls},
          "pinning": plan.record(), "machine": machine})


if __name__ == "__main__":
    main()
