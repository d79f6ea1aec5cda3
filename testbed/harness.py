"""Real processes for end-to-end tests and benchmarks: a head, agents on loopback, and the `runyard` CLI as a
subprocess.

No fixed ports (the head binds 127.0.0.1:0 and writes its address to a ready file), no sleeps for readiness
(every wait polls a condition with a deadline).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runyard import render
from runyard.client import Client
from runyard.config import ClientConfig
from runyard.errors import RunyardError
from runyard.private import write_private

DEADLINE_S = 30.0


def wait_until(what: str, condition: Callable[[], Any], timeout_s: float = DEADLINE_S, every_s: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(every_s)


def process_gone(pid: int) -> bool:
    """True when `pid` has exited: no such process, or a zombie not yet reaped (init may reap orphans late). A
    process that is reaped between opening its stat and reading it reads as ESRCH: gone too."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return data[data.rindex(b")") + 2 :].split()[0] in (b"Z", b"X")


def terminate(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 15 s."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("RUNYARD_")}


def _toml(settings: dict[str, Any], table: str = "") -> str:
    """Settings as TOML: scalars as `key = value` (JSON's strings, numbers and booleans are TOML's), dicts as tables."""
    scalars = "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items() if not isinstance(v, dict))
    tables = "".join(
        f"\n[{table}{k}]\n" + _toml(v, f"{table}{k}.") for k, v in settings.items() if isinstance(v, dict)
    )
    return scalars + tables


def _rendezvous_ports() -> str:
    """100 rendezvous ports below the kernel's ephemeral range, for one cluster's agents: clusters of parallel tests
    share the machine, and the head of one cannot know the ports another's gangs listen on. A cluster's agents share
    theirs, since a gang's block of ports must fit in every member's range."""
    base = random.randrange(20_000, 32_000, 100)
    return f"{base}-{base + 99}"


@dataclass
class Head:
    data_dir: Path
    log_file: Path
    settings: dict[str, Any] = field(default_factory=dict)    # HeadConfig keys, written to its head.toml
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    address: str = ""
    node_address: str = ""              # the node port (mTLS); kept across restarts like `port`
    ca_file: Path = Path()
    mlflow_url: str = ""                # the MLflow read API; its port, like `port`, is kept across restarts
    metrics_url: str = ""               # Prometheus' /metrics (plain HTTP); kept across restarts too
    rendezvous_ports: str = field(default_factory=_rendezvous_ports)   # shared by its agents

    def start(self) -> None:
        ready = self.data_dir / "ready.json"
        ready.unlink(missing_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "head.toml"
        node_listen = {"node_listen": self.node_address} if self.node_address else {}
        if self.mlflow_url:
            node_listen["mlflow_listen"] = self.mlflow_url.split("://", 1)[1]
        if self.metrics_url:
            node_listen["metrics_listen"] = self.metrics_url.split("://", 1)[1].removesuffix("/metrics")
        config.write_text(_toml({**node_listen, **self.settings}))
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "scheduler", "--config", str(config), "--data-dir", str(self.data_dir),
                 "--listen", f"127.0.0.1:{self.port}", "--ready-file", str(ready)],
                stdout=log, stderr=log, env=_env(),
            )
        wait_until("the head to be ready", lambda: ready.exists() or self.proc.poll() is not None)  # type: ignore[union-attr]
        assert self.proc.poll() is None, f"head exited: {self.log_file.read_text()[-2000:]}"
        found = json.loads(ready.read_text())
        self.address, self.node_address, self.ca_file = found["address"], found["node_address"], Path(found["ca_file"])
        self.mlflow_url = found["mlflow_url"]
        self.metrics_url = found.get("metrics_url", "")
        self.port = int(self.address.rsplit(":", 1)[1])

    @property
    def token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()

    @property
    def ca_pem(self) -> bytes:
        return self.ca_file.read_bytes()

    @property
    def plaintext(self) -> bool:
        """The head serves its client port without TLS (`insecure_plaintext`, loopback only)."""
        return bool(self.settings.get("insecure_plaintext"))

    def client_config(self, token: str | None = None) -> ClientConfig:
        return ClientConfig(self.address, self.token if token is None else token, self.ca_pem, insecure=self.plaintext)

    def join_token(self, uses: int = 1, ttl_s: float = 3600.0) -> str:
        """A new join token, created by the admin as `runyard node token create` does."""
        with Client(self.client_config(), timeout_s=10) as client:
            return client.create_join_token(uses, ttl_s).secret

    def agent_settings(self) -> dict[str, Any]:
        """What an agent needs to enroll with this head: its addresses, its CA, and a join token of one use."""
        return {"head_address": self.address, "head_node_address": self.node_address,
                "head_ca_file": str(self.ca_file), "join_token": self.join_token(),
                "rendezvous_ports": self.rendezvous_ports,
                **({"insecure_plaintext": True} if self.plaintext else {})}

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        terminate(self.proc)


