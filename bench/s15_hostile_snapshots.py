"""S15: hostile snapshot uploads: the head's memory during a million-entry upload, and the latency of other calls
while bombs are being checked.

Goals: the head's RSS grows by at most 50 MB while a zip of 1,000,000 empty entries (88 MB) is uploaded and
refused; ListRuns/GetRun p99 at most 100 ms while overlapping-entry bombs ("better zip bomb", 1,000 entries sharing
one deflated 1 MiB kernel: 1 GB unpacked from about 100 KB) are uploaded and checked back to back.

A real head with no agent (testbed.harness, loopback), 20 queued runs for ListRuns and GetRun to read. Phases:
- million: the zip uploaded (runyard.client, 1 MiB chunks) 3 times while a thread samples the head's RSS every
  5 ms; the figure is the largest peak minus the RSS just before. Peer, measured in the same run: the same zip
  opened with `zipfile.ZipFile` in a fresh process (what a check that parses first costs): its peak RSS growth.
- idle: ListRuns and GetRun, alternately, one at a time, for a window: the head's latency with nothing else to do.
- overlap: the same calls while another process (the uploader) uploads the overlapping bomb back to back.
- deflate: the same calls while the uploader uploads a deflate bomb (1 GiB of zeros in 1 MB) back to back, so a
  check process unpacks for seconds at a time. Its figure has the same goal.
Each latency phase runs `--repeats` windows; percentiles are over all windows' calls pooled, with each window's
p99 given too. The head is pinned to core 0, this client and the uploader to core 1 when there are 2+ cores; the
check processes the head starts inherit core 0, so they compete with the head for it (at nice 10).
Prints one JSON object on stdout; logs go to stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing as mp
import os
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
from common import PinPlan, emit, latency_ms, log, machine_info, metadata, ratio, row, summarize  # noqa: E402

GOAL_RSS_MB = 50.0
GOAL_P99_MS = 100.0
MB = 1024 * 1024
CALL_TIMEOUT_S = 10.0
CLUSTER = "s15"


def _sha(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# --- the uploader: another process, uploading one archive back to back ------------------------------------------

def upload_loop(config: Any, archive: str, cpus: list[int] | None, ready: Any, stop: Any, out: Any) -> None:
    """Set `ready` once connected, then upload `archive` again and again until `stop` is set; put (refusals, other
    outcomes, seconds each) on `out`."""
    if cpus:
        common.pin_self(cpus)
    from runyard.client import Client
    from runyard.errors import InvalidArgument

    path = Path(archive)
    sha = _sha(path)
    refused, other, took = 0, [], []
    with Client(config, timeout_s=120) as client:
        client.has_snapshot(sha)
        ready.set()
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                client.upload_snapshot(path, sha)
                other.append("accepted")
            except InvalidArgument:
                refused += 1
            except Exception as err:  # noqa: BLE001 - reported, not hidden
                other.append(f"{type(err).__name__}: {err}")
            took.append(time.perf_counter() - t0)
    out.put((refused, other[:5], took))


# --- phases ----------------------------------------------------------------------------------------------------

def calls_for(stub: Any, pb: Any, md: Any, run_ids: list[str], window_s: float) -> list[float]:
    """ListRuns and GetRun alternately, one at a time, for `window_s`; the latency of each, in seconds."""
    samples: list[float] = []
    deadline = time.perf_counter() + window_s
    i = 0
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        if i % 2 == 0:
            stub.ListRuns(pb.ListRunsRequest(limit=50), metadata=md, timeout=CALL_TIMEOUT_S)
        else:
            stub.GetRun(pb.RunRef(run_id=run_ids[i % len(run_ids)]), metadata=md, timeout=CALL_TIMEOUT_S)
        samples.append(time.perf_counter() - t0)
        i += 1
    return samples


def while_uploading(stub: Any, pb: Any, md: Any, run_ids: list[str], window_s: float, cluster: Any,
                    archive: Path, cpus: list[int] | None) -> dict[str, Any]:
    """Latencies of other calls while the uploader process uploads `archive` back to back."""
    ctx = mp.get_context("spawn")
    ready, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
    uploader = ctx.Process(target=upload_loop, args=(cluster.head.client_config(), str(archive), cpus, ready, stop,
                                                      out))
    uploader.start()
    try:
        if not ready.wait(60):
            raise RuntimeError("the uploader did not connect within 60 s")
        samples = calls_for(stub, pb, md, run_ids, window_s)
    finally:
        stop.set()
        refused, other, took = out.get(timeout=300)
        uploader.join(timeout=60)
    return {"samples": samples, "uploads_refused": refused, "uploads_otherwise": other,
            "upload_s": summarize(took, 3)}


def million_rss(cluster: Any, archive: Path, repeats: int) -> list[dict[str, float]]:
    """Upload the million-entry zip `repeats` times; the head's RSS before, at its peak and after each, in MB."""
    import psutil

    from runyard.errors import InvalidArgument

    head = psutil.Process(cluster.head.proc.pid)
    client = cluster.client()
    sha = _sha(archive)
    found = []
    for _ in range(repeats):
        before = head.memory_info().rss
        peak = [before]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.005):
                peak[0] = max(peak[0], head.memory_info().rss)

        sampler = threading.Thread(target=sample)
        sampler.start()
        t0 = time.perf_counter()
        try:
            client.upload_snapshot(archive, sha)
            said = "accepted"
        except InvalidArgument as err:
            said = str(err)
        took = time.perf_counter() - t0
        done.set()
        sampler.join()
        after = head.memory_info().rss
        found.append({"before_mb": before / MB, "peak_mb": max(peak[0], after) / MB, "after_mb": after / MB,
                      "growth_mb": (max(peak[0], after) - before) / MB, "upload_and_refusal_s": took, "said": said})
        log(f"  million: RSS {before / MB:.1f} -> peak {max(peak[0], after) / MB:.1f} -> {after / MB:.1f} MB "
            f"in {took:.2f} s: {said}")
    return found


