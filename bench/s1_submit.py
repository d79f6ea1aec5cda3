"""S1: durable submits/s, one serial client and 4 concurrent clients; submit latency p50/p99.

Goals (docs: /work/shared/design/performance.md): >= 800/s serial, >= 1,500/s with 4 clients, p99 <= 10 ms.

A real head (no agents: every run stays Queued) is started with testbed.harness on loopback, serving TLS as it
does by default; one snapshot is uploaded once; then `Runyard.Submit` is called with the blocking gRPC stub, exactly
as runyard/client.py does (a channel from the harness's `client_config()`: TLS pinned to the cluster CA, bearer
token metadata, a fresh idempotency key per call). Each client opens its channel and warms it up before the
measured calls, so a connection's TLS handshake is not in the figure (S14 reports it on its own).

Measured in the same run, with the same client loop:
- peer "bare grpc.aio unary": a grpc.aio server on uvloop (like the head) in its own process, serving
  `Runyard.HasSnapshot` from a servicer that answers at once: no interceptor, no I/O. It serves the head's
  transport (TLS with an ECDSA P-256 certificate of its own, or plaintext when the head is), so our submits/s
  divided by its calls/s is what the head's work per call costs beyond gRPC itself.
- limit "sqlite3 FULL commit": plain sqlite3 single-transaction commits/s (WAL, synchronous=FULL) on the disk the
  head writes to: what one durable submit cannot beat without batching commits.
- reference "head HasSnapshot": the same cheap call on the real head (auth interceptor, a thread hop and a
  stat()): the head's per-call overhead without the durable write.

Clients are processes (multiprocessing, spawn), not threads, so that the GIL does not serialise them. The head
(and the echo server) are pinned to core 0, the clients to core 1, when there are 2+ cores; the clients' own CPU is
reported and a saturated generator turns the figure into "at least".
Prints one JSON object on stdout; logs go to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import queue
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
from common import (  # noqa: E402
    CpuMeter, PinPlan, emit, latency_ms, log, machine_info, metadata, pin_self, ratio, row, saturated, summarize,
)
from runyard.config import ClientConfig  # noqa: E402

GOAL_SERIAL = 800.0
GOAL_CONCURRENT = 1500.0
GOAL_P99_MS = 10.0
CALL_TIMEOUT_S = 10.0


# --- the peer: a bare grpc.aio unary service --------------------------------------------------------------------

def serve_echo(ready_file: str) -> None:
    """Serve Runyard.HasSnapshot answering at once, on uvloop like the head, on a plaintext port and a TLS port
    (certificate from common.peer_tls, in the ready file's directory); write both ports to `ready_file` as JSON."""
    import json

    import grpc
    import uvloop

    from protos import runyard_pb2 as pb
    from protos import runyard_pb2_grpc as pb_grpc

    class Echo(pb_grpc.RunyardServicer):
        async def HasSnapshot(self, request: Any, context: Any) -> Any:
            return pb.HasSnapshotResponse(present=True)

    async def main() -> None:
        tls = common.peer_tls(Path(ready_file).parent)
        server = grpc.aio.server()
        pb_grpc.add_RunyardServicer_to_server(Echo(), server)
        ports = {
            "plaintext": server.add_insecure_port("127.0.0.1:0"),
            "tls": server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials(
                [(tls["key"].read_bytes(), tls["cert"].read_bytes())])),
        }
        await server.start()
        tmp = ready_file + ".tmp"
        Path(tmp).write_text(json.dumps({**ports, "ca_file": str(tls["ca"])}))
        os.replace(tmp, ready_file)
        await server.wait_for_termination()

    uvloop.run(main())


def start_echo(root: Path) -> tuple[subprocess.Popen[bytes], dict[str, ClientConfig]]:
    """The echo server in its own process; how to reach it, by transport ("tls", "plaintext")."""
    import json

    directory = root / "echo"
    directory.mkdir(parents=True, exist_ok=True)
    ready = directory / "echo.json"
    proc = subprocess.Popen([sys.executable, __file__, "--serve-echo", str(ready)], stdout=subprocess.DEVNULL,
                            stderr=open(root / "echo.log", "wb"))
    deadline = time.monotonic() + 30
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"echo server did not start: {(root / 'echo.log').read_text()[-2000:]}")
        time.sleep(0.02)
    found = json.loads(ready.read_text())
    ca_pem = Path(found["ca_file"]).read_bytes()
    return proc, {"plaintext": ClientConfig(f"127.0.0.1:{found['plaintext']}", "", insecure=True),
                  "tls": ClientConfig(f"127.0.0.1:{found['tls']}", "", ca_pem)}


# --- the client loop (one process per client) -------------------------------------------------------------------

