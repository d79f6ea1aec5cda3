"""S6: log ingestion: 8 runs writing 120-byte lines, agent -> head -> store, read back with `logs -f`.

Goals (docs: /work/shared/design/performance.md): >= 150k lines/s sustained; written -> visible in `logs -f`
p99 <= 1 s. And (the agent's part): a run's wall time within 5 % of the same run writing to /dev/null; the agent's
RSS <= 80 MB whatever the log rate.

A real head and one agent (testbed.harness, loopback, TLS; the agent says it has `--runs` CPUs, so that every run
starts at once). `--runs` runs are submitted together; each is a
Python process that writes `--lines` lines of 120 bytes (119 and a newline) to stdout as fast as it can, each
line starting with the time it was written and its number, and measures its own wall time from its first write to
its last flush (printed on stderr at the end). Each run is followed by `Runyard.StreamLogs(follow=True)` in a
thread of this process from its submission on.
- lines/s: all the runs' lines / (the last line seen by a follower - the first line written);
- written -> visible: a follower's receive time - the time written in the line (same machine, same clock), for
  every 100th line;
- the runs' wall time against the limit: the same command, `--runs` copies at once, stdout to /dev/null, in the
  same repeat just before ours; the ratio of the medians of each run's own wall time, and of the runs' span (first
  write of the first -> last flush of the last: ours start one by one, so a run's own time also says how many
  others shared the CPUs with it);
- the agent's peak RSS: VmHWM of the agent process at the end.
Prints one JSON object on stdout; logs go to stderr.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import common  # noqa: E402
from common import CpuMeter, emit, latency_ms, log, machine_info, metadata, ratio, row  # noqa: E402

GOAL_LINES_PER_S = 150_000
GOAL_VISIBLE_P99_MS = 1000.0
GOAL_WALL_RATIO = 1.05
GOAL_AGENT_RSS_MB = 80.0
SAMPLE_EVERY = 100
PACED_SECONDS = 6.0     # the sustained phase: the runs write GOAL_LINES_PER_S between them, this long

WRITER = """
import sys, time
n = int(sys.argv[1])
w = sys.stdout.buffer.write
pad = b"x" * 92
t0 = time.time()
for i in range(n):
    w(b"%.6f %09d " % (time.time(), i) + pad + b"\\n")
sys.stdout.flush()
sys.stderr.write("wall %.6f %.6f\\n" % (time.time() - t0, t0))
"""


# The same lines, written at a steady rate (in bursts every 10 ms) rather than as fast as the run can.
PACED_WRITER = """
import sys, time
n, rate = int(sys.argv[1]), float(sys.argv[2])
w = sys.stdout.buffer.write
pad = b"x" * 92
burst = max(1, int(rate / 100))
t0 = time.time()
i = 0
while i < n:
    for _ in range(min(burst, n - i)):
        w(b"%.6f %09d " % (time.time(), i) + pad + b"\\n")
        i += 1
    sys.stdout.flush()
    pause = t0 + i / rate - time.time()
    if pause > 0:
        time.sleep(pause)
sys.stderr.write("wall %.6f %.6f\\n" % (time.time() - t0, t0))
"""


def writer_argv(lines: int, rate: float | None) -> list[str]:
    return ["python3", "-c", WRITER, str(lines)] if rate is None else ["python3", "-c", PACED_WRITER, str(lines),
                                                                        str(rate)]


def limit_walls(runs: int, lines: int, rate: float | None = None) -> list[tuple[float, float]]:
    """The same command, `runs` copies at once, stdout to /dev/null: each one's own wall time and start."""
    procs = [subprocess.Popen(writer_argv(lines, rate), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) for _ in range(runs)]
    walls = []
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        walls.append((float(err.split()[-2]), float(err.split()[-1])))
    return walls


class Follower(threading.Thread):
    """`logs -f` of one run: counts its stdout lines, samples written -> visible."""

    def __init__(self, stub: Any, md: Any, run_id: str) -> None:
        super().__init__(daemon=True)
        self.stub, self.md, self.run_id = stub, md, run_id
        self.lines = 0
        self.first_written = float("inf")
        self.last_seen = 0.0
        self.delays: list[float] = []
        self.wall: tuple[float, float] | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        from protos import runyard_pb2 as pb
        try:
            request = pb.LogsRequest(run_id=self.run_id, follow=True, packed=True)
            for response in self.stub.StreamLogs(request, metadata=self.md, timeout=1800):
                now = time.time()
                for chunk in response.chunks:
                    if chunk.stream != pb.STDOUT:
                        if chunk.stream == pb.STDERR and chunk.data.startswith(b"wall "):
                            self.wall = float(chunk.data.split()[1]), float(chunk.data.split()[2])
                        continue
                    offset = 0
                    for length in chunk.lengths:
                        if self.lines % SAMPLE_EVERY == 0:
                            written = float(chunk.data[offset:offset + 17])
                            self.first_written = min(self.first_written, written)
                            self.delays.append(now - written)
                        offset += length
                        self.lines += 1
                if response.chunks:
                    self.last_seen = now
        except BaseException as err:  # reported by the main thread
            self.error = err