def zipfile_parse_rss(archive: Path) -> dict[str, Any]:
    """The peer: peak RSS growth of a fresh process that opens the archive with zipfile.ZipFile."""
    code = (
        "import resource, sys, zipfile\n"
        "def rss():\n"
        "    return int(open('/proc/self/statm').read().split()[1]) * resource.getpagesize()\n"
        "before = rss()\n"
        "with zipfile.ZipFile(sys.argv[1]) as z:\n"
        "    n = len(z.infolist())\n"
        "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024\n"
        "print(n, before, peak)\n"
    )
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, str(archive)], capture_output=True, text=True, check=True)
    entries, before, peak = (int(x) for x in done.stdout.split())
    return {"entries_parsed": entries, "growth_mb": (peak - before) / MB, "seconds": time.perf_counter() - t0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--window-s", type=float, default=6.0, help="seconds of calls per latency window")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="shorter windows (smoke run)")
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    common.exit_on_sigterm()
    if args.quick:
        args.window_s = 2.0

    import grpc

    from protos import runyard_pb2 as pb
    from protos import runyard_pb2_grpc as pb_grpc
    from testbed import zips
    from testbed.harness import Cluster

    root = common.temp_root("runyard-bench-s15-")
    plan = PinPlan.make(not args.no_pin)
    result: dict[str, Any] = {"scenario": "S15", "what": "hostile snapshot uploads: head memory and other calls' latency",
                              "machine": machine_info(root)}
    log(f"S15: archives and cluster in {root}")
    million = zips.many_empty_entries(root / "million.zip", 1_000_000)
    overlap = zips.overlapping_bomb(root / "overlap.zip", entries=1000, kernel_bytes=MB)
    deflate = zips.deflate_bomb(root / "deflate.zip", unpacked_bytes=1024 * MB)
    sizes = {p.name: p.stat().st_size for p in (million, overlap, deflate)}
    log(f"  archives: {sizes}")
    cluster = Cluster.start(root / "cluster", agents=0, head_settings={"clusters": {CLUSTER: {}}})
    try:
        plan.apply("head", cluster.head.proc.pid)  # type: ignore[union-attr]
        plan.apply("client", os.getpid())
        md = metadata(cluster.head.token)
        channel = grpc.secure_channel(cluster.head.address, grpc.ssl_channel_credentials(cluster.head.ca_pem))
        stub = pb_grpc.RunyardStub(channel)
        snap = common.make_snapshot(root)
        common.upload_snapshot(stub, cluster.head.token, snap)
        run_ids = [stub.Submit(pb.SubmitRequest(experiment="bench-s15", snapshot_sha256=snap.sha256,
                                                idempotency_key=uuid.uuid4().hex,
                                                spec=pb.RunSpec(argv=["true"], compute=CLUSTER)),
                               metadata=md, timeout=CALL_TIMEOUT_S).run_id for _ in range(20)]
        calls_for(stub, pb, md, run_ids, 1.0)  # warm-up

        log("S15: million-entry uploads")
        rss = million_rss(cluster, million, args.repeats)
        log("S15: the peer, zipfile parsing the same archive in a fresh process")
        peer_rss = zipfile_parse_rss(million)
        log(f"  zipfile: {peer_rss['entries_parsed']:,} entries, RSS +{peer_rss['growth_mb']:.0f} MB")

        windows: dict[str, list[list[float]]] = {"idle": [], "overlap": [], "deflate": []}
        uploads: dict[str, list[dict[str, Any]]] = {"overlap": [], "deflate": []}
        cpus = plan.generator_cpus if plan.enabled else None
        for rep in range(args.repeats):  # the three kinds interleaved, so that drift hits each alike
            windows["idle"].append(calls_for(stub, pb, md, run_ids, args.window_s))
            for kind, archive in (("overlap", overlap), ("deflate", deflate)):
                seen = while_uploading(stub, pb, md, run_ids, args.window_s, cluster, archive, cpus)
                windows[kind].append(seen.pop("samples"))
                uploads[kind].append(seen)
            log(f"  rep {rep + 1}: p99 idle {common.percentile(windows['idle'][-1], 99) * 1000:.1f} ms, overlap "
                f"{common.percentile(windows['overlap'][-1], 99) * 1000:.1f} ms "
                f"({uploads['overlap'][-1]['uploads_refused']} refused), deflate "
                f"{common.percentile(windows['deflate'][-1], 99) * 1000:.1f} ms "
                f"({uploads['deflate'][-1]['uploads_refused']} refused)")
        channel.close()

        pooled = {kind: latency_ms([s for w in ws for s in w]) for kind, ws in windows.items()}
        per_window_p99 = {kind: summarize([common.percentile(w, 99) * 1000 for w in ws], 3)
                          for kind, ws in windows.items()}
        growth = max(r["growth_mb"] for r in rss)
        result["figures"] = {
            "million_entry_uploads": rss, "peer_zipfile_parse": peer_rss, "archive_bytes": sizes,
            "calls_ms": pooled, "per_window_p99_ms": per_window_p99, "uploads_during_windows": uploads,
            "head_rss_after_mb": rss[-1]["after_mb"],
        }
        result["ratios"] = {
            "rss_growth_to_goal_50mb": ratio(growth, GOAL_RSS_MB),
            "rss_growth_to_zipfile_parse": ratio(growth, peer_rss["growth_mb"]),
            "overlap_p99_to_goal_100ms": ratio(pooled["overlap"]["p99"], GOAL_P99_MS),
            "overlap_p99_to_idle_p99": ratio(pooled["overlap"]["p99"], pooled["idle"]["p99"]),
            "deflate_p99_to_goal_100ms": ratio(pooled["deflate"]["p99"], GOAL_P99_MS),
            "deflate_p99_to_idle_p99": ratio(pooled["deflate"]["p99"], pooled["idle"]["p99"]),
        }
        result["table"] = [
            row("head RSS growth, 1,000,000-entry zip uploaded and refused (max of repeats)", growth, "MB",
                GOAL_RSS_MB, "<=", peer="zipfile parsing it in one process",
                peer_ratio=result["ratios"]["rss_growth_to_zipfile_parse"]),
            row("ListRuns/GetRun p99 while overlapping-entry bombs are checked", pooled["overlap"]["p99"], "ms",
                GOAL_P99_MS, "<=", peer="the same calls on the idle head",
                peer_ratio=result["ratios"]["overlap_p99_to_idle_p99"]),
            row("ListRuns/GetRun p99 while a check unpacks a 1 GiB deflate bomb", pooled["deflate"]["p99"], "ms",
                GOAL_P99_MS, "<=", peer="the same calls on the idle head",
                peer_ratio=result["ratios"]["deflate_p99_to_idle_p99"]),
        ]
        result["method"] = {
            "repeats": args.repeats, "window_s": args.window_s,
            "calls": "ListRuns(limit 50) and GetRun alternately, one at a time, blocking gRPC stub, 20 queued runs",
            "uploader": "one process (multiprocessing spawn) uploading the archive back to back with runyard.client",
            "rss": "psutil RSS of the head process sampled every 5 ms during each upload; growth = peak - before",
            "peer_rss": "ru_maxrss of a fresh process opening the archive with zipfile.ZipFile, minus its RSS before",
            "pinning": plan.record(),
        }
        log(f"S15: RSS growth {growth:.1f} MB (zipfile parse {peer_rss['growth_mb']:.0f} MB); p99 idle "
            f"{pooled['idle']['p99']} ms, overlap {pooled['overlap']['p99']} ms, deflate {pooled['deflate']['p99']} ms")
    finally:
        cluster.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    emit(result)


if __name__ == "__main__":
    main()