def client(config: ClientConfig, method: str, sha: str, calls: int, warmup: int, cpus: list[int] | None,
           barrier: Any, out: Any) -> None:
    import grpc

    from protos import runyard_pb2 as pb
    from protos import runyard_pb2_grpc as pb_grpc

    if cpus:
        pin_self(cpus)
    channel = common.channel(config)
    stub = pb_grpc.RunyardStub(channel)
    md = metadata(config.token)
    if method == "submit":
        spec = pb.RunSpec(argv=["true"])

        def call() -> None:
            stub.Submit(pb.SubmitRequest(experiment="bench-s1", snapshot_sha256=sha, spec=spec,
                                         idempotency_key=uuid.uuid4().hex), metadata=md, timeout=CALL_TIMEOUT_S)
    else:
        ref = pb.SnapshotRef(sha256=sha)

        def call() -> None:
            stub.HasSnapshot(ref, metadata=md, timeout=CALL_TIMEOUT_S)

    errors = 0
    try:
        for _ in range(warmup):
            call()
        barrier.wait(timeout=60)
        latencies = []
        cpu0, t0 = time.process_time(), time.monotonic()
        for _ in range(calls):
            s = time.perf_counter()
            try:
                call()
            except grpc.RpcError:
                errors += 1
                continue
            latencies.append(time.perf_counter() - s)
        t1, cpu1 = time.monotonic(), time.process_time()
        out.put({"start": t0, "end": t1, "cpu_s": cpu1 - cpu0, "latencies": latencies, "errors": errors})
    except Exception as err:  # reported, never hidden
        out.put({"error": f"{type(err).__name__}: {err}"})
        barrier.abort()  # the parent stops waiting at once
    finally:
        channel.close()


def _drain(out: Any) -> list[dict[str, Any]]:
    found = []
    with contextlib.suppress(queue.Empty):
        while True:
            found.append(out.get(timeout=1))
    return found