def _span(walls: list[tuple[float, float]]) -> float:
    """From the first start to the last end of (wall, start) pairs."""
    return max(start + wall for wall, start in walls) - min(start for _, start in walls)


def peak_rss_mb(pid: int) -> dict[str, float]:
    found = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                found[key] = round(int(value.split()[0]) / 1024, 1)
    return found


def one_repeat(stub: Any, md: Any, sha: str, runs: int, lines: int, rate: float | None = None) -> dict[str, Any]:
    from protos import runyard_pb2 as pb
    followers = []
    for _ in range(runs):
        request = pb.SubmitRequest(experiment="bench-s6", snapshot_sha256=sha, idempotency_key=uuid.uuid4().hex,
                                   spec=pb.RunSpec(argv=writer_argv(lines, rate)))
        followers.append(Follower(stub, md, stub.Submit(request, metadata=md, timeout=30).run_id))
    for follower in followers:
        follower.start()
    for follower in followers:
        follower.join()
        if follower.error is not None:
            raise RuntimeError(f"following {follower.run_id} failed: {follower.error}")
        state = stub.GetRun(pb.RunRef(run_id=follower.run_id), metadata=md, timeout=10).state
        if state != pb.RUN_STATE_COMPLETED or follower.lines != lines:
            raise RuntimeError(f"run {follower.run_id}: state {state}, {follower.lines} of {lines} lines seen")
    first = min(f.first_written for f in followers)
    last = max(f.last_seen for f in followers)
    return {"lines": runs * lines, "seconds": last - first, "lines_per_s": runs * lines / (last - first),
            "delays": [d for f in followers for d in f.delays], "walls": [f.wall for f in followers]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--lines", type=int, default=250_000, help="per run")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="fewer lines (smoke run)")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    common.exit_on_sigterm()
    paced_seconds = PACED_SECONDS
    if args.quick:
        args.lines, args.repeats, paced_seconds = 25_000, 1, 1.0
    paced_rate = GOAL_LINES_PER_S / args.runs       # per run
    paced_lines = int(paced_rate * paced_seconds)

    from protos import runyard_pb2_grpc as pb_grpc
    from testbed.harness import Cluster

    root = common.temp_root("runyard-bench-s6-")
    result: dict[str, Any] = {"scenario": "S6", "what": f"{args.runs} runs writing 120-byte lines, agent -> head -> "
                                                        "store -> logs -f", "machine": machine_info(root)}
    log(f"S6: cluster in {root}")
    snap = common.make_snapshot(root)
    # as many CPUs as runs, so that all of them run at once, as the limit's do
    cluster = Cluster.start(root / "cluster", agents=1, cpus=float(args.runs))
    try:
        config = cluster.head.client_config()
        channel = common.channel(config)
        stub = pb_grpc.RunyardStub(channel)
        common.upload_snapshot(stub, config.token, snap)
        md = metadata(config.token)
        head_pid, agent_pid = int(cluster.head.proc.pid), int(cluster.agents[0].proc.pid)  # type: ignore[union-attr]
        reps, limits, cpus = [], [], []
        for rep in range(args.repeats):
            limits.append(limit_walls(args.runs, args.lines))
            meter = CpuMeter({"head": head_pid, "agent": agent_pid}, children=False).start()
            reps.append(one_repeat(stub, md, snap.sha256, args.runs, args.lines))
            cpus.append(meter.stop())
            log(f"  rep {rep + 1}: {reps[-1]['lines_per_s']:,.0f} lines/s; visible p99 "
                f"{common.percentile(reps[-1]['delays'], 99) * 1000:.0f} ms; wall median "
                f"{common.percentile([w[0] for w in reps[-1]['walls'] if w], 50):.2f} s vs /dev/null "
                f"{common.percentile([w[0] for w in limits[-1]], 50):.2f} s")
        # At the goal's sustained rate: how soon a line is visible, and whether runs keep their pace.
        paced_limit = limit_walls(args.runs, paced_lines, paced_rate)
        paced = one_repeat(stub, md, snap.sha256, args.runs, paced_lines, paced_rate)
        log(f"  paced at {GOAL_LINES_PER_S:,} lines/s: visible p99 {common.percentile(paced['delays'], 99) * 1000:.0f} "
            f"ms")
        rss = peak_rss_mb(agent_pid)
        rss_head = peak_rss_mb(head_pid)
        channel.close()
    finally:
        cluster.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    rate = common.percentile([r["lines_per_s"] for r in reps], 50)
    visible = latency_ms([d for r in reps for d in r["delays"]])
    ours_wall = common.percentile([w[0] for r in reps for w in r["walls"] if w is not None], 50)
    limit_wall = common.percentile([w[0] for walls in limits for w in walls], 50)
    wall_ratio = ratio(ours_wall, limit_wall)
    # The runs' span, from the first one's first write to the last one's last flush: ours start one by one as the
    # agent starts them, the limit's all at once, so each one's own wall time also measures how many ran together.
    ours_span = common.percentile([_span([w for w in r["walls"] if w is not None]) for r in reps], 50)
    limit_span = common.percentile([_span(walls) for walls in limits], 50)
    paced_visible = latency_ms(paced["delays"])
    paced_wall = common.percentile([w[0] for w in paced["walls"] if w is not None], 50)
    paced_limit_wall = common.percentile([w[0] for w in paced_limit], 50)
    result["figures"] = {
        "sustained": {"lines_per_s_asked": GOAL_LINES_PER_S, "seconds": paced_seconds,
                      "lines_per_s_seen": round(paced["lines_per_s"]), "written_to_visible_ms": paced_visible,
                      "run_wall_s": {"ours_median": round(paced_wall, 3),
                                     "dev_null_median": round(paced_limit_wall, 3)}},
        "lines_per_s": common.summarize([r["lines_per_s"] for r in reps], 0),
        "seconds_per_repeat": [round(r["seconds"], 2) for r in reps],
        "written_to_visible_ms": visible,
        "run_wall_s": {"ours_median": round(ours_wall, 3), "dev_null_median": round(limit_wall, 3),
                       "ours": [[round(w[0], 3) for w in r["walls"] if w is not None] for r in reps],
                       "dev_null": [[round(w[0], 3) for w in walls] for walls in limits],
                       "ours_span_median": round(ours_span, 3), "dev_null_span_median": round(limit_span, 3)},
        "agent_rss_mb": rss, "head_rss_mb": rss_head,
    }
    result["cpu_during_our_runs"] = cpus
    result["ratios"] = {"lines_per_s_to_goal": ratio(rate, GOAL_LINES_PER_S),
                        "visible_p99_to_goal": ratio(visible["p99"], GOAL_VISIBLE_P99_MS),
                        "run_wall_to_dev_null": wall_ratio,
                        "runs_span_to_dev_null": ratio(ours_span, limit_span),
                        "agent_peak_rss_to_goal": ratio(rss.get("VmHWM"), GOAL_AGENT_RSS_MB)}
    result["table"] = [
        row(f"log ingestion, {args.runs} runs of 120-byte lines as fast as they can", rate, "lines/s",
            GOAL_LINES_PER_S, ">=", digits=0),
        row(f"log line written -> visible in logs -f, p99, at a sustained {GOAL_LINES_PER_S:,} lines/s",
            paced_visible["p99"], "ms", GOAL_VISIBLE_P99_MS, "<="),
        row(f"run wall time at a sustained {GOAL_LINES_PER_S:,} lines/s, through Runyard / to /dev/null",
            ratio(paced_wall, paced_limit_wall), "x", GOAL_WALL_RATIO, "<=", digits=3),
        row("log line written -> visible, p99, as fast as they can (the backlog)", visible["p99"], "ms", None, "<="),
        row("run wall time as fast as they can (2 cores shared with the head and agent), through Runyard / to "
            "/dev/null", wall_ratio, "x", GOAL_WALL_RATIO, "<=", digits=3),
        row("the runs' span, first write -> last flush, through Runyard / to /dev/null", ratio(ours_span, limit_span),
            "x", GOAL_WALL_RATIO, "<=", digits=3),
        row("agent peak RSS under that log rate", rss.get("VmHWM"), "MB", GOAL_AGENT_RSS_MB, "<="),
    ]
    result["method"] = {
        "runs": args.runs, "lines_per_run": args.lines, "line_bytes": 120, "repeats": args.repeats,
        "lines_per_s": "all lines / (last line seen by a StreamLogs follower - first line written), median of repeats",
        "visible": f"follower receive time - the time written in the line, every {SAMPLE_EVERY}th line, pooled",
        "span": "the first run's first write -> the last run's last flush, median of repeats; the same for the limit",
        "wall": "each run's own time from its first write to its last flush; the limit: the same command, "
                f"{args.runs} at once, stdout to /dev/null, just before ours in every repeat",
        "rss": "VmHWM (peak) of the agent process at the end of all repeats",
        "sustained": f"the same runs writing {paced_rate:,.0f} lines/s each ({GOAL_LINES_PER_S:,} between them) for "
                     f"{paced_seconds:g} s, in bursts every 10 ms; the limit: the same paced command to /dev/null",
    }
    log(f"S6: {rate:,.0f} lines/s; visible p99 {visible['p99']} ms; wall ratio {wall_ratio}; agent peak RSS {rss}")
    emit(result)


if __name__ == "__main__":
    main()
