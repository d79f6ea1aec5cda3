"""`runyard up`: a local cluster in the foreground, a head and N agents as child processes.

The head listens on a free loopback port and writes a ready file; `up` then writes the client config so that
`runyard submit` just works, starts the agents, and waits for them to connect. Ctrl-C (or SIGTERM) stops the
agents first, so their runs end and are reported, then the head. The daemons log to files under the data dir.
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

from runyard.config import ClientConfig, write_client_config
from runyard.errors import RunyardError

START_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class LocalCluster:
    data_dir: Path
    agents: int
    gpus_per_agent: int = 0
    port: int = 0


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


def _agent_config(cluster: LocalCluster, index: int, address: str) -> Path:
    agent_dir = cluster.data_dir / "agents" / f"local-{index}"
    agent_dir.mkdir(parents=True, exist_ok=True)
    path = agent_dir / "agent.toml"
    path.write_text(
        f'head_address = "{address}"\n'
        f'join_token_file = "{cluster.data_dir / "head" / "join.token"}"\n'
        f'name = "local-{index}"\n'
        f'data_dir = "{agent_dir}"\n'
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
            [sys.executable, "-m", "scheduler", "--data-dir", str(head_dir), "--listen", f"127.0.0.1:{cluster.port}",
             "--ready-file", str(ready_file)],
            stdout=head_log, stderr=head_log, env=_daemon_env(), start_new_session=True,
        )
        procs.append(head)
        _wait_for("head start", ready_file.exists, procs, cluster.data_dir)
        address = json.loads(ready_file.read_text())["address"]
        token = (head_dir / "admin.token").read_text().strip()
        config = ClientConfig(address, token)
        config_file = write_client_config(config)
        say(f"head listening on {address} (data in {cluster.data_dir}); client config written to {config_file}")
        for index in range(1, cluster.agents + 1):
            log_file = open(cluster.data_dir / f"agent-{index}.log", "ab")
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "agent", "--config", str(_agent_config(cluster, index, address))],
                stdout=log_file, stderr=log_file, env=_daemon_env(), start_new_session=True,
            ))
        _wait_for(f"{cluster.agents} agents connecting", lambda: nodes_ready(config) >= cluster.agents, procs, cluster.data_dir)
        say(f"cluster ready: {cluster.agents} agents. Try: runyard submit examples/quickstart -- python train.py")
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
    """Agents first (they stop and report their runs), then the head."""
    for group in (procs[1:], procs[:1]):
        for proc in group:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in group:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