@dataclass
class Agent:
    name: str
    data_dir: Path
    log_file: Path
    settings: dict[str, Any] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    def start(self, head: Head) -> None:
        settings = {**head.agent_settings(), **self.settings}
        if "join_token" in settings:        # kept as a deployment keeps it: a file of its own, 0600
            token_file = self.data_dir / "join.token"
            write_private(token_file, str(settings.pop("join_token")) + "\n")
            settings["join_token_file"] = str(token_file)
        self.proc = start_agent_process(self.name, self.data_dir, self.log_file, settings)

    def stop(self) -> None:
        terminate(self.proc)


def start_agent_process(name: str, data_dir: Path, log_file: Path, settings: dict[str, Any],
                        stderr: int | None = None) -> subprocess.Popen[bytes]:
    """`runyard-agent` with test timers; its output goes to `log_file` (stderr to a pipe if `stderr` says so).

    Without `rendezvous_ports` in `settings` the agent gets rendezvous ports of its own (`_rendezvous_ports`)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "name": name, "data_dir": str(data_dir), "heartbeat_interval_s": 1.0, "reconnect_max_s": 0.5,
        "stop_grace_s": 3.0, "rendezvous_ports": _rendezvous_ports(), **settings,
    }
    path = data_dir / "agent.toml"
    write_private(path, _toml(config))
    with open(log_file, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "agent", "--config", str(path)],
                                stdout=log, stderr=log if stderr is None else stderr, env=_env())


@dataclass
class Cluster:
    root: Path
    head: Head
    agents: list[Agent] = field(default_factory=list)
    _client: Client | None = field(default=None, repr=False)

    @classmethod
    def start(cls, root: Path, agents: int = 2, head_settings: dict[str, Any] | None = None,
              **agent_settings: Any) -> Cluster:
        cluster = cls(root, Head(root / "head", root / "head.log", dict(head_settings or {})))
        cluster.head.start()
        for index in range(1, agents + 1):
            cluster.add_agent(f"node-{index}", **agent_settings)
        cluster.wait_nodes_ready(agents)
        return cluster

    def add_agent(self, name: str, **settings: Any) -> Agent:
        agent = Agent(name, self.root / name, self.root / f"{name}.log", settings)
        agent.start(self.head)
        self.agents.append(agent)
        return agent

    def stop(self) -> None:
        for agent in self.agents:
            agent.stop()
        self.head.stop()
        if self._client is not None:
            self._client.close()
            self._client = None

    def client(self) -> Client:
        """An in-process client of the head, for the polls: a CLI process per poll costs a core of its own."""
        if self._client is None:
            self._client = Client(self.head.client_config(), timeout_s=10)
        return self._client

    def env(self, **extra: str) -> dict[str, str]:
        return {**_env(), "RUNYARD_ADDRESS": self.head.address, "RUNYARD_TOKEN": self.head.token,
                "RUNYARD_CA_FILE": str(self.head.ca_file), "RUNYARD_CONFIG": str(self.root / "no-config.toml"),
                "XDG_CACHE_HOME": str(self.root / "cache"),     # the CLI's snapshot cache, the cluster's own
                **({"RUNYARD_INSECURE": "1"} if self.head.plaintext else {}), **extra}

    def cli(self, *args: str, cwd: Path | None = None, timeout_s: float = 60, env: dict[str, str] | None = None,
            check: bool = False) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([sys.executable, "-m", "runyard", *args], cwd=cwd, env=env or self.env(),
                                capture_output=True, text=True, timeout=timeout_s)
        if check and result.returncode != 0:
            raise AssertionError(f"runyard {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    def popen_cli(self, *args: str, cwd: Path | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "runyard", *args], cwd=cwd, env=self.env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "-o", "json", check=True).stdout)

    def run(self, run_id: str) -> dict[str, Any]:
        """The run as `runyard show RUN -o json` prints it."""
        return render.as_dict(self.client().get_run(run_id))

    def nodes(self) -> list[dict[str, Any]]:
        """The nodes as `runyard nodes -o json` prints them."""
        return [render.as_dict(n) for n in self.client().nodes().nodes]

    def wait_state(self, run_id: str, *states: str, timeout_s: float = DEADLINE_S) -> dict[str, Any]:
        found: dict[str, Any] = {}

        def reached() -> bool:
            try:
                found.update(self.run(run_id))
            except RunyardError:       # the head restarting: ask again
                return False
            return found["state"] in states
        wait_until(f"run {run_id} to be {'/'.join(states)}", reached, timeout_s, every_s=0.05)
        return found

    def wait_nodes_ready(self, count: int) -> None:
        wait_until(f"{count} nodes ready",
                   lambda: sum(n["state"] == "Ready" for n in self.nodes()) >= count, every_s=0.05)

    def logs_text(self, run_id: str) -> str:
        return self.cli("logs", run_id, check=True).stdout
