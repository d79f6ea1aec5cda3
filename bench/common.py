"""Shared parts of the benchmarks in `bench/`: machine facts, summaries, pinning, CPU accounting, a snapshot to
submit, and `emit()`, which prints the one JSON object a benchmark script answers with.

Every script prints exactly one JSON object on stdout and logs to stderr. A result carries a `table`: rows of
{figure, value, unit, goal, goal_op, ratio_to_goal, meets, peer, peer_ratio, at_least} that `run_all.py` turns
into the README table. `ratio_to_goal` is always figure / goal: for a throughput (`goal_op` ">=") 1.0 or more
meets the goal, for a latency ("<=") 1.0 or less does.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

# A generator using this share of the CPUs it may run on is taken as saturated: its figure is a lower bound.
SATURATED_SHARE = 0.85


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so that `finally` stops the cluster and removes the temp dir."""
    import signal

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, stop)


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


# --- machine ---------------------------------------------------------------------------------------------------

def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version
        return version(module)
    except Exception:
        return None


def _filesystem(path: Path) -> str:
    """The filesystem type holding `path` (fsync costs depend on it)."""
    best, kind = "", "unknown"
    try:
        target = str(path.resolve())
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and (target == parts[1] or target.startswith(parts[1].rstrip("/") + "/")) \
                    and len(parts[1]) > len(best):
                best, kind = parts[1], parts[2]
    except OSError:
        pass
    return kind


def machine_info(data_dir: Path | None = None) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "grpcio": _version("grpcio"),
        "protobuf": _version("protobuf"),
        "uvloop": _version("uvloop"),
        "kernel": platform.release(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    if data_dir is not None:
        info["data_dir_fs"] = _filesystem(data_dir)
    return info


# --- statistics ------------------------------------------------------------------------------------------------

def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest ranks."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    if len(ordered) == 1:
        return float(ordered[0])
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (rank - low))


def summarize(samples: Iterable[float], digits: int = 3) -> dict[str, Any]:
    """{median, min, max, n} of the samples."""
    values = [float(s) for s in samples]
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits), "n": len(values)}


def latency_ms(samples_s: Sequence[float]) -> dict[str, Any]:
    """p50, p90, p99, min, max and n of latencies given in seconds, in milliseconds."""
    ms = [s * 1000 for s in samples_s]
    if not ms:
        return {"n": 0}
    return {"p50": round(percentile(ms, 50), 3), "p90": round(percentile(ms, 90), 3),
            "p99": round(percentile(ms, 99), 3), "min": round(min(ms), 3), "max": round(max(ms), 3), "n": len(ms)}


def ratio(a: float | None, b: float | None, digits: int = 3) -> float | None:
    if a is None or b is None or b == 0 or math.isnan(a) or math.isnan(b):
        return None
    return round(a / b, digits)


# --- pinning ---------------------------------------------------------------------------------------------------

