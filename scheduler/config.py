"""The head's configuration: one frozen dataclass, loaded once in `app.py` and passed down."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from runyard.configfile import load_config


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
    max_retries: int = 3
    max_message_bytes: int = 16 * 1024 * 1024
    snapshot_max_bytes: int = 2 * 1024**3       # uploaded zip
    snapshot_max_entries: int = 100_000
    snapshot_max_unpacked_bytes: int = 8 * 1024**3
    sqlite_synchronous: str = "FULL"            # FULL: an acknowledged run survives power loss too
    log_level: str = "INFO"

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)


def load_head_config(path: Path | None, **overrides: object) -> HeadConfig:
    return load_config(HeadConfig, path, env_prefix="RUNYARD_HEAD_", **overrides)
