"""`runyard up`: a local cluster in the foreground, a head whose autoscaler runs agents on this machine.

`up` writes the head's config (cluster `default`: at least `--agents`, at most `--max-agents` agents of the
`local` provider, each stopped after `--idle-time` seconds without work), starts the head, writes the client
config so that `runyard submit` just works, and waits for the first agents to connect. The queue then grows and
shrinks the cluster. Ctrl-C (or SIGTERM) stops the head, which stops its agents first so that their runs end and
are reported. The daemons log to files under the data dir.
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
from runyard.errors import RunyardError

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


def _wait_for(what: str, ready: Callable[[], bool], procs: list[subprocess.Popen[bytes]], logs: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready():
        for proc in procs:
            if proc.poll() is not None:
                raise RunyardError(f"{what}: a process exited with code {proc.returncode}; see the logs in {logs}")
        if time.monotonic() > deadline:
            raise RunyardError(f"{what} did not happen within {START_TIMEOUT_S:.0f}s; see the logs in {logs}")
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
    """Run until interrupted; returns the exit code for `runyard up`."""
    head_dir = cluster.data_dir / "head"
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
    try:
        head_log = open(cluster.data_dir / "head.log", "ab")
        head = subprocess.Popen(
            [sys.executable, "-m", "scheduler", "--config", str(_head_config(cluster, head_dir)), "--data-dir",
             str(head_dir), "--listen", f"127.0.0.1:{cluster.port}", "--ready-file", str(ready_file)],
            stdout=head_log, stderr=head_log, env=_daemon_env(), start_new_session=True,
        )
        procs.append(head)
        _wait_for("head start", ready_file.exists, procs, cluster.data_dir)
        address = json.loads(ready_file.read_text())["address"]
        token = (head_dir / "admin.token").read_text().strip()
        config = ClientConfig(address, token)
        config_file = write_client_config(config)
        say(f"head listening on {address} (data in {cluster.data_dir}); client config written to {config_file}")
        _wait_for(f"{cluster.agents} agents connecting", lambda: nodes_ready(config) >= cluster.agents, procs, cluster.data_dir)
        grows = f", growing to {cluster.max_agents} with the queue" if cluster.max_agents > cluster.agents else ""
        say(f"cluster ready: {cluster.agents} agents{grows}. Try: runyard submit examples/quickstart -- python train.py")
        say("press Ctrl-C to stop")
        while all(p.poll() is None for p in procs):
            time.sleep(0.2)
        dead = next(p for p in procs if p.poll() is not None)
        say(f"a cluster process exited with code {dead.returncode}; stopping (logs in {cluster.data_dir})")
        return 1
    except KeyboardInterrupt:
        say("stopping the cluster")
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _stop_all(procs)
        signal.signal(signal.SIGTERM, previous)


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