def _tids(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return [pid]


def pin(pid: int, cpus: Iterable[int]) -> dict[str, Any]:
    """Pin every thread of `pid` to `cpus` (threads it creates later inherit it); returns what was done.

    `os.sched_setaffinity(pid)` alone sets only the main thread, so each thread of /proc/<pid>/task is set.
    """
    wanted = sorted(set(cpus))
    done = {"pid": pid, "cpus": wanted, "threads": 0, "ok": False}
    if not hasattr(os, "sched_setaffinity"):
        done["why_not"] = "os.sched_setaffinity is not available here"
        return done
    errors = []
    for tid in _tids(pid):
        try:
            os.sched_setaffinity(tid, wanted)
            done["threads"] += 1
        except OSError as err:
            errors.append(f"{tid}: {err.strerror}")
    done["ok"] = done["threads"] > 0
    if errors:
        done["errors"] = errors[:5]
    return done


def pin_self(cpus: Iterable[int]) -> dict[str, Any]:
    return pin(os.getpid(), cpus)


def all_cpus() -> list[int]:
    return list(range(os.cpu_count() or 1))


@dataclass
class PinPlan:
    """Head on core 0, load generator on core 1 when the machine has 2 or more cores; else nothing is pinned."""
    enabled: bool = True
    head_cpus: list[int] = field(default_factory=lambda: [0])
    generator_cpus: list[int] = field(default_factory=lambda: [1])
    applied: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def make(cls, want: bool = True) -> PinPlan:
        n = os.cpu_count() or 1
        if not want or n < 2 or not hasattr(os, "sched_setaffinity"):
            return cls(enabled=False)
        return cls(head_cpus=[0], generator_cpus=[1])

    def apply(self, role: str, pid: int, cpus: list[int] | None = None) -> None:
        if not self.enabled:
            return
        if cpus is None:
            cpus = self.head_cpus if role == "head" else self.generator_cpus
        self.applied.append({"role": role, **pin(pid, cpus)})

    def record(self) -> dict[str, Any]:
        if not self.enabled:
            why = "disabled by --no-pin" if (os.cpu_count() or 1) >= 2 else "fewer than 2 cores"
            return {"pinned": False, "why": why}
        return {"pinned": True, "how": "os.sched_setaffinity on every thread (taskset equivalent)",
                "applied": self.applied}


# --- CPU accounting --------------------------------------------------------------------------------------------

class CpuMeter:
    """CPU seconds used by a set of processes between start() and stop(), from psutil cpu_times().

    `children` adds the CPU of children the process has waited for (runs spawned by an agent).
    """

    def __init__(self, pids: dict[str, int], children: bool = False) -> None:
        self._procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self._children = children
        self._before: dict[str, float] = {}
        self._t0 = 0.0
        self.result: dict[str, Any] = {}

    def _cpu(self, proc: psutil.Process) -> float:
        try:
            t = proc.cpu_times()
        except psutil.Error:
            return math.nan
        total = t.user + t.system
        if self._children:
            total += t.children_user + t.children_system
        return total

    def start(self) -> CpuMeter:
        self._before = {name: self._cpu(p) for name, p in self._procs.items()}
        self._t0 = time.perf_counter()
        return self

    def stop(self) -> dict[str, Any]:
        wall = time.perf_counter() - self._t0
        out: dict[str, Any] = {"wall_s": round(wall, 3)}
        for name, proc in self._procs.items():
            used = self._cpu(proc) - self._before[name]
            out[name] = {"cpu_s": round(used, 3), "share_of_one_core": round(used / wall, 3) if wall > 0 else None}
        self.result = out
        return out


def own_cpu() -> float:
    """CPU seconds of this process (all threads)."""
    return time.process_time()


def saturated(cpu_s: float, wall_s: float, cores: int) -> bool:
    return wall_s > 0 and cpu_s / (wall_s * max(cores, 1)) >= SATURATED_SHARE


# --- the durable-write limit ---------------------------------------------------------------------------------

def sqlite_commit_rate(directory: Path, *, synchronous: str = "FULL", commits: int = 300, repeats: int = 3,
                       rows_per_commit: int = 2) -> dict[str, Any]:
    """Single-transaction commits/s of plain sqlite3 (WAL, `synchronous`) in `directory`: the floor any durable
    write pays on this disk. Each commit inserts `rows_per_commit` small rows (a run and its event)."""
    import sqlite3

    path = directory / f"commit-limit-{os.getpid()}.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT UNIQUE, v TEXT)")
        payload = "x" * 300

        def once(n: int) -> float:
            t0 = time.perf_counter()
            for _ in range(n):
                conn.execute("BEGIN IMMEDIATE")
                for _ in range(rows_per_commit):
                    conn.execute("INSERT INTO t (k, v) VALUES (hex(randomblob(16)), ?)", (payload,))
                conn.execute("COMMIT")
            return n / (time.perf_counter() - t0)

        once(max(commits // 10, 10))  # warm-up
        rates = [once(commits) for _ in range(repeats)]
    finally:
        conn.close()
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
    return {"commits_per_s": summarize(rates, 1), "synchronous": synchronous, "rows_per_commit": rows_per_commit,
            "filesystem": _filesystem(directory)}


# --- a cluster and a snapshot ----------------------------------------------------------------------------------

def metadata(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def channel(config: Any, options: Sequence[tuple[str, Any]] = ()) -> Any:
    """A blocking gRPC channel to a head as runyard/client.py opens one from a `ClientConfig`: TLS that trusts the
    cluster CA, or plaintext when the config says the head allows it (`insecure_plaintext`, loopback only)."""
    import grpc

    if config.insecure:
        return grpc.insecure_channel(config.address, options=list(options))
    return grpc.secure_channel(config.address, grpc.ssl_channel_credentials(root_certificates=config.ca_pem),
                               options=list(options))


def aio_channel(config: Any, options: Sequence[tuple[str, Any]] = ()) -> Any:
    """`channel()` for grpc.aio."""
    import grpc

    if config.insecure:
        return grpc.aio.insecure_channel(config.address, options=list(options))
    return grpc.aio.secure_channel(config.address, grpc.ssl_channel_credentials(root_certificates=config.ca_pem),
                                   options=list(options))


def transport(config: Any) -> str:
    """"tls" or "plaintext": how a client with this config talks to the head."""
    return "plaintext" if config.insecure else "tls"


def peer_tls(directory: Path) -> dict[str, Path]:
    """TLS material made with runyard.pki (ECDSA P-256, as the head's), written to `directory`, for a bare peer
    server to serve TLS or mTLS the way the head does: a CA ("ca"), a server key and chain for 127.0.0.1 ("key",
    "cert"), and a client key and certificate signed by the same CA ("client_key", "client_cert")."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from runyard import pki
    from runyard.private import write_private

    ca = pki.create_ca("bench-peer")
    server = pki.issue_server(ca, ["127.0.0.1", "localhost"])
    client_key = pki.new_key()
    client_cert = pki.sign_node(ca, x509.load_pem_x509_csr(pki.node_csr("bench-client", client_key)), "bench-client")
    paths = {"ca": directory / "peer-ca.crt", "key": directory / "peer.key", "cert": directory / "peer.crt",
             "client_key": directory / "client.key", "client_cert": directory / "client.crt"}
    write_private(paths["ca"], ca.cert_pem)
    write_private(paths["key"], server.key_pem)
    write_private(paths["cert"], server.cert_pem + ca.cert_pem)
    write_private(paths["client_key"], client_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    write_private(paths["client_cert"], client_cert)
    return paths


def make_snapshot(workdir: Path) -> Any:
    """A one-file snapshot zip built with runyard.snapshot.create_snapshot."""
    from runyard.snapshot import create_snapshot

    src = workdir / "snapshot-src"
    src.mkdir(parents=True, exist_ok=True)
    (src / "README.txt").write_text("benchmark snapshot\n")
    out = workdir / "snapshot-out"
    out.mkdir(exist_ok=True)
    return create_snapshot(src, out)


def upload_snapshot(stub: Any, token: str, snap: Any) -> bool:
    """Upload the snapshot zip (UploadSnapshot, client streaming); returns True when the head already had it."""
    from protos import runyard_pb2 as pb

    data = snap.path.read_bytes()
    chunks = [pb.SnapshotChunk(sha256=snap.sha256, size=len(data), data=data[i:i + 1024 * 1024])
              for i in range(0, max(len(data), 1), 1024 * 1024)]
    return stub.UploadSnapshot(iter(chunks), metadata=metadata(token), timeout=30).existed


def temp_root(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


# --- result ----------------------------------------------------------------------------------------------------

def row(figure: str, value: float | None, unit: str, goal: float | None, goal_op: str, *,
        peer: str | None = None, peer_ratio: float | None = None, at_least: bool = False,
        digits: int = 1) -> dict[str, Any]:
    """One line of the README table. ratio_to_goal = value / goal."""
    r = ratio(value, goal)
    meets = None
    if r is not None:
        meets = r >= 1.0 if goal_op == ">=" else r <= 1.0
    return {"figure": figure, "value": None if value is None else round(value, digits), "unit": unit,
            "goal": goal, "goal_op": goal_op, "ratio_to_goal": r, "meets": meets, "peer": peer,
            "peer_ratio": peer_ratio, "at_least": at_least}


def clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null, paths strings, tuples lists."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def emit(result: dict[str, Any]) -> None:
    """Print the result as one JSON object on one line of stdout."""
    if isinstance(result.get("machine"), dict):
        result["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    sys.stdout.write(json.dumps(clean(result), allow_nan=False) + "\n")
    sys.stdout.flush()