def run_clients(config: ClientConfig, method: str, sha: str, *, clients: int, calls_each: int, warmup: int,
                cpus: list[int] | None, meter_pids: dict[str, int]) -> dict[str, Any]:
    """Run `clients` client processes at once, each with its own channel from `config`; calls/s over the span from
    the first start to the last end."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(clients + 1)
    out = ctx.Queue()
    procs = [ctx.Process(target=client, args=(config, method, sha, calls_each, warmup, cpus, barrier, out))
             for _ in range(clients)]
    for p in procs:
        p.start()
    try:
        barrier.wait(timeout=120)  # every client warmed up
    except threading.BrokenBarrierError:
        errors = [r["error"] for r in _drain(out) if "error" in r]
        for p in procs:
            p.kill()
        raise RuntimeError(f"client failed before measuring: {errors[0] if errors else 'no client reported'}") from None
    meter = CpuMeter(meter_pids).start()
    results = [out.get(timeout=300) for _ in procs]
    cpu = meter.stop()
    for p in procs:
        p.join(timeout=30)
    failed = [r["error"] for r in results if "error" in r]
    if failed:
        raise RuntimeError(f"client failed: {failed[0]}")
    span = max(r["end"] for r in results) - min(r["start"] for r in results)
    latencies = [x for r in results for x in r["latencies"]]
    client_cpu = sum(r["cpu_s"] for r in results)
    cores = len(cpus) if cpus else (os.cpu_count() or 1)
    return {
        "calls": len(latencies), "errors": sum(r["errors"] for r in results), "span_s": round(span, 3),
        "calls_per_s": len(latencies) / span if span > 0 else None,
        "latencies": latencies,
        "generator_cpu_s": round(client_cpu, 3), "generator_share_of_its_cores": round(client_cpu / (span * cores), 3),
        "generator_saturated": saturated(client_cpu, span, cores),
        "server_cpu": cpu,
    }


# --- a head, and what its repeats add up to ----------------------------------------------------------------------

def start_head(root: Path, plan: PinPlan, *, plaintext: bool = False) -> Any:
    """A fresh head with no agents (testbed.harness), pinned as `plan` says: TLS by default, or its client port in
    plaintext (`insecure_plaintext`). `default` is named in head.toml: with no node joined yet, a run for it is
    queued, not refused."""
    from testbed.harness import Cluster

    settings: dict[str, Any] = {"clusters": {"default": {}}}
    if plaintext:
        settings["insecure_plaintext"] = True
    cluster = Cluster.start(root, agents=0, head_settings=settings)
    plan.apply("head", cluster.head.proc.pid)  # type: ignore[union-attr]
    return cluster


def figures_of(reps: list[dict[str, Any]]) -> dict[str, Any]:
    """The repeats of one case (run_clients results) as medians, min and max; latency over all calls pooled."""
    all_lat = [x for r in reps for x in r["latencies"]]
    return {
        "calls_per_s": summarize([r["calls_per_s"] for r in reps], 1),
        "latency_ms": latency_ms(all_lat),
        "latency_p99_ms_per_repeat": summarize([common.percentile(r["latencies"], 99) * 1000 for r in reps], 3),
        "errors": sum(r["errors"] for r in reps),
        "generator_share_of_its_cores": summarize([r["generator_share_of_its_cores"] for r in reps]),
        "generator_saturated_any_repeat": any(r["generator_saturated"] for r in reps),
        "server_share_of_one_core": summarize(
            [next(v["share_of_one_core"] for k, v in r["server_cpu"].items() if k != "wall_s") for r in reps]),
        "per_repeat_calls_per_s": [round(r["calls_per_s"], 1) for r in reps],
    }


def describe(r: dict[str, Any]) -> str:
    return (f"{r['calls_per_s']:8.1f} calls/s  p50 {common.percentile(r['latencies'], 50) * 1000:.2f} ms  "
            f"p99 {common.percentile(r['latencies'], 99) * 1000:.2f} ms  "
            f"gen cpu {r['generator_share_of_its_cores']:.2f}")


# --- main ---------------------------------------------------------------------------------------------------------

def count_runs(stub: Any, token: str) -> int:
    """Queued runs of the default workspace (up to 10,000)."""
    from protos import runyard_pb2 as pb
    return len(stub.ListRuns(pb.ListRunsRequest(state=pb.RUN_STATE_QUEUED, limit=10_000), metadata=metadata(token), timeout=30).runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--serial-calls", type=int, default=300, help="calls per repeat, one client")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--calls-each", type=int, default=100, help="calls per client per repeat, concurrent case")
    parser.add_argument("--warmup", type=int, default=30, help="warm-up calls per client process")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="fewer calls (smoke run)")
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (head log, database)")
    parser.add_argument("--serve-echo", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_echo:
        serve_echo(args.serve_echo)
        return
    common.exit_on_sigterm()
    if args.quick:
        args.serial_calls, args.calls_each, args.warmup = 100, 40, 10

    from protos import runyard_pb2_grpc as pb_grpc

    root = common.temp_root("runyard-bench-s1-")
    plan = PinPlan.make(not args.no_pin)
    result: dict[str, Any] = {"scenario": "S1", "what": "durable submits/s (Runyard.Submit), serial and concurrent",
                              "machine": machine_info(root)}
    log(f"S1: work dir {root}")
    echo_proc = None
    cluster = None
    head_transport = ""
    try:
        plan.apply("bench_driver", os.getpid())
        gen_cpus = plan.generator_cpus if plan.enabled else None
        echo_proc, echo_configs = start_echo(root)
        plan.apply("echo_server", echo_proc.pid, plan.head_cpus)
        snap = common.make_snapshot(root)
        # The durable-write limit: plain sqlite3 commits (WAL, FULL, 2 rows) on the disk the head writes to.
        commit_limit = common.sqlite_commit_rate(root, synchronous="FULL")
        log(f"  sqlite3 FULL commits/s on this disk: {commit_limit['commits_per_s']['median']}")
        shapes = [("serial", 1, args.serial_calls), ("concurrent", args.clients, args.calls_each)]
        cases = ("submit", "head_has_snapshot", "bare_grpc_echo")
        raw: dict[str, list[dict[str, Any]]] = {f"{s}/{c}": [] for s, _, _ in shapes for c in cases}
        depth: list[dict[str, int]] = []
        for rep in range(args.repeats):
            # Interleaved, so that drift of a shared machine hits ours and the peer alike. Every submit phase gets
            # a fresh head: with no agents the queue only grows, and its depth may change the figure (see queue_depth).
            for shape, clients, calls in shapes:
                cluster = start_head(root / f"r{rep}-{shape}", plan)
                head_pid = cluster.head.proc.pid
                config = cluster.head.client_config()
                head_transport = common.transport(config)
                channel = common.channel(config)
                stub = pb_grpc.RunyardStub(channel)
                common.upload_snapshot(stub, config.token, snap)
                echo_config = echo_configs[head_transport]  # the peer speaks the head's transport
                runs = [
                    ("submit", config, "submit", {"head": head_pid}),
                    ("head_has_snapshot", config, "has_snapshot", {"head": head_pid}),
                    ("bare_grpc_echo", echo_config, "has_snapshot", {"echo_server": echo_proc.pid}),
                ]
                for case, target, method, pids in runs:
                    r = run_clients(target, method, snap.sha256, clients=clients, calls_each=calls,
                                    warmup=args.warmup, cpus=gen_cpus, meter_pids=pids)
                    raw[f"{shape}/{case}"].append(r)
                    if case == "submit":
                        depth.append({"repeat": rep, "clients": clients,
                                      "queued_at_end": count_runs(stub, config.token)})
                    log(f"  rep {rep + 1} {shape:10s} {case:18s} {describe(r)}")
                channel.close()
                cluster.stop()
                cluster = None

        figures = {key: figures_of(reps) for key, reps in raw.items()}
        result["figures"] = figures
        # Serial submits in blocks along the growing queue: shows whether a submit's cost grows with the queue.
        serial_reps = raw["serial/submit"]
        block = max(1, args.serial_calls // 5)
        blocks = []
        for start in range(0, args.serial_calls - block + 1, block):
            rates = [block / sum(r["latencies"][start:start + block]) for r in serial_reps
                     if len(r["latencies"]) >= start + block]
            blocks.append({"queued_before": args.warmup + start, "submits_per_s": summarize(rates, 1)})
        result["queue_depth"] = {
            "per_submit_phase": depth, "serial_rate_by_queue_depth": blocks,
            "note": "no agents: every submitted run stays Queued; each submit phase starts on a fresh head, so the "
                    "queue grows from 0 to warm-up + calls during it",
        }

        def med(key: str) -> float:
            return figures[key]["calls_per_s"]["median"]

        serial, conc = med("serial/submit"), med("concurrent/submit")
        p99_serial = figures["serial/submit"]["latency_ms"]["p99"]
        p99_conc = figures["concurrent/submit"]["latency_ms"]["p99"]
        sat_serial = figures["serial/submit"]["generator_saturated_any_repeat"]
        sat_conc = figures["concurrent/submit"]["generator_saturated_any_repeat"]
        result["ratios"] = {
            "serial_to_goal_800": ratio(serial, GOAL_SERIAL),
            "concurrent_to_goal_1500": ratio(conc, GOAL_CONCURRENT),
            "serial_p99_to_goal_10ms": ratio(p99_serial, GOAL_P99_MS),
            "concurrent_p99_to_goal_10ms": ratio(p99_conc, GOAL_P99_MS),
            "serial_submit_to_bare_grpc": ratio(serial, med("serial/bare_grpc_echo")),
            "concurrent_submit_to_bare_grpc": ratio(conc, med("concurrent/bare_grpc_echo")),
            "serial_submit_to_head_has_snapshot": ratio(serial, med("serial/head_has_snapshot")),
            "serial_head_has_snapshot_to_bare_grpc": ratio(med("serial/head_has_snapshot"), med("serial/bare_grpc_echo")),
            "serial_submit_to_sqlite_full_commit": ratio(serial, commit_limit["commits_per_s"]["median"]),
        }
        result["limit_sqlite_commit"] = commit_limit
        result["table"] = [
            row("submits/s, 1 serial client", serial, "/s", GOAL_SERIAL, ">=", peer="bare grpc.aio unary",
                peer_ratio=result["ratios"]["serial_submit_to_bare_grpc"], at_least=sat_serial),
            row(f"submits/s, {args.clients} client processes", conc, "/s", GOAL_CONCURRENT, ">=",
                peer="bare grpc.aio unary", peer_ratio=result["ratios"]["concurrent_submit_to_bare_grpc"],
                at_least=sat_conc),
            row("submit p99, serial", p99_serial, "ms", GOAL_P99_MS, "<=", digits=2),
            row(f"submit p99, {args.clients} clients", p99_conc, "ms", GOAL_P99_MS, "<=", digits=2),
        ]
        result["method"] = {
            "repeats": args.repeats, "warmup_calls_per_client": args.warmup, "serial_calls": args.serial_calls,
            "clients": args.clients, "calls_each": args.calls_each,
            "clients_are": "processes (multiprocessing spawn), one blocking grpc channel each, opened and warmed "
                           "up before the measured calls",
            "transport": head_transport,
            "head": "testbed.harness Cluster, agents=0, sqlite synchronous=FULL (default); a fresh head per submit "
                    f"phase; its client port over {head_transport} (the harness's client_config())",
            "peer": "grpc.aio server on uvloop in its own process, HasSnapshot answered at once, no interceptor, "
                    f"over {head_transport} like the head",
            "rate": "calls / (last client end - first client start); latency over all calls of all repeats",
            "pinning": plan.record(),
        }
        log(f"S1: serial {serial}/s, {args.clients} clients {conc}/s, p99 {p99_serial} ms / {p99_conc} ms")
    finally:
        if echo_proc is not None:
            echo_proc.terminate()
            echo_proc.wait(timeout=10)
        if cluster is not None:
            cluster.stop()
        if not args.keep:
            import shutil
            shutil.rmtree(root, ignore_errors=True)
    emit(result)


if __name__ == "__main__":
    main()
