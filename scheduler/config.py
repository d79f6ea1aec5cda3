"""The head's configuration: one frozen dataclass, loaded once in `app.py` and passed down."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from runyard.configfile import load_config
from runyard.errors import UsageError


@dataclass(frozen=True, slots=True)
class HeadConfig:
    data_dir: str = "/var/lib/runyard"
    listen: str = "127.0.0.1:7433"              # host:port for clients and joins (TLS); port 0 picks a free one
    node_listen: str = ""                       # host:port for enrolled agents (mTLS); default: listen's port + 1
    mlflow_listen: str = ""                     # host:port of the MLflow read API (HTTPS); default: listen's port + 2
    metrics_listen: str = ""                    # host:port of /metrics, /healthz, /readyz (plain HTTP): default
                                                # 127.0.0.1 and listen's port + 3; "off": none
    tls_dir: str = ""                           # default: <data_dir>/tls, the cluster CA and the head's certificate
    tls_names: str = ""                         # more names or addresses for the head's certificate, comma-separated
    insecure_plaintext: bool = False            # development only: the client port without TLS, loopback only
    require_node_approval: bool = False         # an enrolled node waits for `runyard node approve`
    node_max_cpus: float = 1024.0               # the most a node may advertise; more is refused
    node_max_memory_bytes: int = 64 * 1024**4
    node_max_gpus: int = 64
    artifact_url: str = ""                      # fsspec URL; default: <data_dir>/artifacts
    ready_file: str = ""                        # written with the bound address once serving
    admin_token_file: str = ""                  # default: <data_dir>/admin.token, generated on first start
    disconnected_after_s: float = 20.0          # silent this long: Disconnected, nothing new placed there
    down_after_s: float = 300.0                 # silent this long: Down, its runs requeued or failed
    max_retries: int = 3                        # a run's lost attempts retried at most this often (job: retry.max_retries)
    quarantine_after: int = 3                   # runs in a row failed on the node's side: the node is quarantined
    fair_share_half_life_s: float = 7 * 86400.0 # past GPU use counts half after this long
    gpu_quotas: dict = field(default_factory=dict)   # [gpu_quotas.WORKSPACE] CLUSTER = GPUs
    clusters: dict = field(default_factory=dict)     # [clusters.NAME] min_nodes, max_nodes, ... (autoscaler)
    local_agent_settings: dict = field(default_factory=dict)   # agent.toml keys for agents the local provider starts
    autoscaler_tick_s: float = 2.0
    max_message_bytes: int = 16 * 1024 * 1024
    snapshot_max_bytes: int = 2 * 1024**3       # uploaded zip
    snapshot_max_entries: int = 100_000
    snapshot_max_unpacked_bytes: int = 8 * 1024**3
    snapshot_check_timeout_s: float = 60.0     # an upload's check (a process of its own) is killed after this
    snapshot_check_workers: int = 2             # checks at once; further uploads wait for one to end
    sqlite_synchronous: str = "FULL"            # FULL: an acknowledged run survives power loss too
    log_level: str = "INFO"

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def tls_path(self) -> Path:
        return Path(self.tls_dir) if self.tls_dir else self.data_path / "tls"

    def node_address(self) -> str:
        """Where the node port listens: `node_listen`, else the client port's host and port + 1 (any free port
        when the client port is 0)."""
        if self.node_listen:
            return self.node_listen
        host, _, port = self.listen.rpartition(":")
        try:
            number = int(port)
        except ValueError:
            raise UsageError(f"config: listen must be host:port, not {self.listen!r}") from None
        return f"{host}:{number + 1 if number else 0}"

    def mlflow_address(self) -> str:
        """Where the MLflow read API listens: `mlflow_listen`, else the client port's host and port + 2 (any free
        port when the client port is 0)."""
        if self.mlflow_listen:
            return self.mlflow_listen
        host, _, port = self.listen.rpartition(":")
        try:
            number = int(port)
        except ValueError:
            raise UsageError(f"config: listen must be host:port, not {self.listen!r}") from None
        return f"{host}:{number + 2 if number else 0}"

    def metrics_address(self) -> str:
        """Where `/metrics`, `/healthz` and `/readyz` listen: `metrics_listen` ("off" for nowhere), else loopback
        on the client port + 3 (any free port when the client port is 0). Plain HTTP: a non-loopback address
        belongs behind the network's own protection."""
        if self.metrics_listen:
            return self.metrics_listen
        _, _, port = self.listen.rpartition(":")
        try:
            number = int(port)
        except ValueError:
            raise UsageError(f"config: listen must be host:port, not {self.listen!r}") from None
        return f"127.0.0.1:{number + 3 if number else 0}"

    def quotas(self) -> dict[tuple[str, str], int]:
        """(workspace, cluster) -> GPUs that workspace may hold in that cluster."""
        table: dict[tuple[str, str], int] = {}
        for workspace, clusters in self.gpu_quotas.items():
            if not isinstance(clusters, dict):
                raise UsageError(f"gpu_quotas.{workspace} must be a table of cluster = GPUs, e.g. a100 = 8")
            for cluster, gpus in clusters.items():
                if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 0:
                    raise UsageError(f"gpu_quotas.{workspace}.{cluster} must be a whole number of GPUs, not {gpus!r}")
                table[(workspace, cluster)] = gpus
        return table


def load_head_config(path: Path | None, **overrides: object) -> HeadConfig:
    return load_config(HeadConfig, path, env_prefix="RUNYARD_HEAD_", **overrides)
