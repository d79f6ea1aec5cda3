"""`runyard up`: a local cluster in the foreground, a head whose autoscaler runs agents on this machine.

`up` writes the head's config (cluster `default`: at least `--agents`, at most `--max-agents` agents of the
`local` provider, each stopped after `--idle-time` seconds without work), starts the head, writes the client
config (with the head's MLflow URL) so that `runyard submit` and `runyard mlflow-env` just work, prints what a
workstation's MLflow client needs and where Prometheus scrapes the head, and waits for the first agents to connect. The queue then grows and
shrinks the cluster. Ctrl-C (or SIGTERM) stops the head, which stops its agents first so that their runs end and
are reported. The daemons log to files under the data dir.

`up` holds its data directory for its whole life (`datadir.DataDirLock`), and its head holds the `head`
subdirectory: a second `up` on a directory in use, or on one whose head is still running, is refused before it
writes a file (head.toml, the client config) and names the process that holds it.
Must not: import the daemons' packages; they are started as processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from runyard.config import ClientConfig, write_client_config
from runyard.datadir import DataDirLock
from runyard.errors import RunyardError
from runyard.units import plural

START_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class LocalCluster:
    data_dir: Path
    agents: int                         # started at once and kept (min_nodes)
    gpus_per_agent: int = 0
    port: int = 0
    max_agents: int = 0                 # the autoscaler may grow to this many (at least `agents`)
    idle_time_s: float = 120.0          # an agent above `agents` idle this long is stopped


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "runyard" / "local"


@dataclass(frozen=True, slots=True)
class _Head:
    proc: subprocess.Popen[bytes]
    log: Path                           # shared with earlier heads of this data dir
    log_from: int                       # where this head's lines begin in it

    def exited(self) -> str:
        """The head exited: its code and the last line it wrote (usually why), for a one-line message."""
        try:
            with open(self.log, "rb") as f:
                f.seek(max(self.log_from, f.seek(0, os.SEEK_END) - 4096))
                lines = f.read().decode("utf-8", "replace").strip().splitlines()
        except OSError:
            lines = []
        last = f": {lines[-1].strip()}" if lines else ""
        return f"the head exited with code {self.proc.returncode}{last} (log: {self.log})"


def _wait_for(what: str, ready: Callable[[], bool], head: _Head) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready():
        if head.proc.poll() is not None:
            raise RunyardError(f"{what}: {head.exited()}")
        if time.monotonic() > deadline:
            raise RunyardError(f"{what} did not happen within {START_TIMEOUT_S:.0f}s; see the logs in {head.log.parent}")
        time.sleep(0.05)


def _head_config(cluster: LocalCluster, head_dir: Path) -> Path:
    """head.toml: the `default` cluster autoscaled by the local provider, agents of this machine's shape."""
    path = head_dir / "head.toml"
    path.write_text(
        "[clusters.default]\n"
        'provider = "local"\n'
        f"min_nodes = {cluster.agents}\n"
        f"max_nodes = {max(cluster.agents, cluster.max_agents)}\n"
        f"idle_time_before_scale_down = {cluster.idle_time_s}\n"
        f"node_cpus = {float(os.cpu_count() or 1)}\n"
        f"node_memory_bytes = {psutil.virtual_memory().total}\n"
        f"node_gpus = {cluster.gpus_per_agent}\n"
        "\n[local_agent_settings]\n"
        f"fake_gpus = {cluster.gpus_per_agent}\n"
        "heartbeat_interval_s = 2.0\n"
    )
    return path


def _daemon_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("RUNYARD_")}


def run_local_cluster(cluster: LocalCluster, *, say: Callable[[str], None], nodes_ready: Callable[[ClientConfig], int]) -> int:
    """Run until interrupted; returns the exit code for `runyard up`. `DataDirInUse` before anything is written if
    another `up` holds the data directory, or a head started by an earlier one is still running on it."""
    head_dir = cluster.data_dir / "head"
    with DataDirLock.take(cluster.data_dir, also_free=[head_dir]):
        return _run(cluster, head_dir, say=say, nodes_ready=nodes_ready)


def _run(cluster: LocalCluster, head_dir: Path, *, say: Callable[[str], None],
         nodes_ready: Callable[[ClientConfig], int]) -> int:
    head_dir.mkdir(parents=True, exist_ok=True)
    ready_file = head_dir / "ready.json"
    ready_file.unlink(missing_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    # Ctrl-C stops the cluster even when `up` was started in the background of a script, which ignores SIGINT.
    previous_int = signal.signal(signal.SIGINT, stop)
    try:
        with open(cluster.data_dir / "head.log", "ab") as log:
            log_from = log.tell()
            proc = subprocess.Popen(
                [sys.executable, "-m", "scheduler", "--config", str(_head_config(cluster, head_dir)), "--data-dir",
                 str(head_dir), "--listen", f"127.0.0.1:{cluster.port}", "--ready-file", str(ready_file)],
                stdout=log, stderr=log, env=_daemon_env(), start_new_session=True,
            )
        procs.append(proc)
        head = _Head(proc, cluster.data_dir / "head.log", log_from)
        _wait_for("head start", ready_file.exists, head)
        ready = json.loads(ready_file.read_text())
        address = ready["address"]
        token = (head_dir / "admin.token").read_text().strip()
        config = ClientConfig(address, token, Path(ready["ca_file"]).read_bytes(), mlflow_url=ready["mlflow_url"])
        config_file = write_client_config(config)
        say(f"head listening on {address} (TLS, cluster CA {ready['ca_fingerprint']}; data in {cluster.data_dir}); "
            f"client config written to {config_file}")
        say(f"MLflow API on {ready['mlflow_url']}; a workstation's MLflow client needs these two, and a token in "
            "MLFLOW_TRACKING_TOKEN (or: eval \"$(runyard mlflow-env)\"):")
        say(f"  MLFLOW_TRACKING_URI={ready['mlflow_url']}")
        say(f"  MLFLOW_TRACKING_SERVER_CERT_PATH={ready['ca_file']}")
        if ready.get("metrics_url"):
            say(f"Prometheus metrics on {ready['metrics_url']} (health: /healthz, /readyz)")
        _wait_for(f"{plural(cluster.agents, 'agent')} connecting", lambda: nodes_ready(config) >= cluster.agents, head)
        grows = f", growing to {cluster.max_agents} with the queue" if cluster.max_agents > cluster.agents else ""
        say(f"cluster ready: {plural(cluster.agents, 'agent')}{grows}. Try: runyard submit examples/quickstart -- python train.py")
        say("press Ctrl-C to stop")
        while proc.poll() is None:
            time.sleep(0.2)
        say(f"stopping: {head.exited()}")
        return 1
    except KeyboardInterrupt:
        say("stopping the cluster")
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _stop_all(procs)
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)


def _stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM; the head stops its agents first. SIGKILL what is still there after 40 s."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
