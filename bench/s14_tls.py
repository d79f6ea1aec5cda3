"""S14: what TLS costs: S1 (durable submits/s) and S3 (idle run, submit -> process started) against a TLS head
and a plaintext head, in the same run.

Limit (docs: /work/shared/design/performance.md): every figure over TLS within 25 % of the same figure over
plaintext: a rate at least 0.75 x plaintext's, a latency at most 1.25 x plaintext's.

Both heads are the real head (testbed.harness) on this machine, with the same parameters; they differ only in
`insecure_plaintext` (the client port without TLS, loopback only). Agents talk mTLS to the node port in both: the
plaintext switch does not touch it. What is measured is S1's and S3's own code (`s1_submit.py`, `s3_latency.py`):
- S1: a fresh head with no agents per submit phase; one serial client process, then N client processes at once,
  each with its own channel opened and warmed up before the measured calls (so no handshake is in the figure);
- S3: one head and one agent per transport, both started at the beginning and kept; one run at a time;
- also, for reference: the bare grpc.aio unary echo of S1 over TLS and plaintext (what TLS costs gRPC itself), and
  the first call on a new connection (channel created, handshake, one HasSnapshot), which a CLI command pays once.
The two transports alternate inside every repeat, and which goes first alternates from one repeat to the next, so
that drift of a shared machine hits both alike. The head is pinned to core 0, the clients to core 1.
Prints one JSON object on stdout; logs go to stderr.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import common  # noqa: E402
import s1_submit as s1  # noqa: E402
import s3_latency as s3  # noqa: E402
from common import PinPlan, emit, latency_ms, log, machine_info, metadata, ratio, row, summarize  # noqa: E402

WITHIN = 0.25                      # TLS within 25 % of plaintext
MODES = ("tls", "plaintext")


def order(rep: int) -> tuple[str, ...]:
    """TLS first in even repeats, plaintext first in odd ones."""
    return MODES if rep % 2 == 0 else MODES[::-1]


def first_call_s(config: Any, sha: str) -> float:
    """Seconds from creating a channel to the answer of its first call (HasSnapshot): connection and handshake."""
    from protos import runyard_pb2 as pb
    from protos import runyard_pb2_grpc as pb_grpc

    t0 = time.perf_counter()
    channel = common.channel(config)
    try:
        pb_grpc.RunyardStub(channel).HasSnapshot(pb.SnapshotRef(sha256=sha), metadata=metadata(config.token),
                                                 timeout=10)
        return time.perf_counter() - t0
    finally:
        channel.close()


def per_repeat_ratios(tls: list[float], plain: list[float]) -> dict[str, Any]:
    """TLS / plaintext within each repeat (the two measured back to back), summarized."""
    return summarize([t / p for t, p in zip(tls, plain) if p], 3)


def limit_row(figure: str, tls: float | None, plain: float | None, unit: str, rate: bool, *,
              at_least: bool = False, digits: int = 1) -> dict[str, Any]:
    """A table row: the TLS figure against plaintext's widened by WITHIN, with TLS / plaintext as the peer ratio."""
    goal = None if plain is None else round(plain * ((1 - WITHIN) if rate else (1 + WITHIN)), 3)
    shown = "–" if plain is None else (f"{plain:,.0f}/s" if rate else f"{plain:.{digits}f} {unit}")
    return row(f"{figure} over TLS (plaintext: {shown})", tls, unit, goal, ">=" if rate else "<=",
               peer="the same over plaintext, same run", peer_ratio=ratio(tls, plain), at_least=at_least,
               digits=digits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--serial-calls", type=int, default=300, help="S1: calls per repeat, one client")
    parser.add_argument("--clients", type=int, default=4, help="S1: client processes, concurrent case")
    parser.add_argument("--calls-each", type=int, default=100, help="S1: calls per client per repeat, concurrent")
    parser.add_argument("--warmup", type=int, default=30, help="S1: warm-up calls per client process")
    parser.add_argument("--runs", type=int, default=60, help="S3: runs per repeat and transport")
    parser.add_argument("--run-warmup", type=int, default=3, help="S3: warm-up runs per transport")
    parser.add_argument("--first-calls", type=int, default=20, help="new connections per repeat and transport")
    parser.add_argument("--repeats", type=int, default=4, help="even, so that each transport goes first as often")
    parser.add_argument("--quick", action="store_true", help="fewer calls and runs (smoke run)")
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (head logs, databases)")
    args = parser.parse_args()
    common.exit_on_sigterm()
    if args.quick:
        args.serial_calls, args.calls_each, args.warmup = 100, 40, 10
        args.runs, args.first_calls, args.repeats = 15, 5, 2

    from protos import runyard_pb2_grpc as pb_grpc

    root = common.temp_root("runyard-bench-s14-")
    plan = PinPlan.make(not args.no_pin)
    result: dict[str, Any] = {"scenario": "S14", "what": "TLS cost: S1 and S3 over TLS and over plaintext, same run",
                              "machine": machine_info(root)}
    log(f"S14: work dir {root}")
    echo_proc = None
    targets: dict[str, Any] = {}
    cluster = None
    try:
        plan.apply("bench_driver", os.getpid())
        gen_cpus = plan.generator_cpus if plan.enabled else None
        snap = common.make_snapshot(root)
        echo_proc, echo_configs = s1.start_echo(root)
        plan.apply("echo_server", echo_proc.pid, plan.head_cpus)
        for mode in MODES:
            targets[mode] = s3.open_target(root / f"s3-{mode}", snap, plaintext=mode == "plaintext")
            plan.apply("head", targets[mode].head_pid)
            if targets[mode].transport != mode:
                raise RuntimeError(f"asked a {mode} head, the harness gave {targets[mode].transport}")
            for _ in range(args.run_warmup):
                targets[mode].run(snap.sha256)

        shapes = [("serial", 1, args.serial_calls), ("concurrent", args.clients, args.calls_each)]
        submits: dict[str, list[dict[str, Any]]] = {f"{m}/{s}": [] for m in MODES for s, _, _ in shapes}
        echoes: dict[str, list[dict[str, Any]]] = {f"{m}/{s}": [] for m in MODES for s, _, _ in shapes}
        runs: dict[str, list[list[dict[str, float]]]] = {m: [] for m in MODES}
        first_calls: dict[str, list[float]] = {m: [] for m in MODES}
        for rep in range(args.repeats):
            for shape, clients, calls in shapes:
                for mode in order(rep):
                    # S1's submit phase: a fresh head, as S1 does, since the queue only grows.
                    cluster = s1.start_head(root / f"s1-r{rep}-{shape}-{mode}", plan, plaintext=mode == "plaintext")
                    config = cluster.head.client_config()
                    with common.channel(config) as channel:
                        common.upload_snapshot(pb_grpc.RunyardStub(channel), config.token, snap)
                    r = s1.run_clients(config, "submit", snap.sha256, clients=clients, calls_each=calls,
                                       warmup=args.warmup, cpus=gen_cpus, meter_pids={"head": cluster.head.proc.pid})
                    submits[f"{mode}/{shape}"].append(r)
                    log(f"  rep {rep + 1} S1 {shape:10s} {mode:9s} submit {s1.describe(r)}")
                    cluster.stop()
                    cluster = None
                    e = s1.run_clients(echo_configs[mode], "has_snapshot", snap.sha256, clients=clients,
                                       calls_each=calls, warmup=args.warmup, cpus=gen_cpus,
                                       meter_pids={"echo_server": echo_proc.pid})
                    echoes[f"{mode}/{shape}"].append(e)
            for mode in order(rep):
                mine = [targets[mode].run(snap.sha256) for _ in range(args.runs)]
                runs[mode].append(mine)
                first_calls[mode] += [first_call_s(targets[mode].cluster.head.client_config(), snap.sha256)
                                      for _ in range(args.first_calls)]
                log(f"  rep {rep + 1} S3 {mode:9s} started p50 "
                    f"{common.percentile([s['started'] for s in mine], 50) * 1000:6.1f} ms, p99 "
                    f"{common.percentile([s['started'] for s in mine], 99) * 1000:6.1f} ms; new connection p50 "
                    f"{common.percentile(first_calls[mode][-args.first_calls:], 50) * 1000:5.2f} ms")

        s1_figures = {key: s1.figures_of(reps) for key, reps in submits.items()}
        echo_figures = {key: s1.figures_of(reps) for key, reps in echoes.items()}
        s3_figures = {mode: s3.pooled_ms(samples) for mode, samples in runs.items()}
        result["figures"] = {
            "s1_submit": s1_figures, "s1_bare_grpc_echo": echo_figures,
            "s3_ms": {mode: {k: v for k, v in f.items() if k in ("submit_rpc", "started", "completed")}
                      for mode, f in s3_figures.items()},
            "s3_per_repeat_ms": {mode: {f"{key}_p{q}": summarize(
                [common.percentile([s[key] for s in rep], q) * 1000 for rep in samples], 3)
                for key in ("started", "completed") for q in (50, 99)} for mode, samples in runs.items()},
            "new_connection_first_call_ms": {mode: latency_ms(v) for mode, v in first_calls.items()},
        }

        def rate(mode: str, shape: str, what: dict[str, Any] = s1_figures) -> float:
            return what[f"{mode}/{shape}"]["calls_per_s"]["median"]

        def saturated(shape: str) -> bool:
            return any(s1_figures[f"{m}/{shape}"]["generator_saturated_any_repeat"] for m in MODES)

        st = {m: s3_figures[m]["started"] for m in MODES}
        done = {m: s3_figures[m]["completed"] for m in MODES}
        first = result["figures"]["new_connection_first_call_ms"]
        result["ratios_tls_to_plaintext"] = {
            "s1_serial_submits_per_s": ratio(rate("tls", "serial"), rate("plaintext", "serial")),
            "s1_concurrent_submits_per_s": ratio(rate("tls", "concurrent"), rate("plaintext", "concurrent")),
            "s1_serial_submit_p99": ratio(s1_figures["tls/serial"]["latency_ms"]["p99"],
                                          s1_figures["plaintext/serial"]["latency_ms"]["p99"]),
            "s1_concurrent_submit_p99": ratio(s1_figures["tls/concurrent"]["latency_ms"]["p99"],
                                              s1_figures["plaintext/concurrent"]["latency_ms"]["p99"]),
            "s3_started_p50": ratio(st["tls"]["p50"], st["plaintext"]["p50"]),
            "s3_started_p99": ratio(st["tls"]["p99"], st["plaintext"]["p99"]),
            "s3_completed_p50": ratio(done["tls"]["p50"], done["plaintext"]["p50"]),
            "s3_completed_p99": ratio(done["tls"]["p99"], done["plaintext"]["p99"]),
            "bare_grpc_echo_serial_calls_per_s": ratio(rate("tls", "serial", echo_figures),
                                                       rate("plaintext", "serial", echo_figures)),
            "bare_grpc_echo_concurrent_calls_per_s": ratio(rate("tls", "concurrent", echo_figures),
                                                           rate("plaintext", "concurrent", echo_figures)),
            "new_connection_first_call_p50": ratio(first["tls"]["p50"], first["plaintext"]["p50"]),
        }
        result["ratios_per_repeat"] = {
            "s1_serial_submits_per_s": per_repeat_ratios(
                [r["calls_per_s"] for r in submits["tls/serial"]],
                [r["calls_per_s"] for r in submits["plaintext/serial"]]),
            "s1_concurrent_submits_per_s": per_repeat_ratios(
                [r["calls_per_s"] for r in submits["tls/concurrent"]],
                [r["calls_per_s"] for r in submits["plaintext/concurrent"]]),
            "s3_started_p50": per_repeat_ratios(
                [common.percentile([s["started"] for s in rep], 50) for rep in runs["tls"]],
                [common.percentile([s["started"] for s in rep], 50) for rep in runs["plaintext"]]),
        }
        table = [
            limit_row("submits/s, 1 serial client", rate("tls", "serial"), rate("plaintext", "serial"), "/s", True,
                      at_least=saturated("serial")),
            limit_row(f"submits/s, {args.clients} client processes", rate("tls", "concurrent"),
                      rate("plaintext", "concurrent"), "/s", True, at_least=saturated("concurrent")),
            limit_row("idle run, submit -> process started, p50", st["tls"]["p50"], st["plaintext"]["p50"], "ms",
                      False),
            limit_row("idle run, submit -> process started, p99", st["tls"]["p99"], st["plaintext"]["p99"], "ms",
                      False),
        ]
        result["table"] = table
        result["limit"] = {"within": WITHIN, "rates": f"TLS >= {1 - WITHIN:g} x plaintext",
                           "latencies": f"TLS <= {1 + WITHIN:g} x plaintext",
                           "figures": [r["figure"] for r in table],
                           "meets": all(r["meets"] for r in table)}
        result["method"] = {
            "repeats": args.repeats, "order": "both transports in every repeat; TLS first in even repeats, "
                                              "plaintext first in odd ones",
            "s1": {"serial_calls": args.serial_calls, "clients": args.clients, "calls_each": args.calls_each,
                   "warmup_calls_per_client": args.warmup,
                   "code": "s1_submit.start_head / run_clients / figures_of: a fresh head (no agents) per submit "
                           "phase; client processes, each with a channel opened and warmed up before measuring"},
            "s3": {"runs_per_repeat": args.runs, "warmup_runs": args.run_warmup,
                   "code": "s3_latency.open_target / one_run: one head and one agent per transport for the whole "
                           "run; one run at a time; percentiles over all repeats pooled"},
            "first_call": f"{args.first_calls} new channels per repeat and transport to the S3 head, one "
                          "HasSnapshot each: TCP connect, TLS handshake when TLS, HTTP/2 setup and the call",
            "transports": {"tls": "the head's default: TLS on the client port (ECDSA P-256, the cluster CA pinned)",
                           "plaintext": "insecure_plaintext = true: the client port without TLS (loopback only)",
                           "agents": "mTLS to the node port in both"},
            "pinning": plan.record(),
        }
        log("S14: TLS / plaintext: " + ", ".join(f"{k} {v}" for k, v in result["ratios_tls_to_plaintext"].items()))
    finally:
        if echo_proc is not None:
            echo_proc.terminate()
            echo_proc.wait(timeout=10)
        if cluster is not None:
            cluster.stop()
        for target in targets.values():
            target.close()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    emit(result)


if __name__ == "__main__":
    main()
