"""S9 (logs): the last 1,000 lines of a 10M-line log, as `runyard logs run --tail 1000` gets them from the head.

Goal (docs: /work/shared/design/performance.md): p99 <= 50 ms.

The head's store (`scheduler.store.Store`, its own SQLite file, synchronous=FULL as the head runs it) is filled
with `--lines` log lines of 120 bytes of one run through `append_logs` (in batches, as the head ingests them),
with a second run's lines interleaved every `--other-every` batches so the run's rows are not one contiguous range
of ids. Then, `--samples` times: `tail_start(run, 1000)` and `read_logs(run, after_id=that, limit=1000)`, the two
reads the head's StreamLogs makes for `--tail 1000`, timed together; also the same through a real head's
StreamLogs RPC (TLS, loopback) opened on that data directory. The page cache is warm (the head reads its
own recent writes).
Prints one JSON object on stdout; logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import common  # noqa: E402
from common import emit, latency_ms, log, machine_info, metadata, ratio, row  # noqa: E402

GOAL_P99_MS = 50.0
TAIL = 1000
BATCH = 100_000


async def fill(data_dir: Path, lines: int, other_every: int) -> tuple[str, dict[str, Any]]:
    """Two runs, the first with `lines` lines; returns its id."""
    from scheduler.model import NewRun, RunSpec
    from scheduler.store import Store

    store = await Store.open(data_dir)
    try:
        run, other_run = [(await store.create_run(NewRun(
            workspace="default", experiment="bench-s9", display_name=name, tags={}, properties={},
            snapshot_sha256="0" * 64, spec=RunSpec(argv=("true",)), idempotency_key=name, parent_id="")))[0]
            for name in ("tail", "other")]
        pad = b"x" * 100
        started = time.perf_counter()
        seq = other = 0
        for n, start in enumerate(range(0, lines, BATCH)):
            count = min(BATCH, lines - start)
            await store.append_logs(run, 1, [(0, 1, s, time.time(), 0, b"%018d " % s + pad)
                                             for s in range(seq, seq + count)])
            seq += count
            if other_every and n % other_every == 0:
                await store.append_logs(other_run, 1, [(0, 1, s, time.time(), 0, b"other " + pad)
                                                   for s in range(other, other + 1000)])
                other += 1000
        elapsed = time.perf_counter() - started
        return run, {"fill_s": round(elapsed, 1), "rows_per_s": round(lines / elapsed)}
    finally:
        await store.close()


async def store_tail(data_dir: Path, samples: int, lines: int, run: str) -> list[float]:
    from scheduler.store import Store

    store = await Store.open(data_dir)
    try:
        timings = []
        for _ in range(samples):
            t0 = time.perf_counter()
            after = await store.tail_start(run, TAIL)
            rows = await store.read_logs(run, after_id=after, limit=TAIL)
            timings.append(time.perf_counter() - t0)
            if len(rows) != TAIL or rows[-1].seq != lines - 1:
                raise RuntimeError(f"tail read {len(rows)} rows ending at seq {rows[-1].seq if rows else None}")
        return timings
    finally:
        await store.close()


def rpc_tail(root: Path, data_dir: Path, samples: int, lines: int, run: str) -> list[float]:
    """The same through a real head's StreamLogs (tail 1000, no follow), over one client channel."""
    from protos import runyard_pb2 as pb
    from protos import runyard_pb2_grpc as pb_grpc
    from testbed.harness import Head

    head = Head(data_dir, root / "head.log")
    head.start()
    try:
        config = head.client_config()
        channel = common.channel(config)
        stub = pb_grpc.RunyardStub(channel)
        md = metadata(config.token)
        timings = []
        for _ in range(samples):
            t0 = time.perf_counter()
            got = [line for response in stub.StreamLogs(pb.LogsRequest(run_id=run, tail=TAIL), metadata=md,
                                                        timeout=30) for line in response.lines]
            timings.append(time.perf_counter() - t0)
            if len(got) != TAIL or got[-1].record.seq != lines - 1:
                raise RuntimeError(f"StreamLogs tail gave {len(got)} lines")
        channel.close()
        return timings
    finally:
        head.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=10_000_000)
    parser.add_argument("--other-every", type=int, default=10, help="another run's lines every N batches (0: none)")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="1M lines (smoke run)")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    common.exit_on_sigterm()
    if args.quick:
        args.lines, args.samples = 1_000_000, 50

    root = common.temp_root("runyard-bench-s9-logs-")
    data_dir = root / "head"
    result: dict[str, Any] = {"scenario": "S9", "what": f"last {TAIL} lines of a {args.lines:,}-line log",
                              "machine": machine_info(root)}
    try:
        log(f"S9 logs: filling {args.lines:,} lines in {data_dir}")
        run, filled = asyncio.run(fill(data_dir, args.lines, args.other_every))
        log(f"  filled in {filled['fill_s']} s")
        store_ms = latency_ms(asyncio.run(store_tail(data_dir, args.samples, args.lines, run)))
        rpc_ms = latency_ms(rpc_tail(root, data_dir, args.samples, args.lines, run))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    result["figures"] = {"store_tail_start_and_read_ms": store_ms, "stream_logs_rpc_ms": rpc_ms, "fill": filled}
    result["ratios"] = {"rpc_p99_to_goal": ratio(rpc_ms["p99"], GOAL_P99_MS),
                        "store_p99_to_goal": ratio(store_ms["p99"], GOAL_P99_MS)}
    result["table"] = [
        row(f"last {TAIL} lines of a {args.lines // 1_000_000}M-line log (StreamLogs), p99", rpc_ms["p99"], "ms",
            GOAL_P99_MS, "<="),
        row("the same, head store only (tail_start + read_logs), p99", store_ms["p99"], "ms", GOAL_P99_MS, "<="),
    ]
    result["method"] = {"lines": args.lines, "line_bytes": 120, "samples": args.samples,
                        "other_run_every_batches": args.other_every, "batch": BATCH,
                        "store": "tail_start + read_logs in-process, timed together",
                        "rpc": "StreamLogs(tail=1000) through a real head, TLS on loopback, one channel"}
    log(f"S9 logs: StreamLogs p50 {rpc_ms['p50']} ms p99 {rpc_ms['p99']} ms; store p99 {store_ms['p99']} ms")
    emit(result)


if __name__ == "__main__":
    main()
