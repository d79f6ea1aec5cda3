"""The head's configuration: one frozen dataclass, loaded once in `app.py` and passed down."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from runyard.configfile import load_config
from runyard.errors import UsageError


@dataclass(frozen=True, slots=True)
class HeadConfig:
    data_dir: str = "/var/lib/runyard"
    listen: str = "127.0.0.1:7433"              # host:port; port 0 picks a free one (see ready_file)
    artifact_url: str = ""                      # fsspec URL; default: <data_dir>/artifacts
    ready_file: str = ""                        # written with the bound address once serving
    join_token_file: str = ""                   # default: <data_dir>/join.token, generated on first start
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
