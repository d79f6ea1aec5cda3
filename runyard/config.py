"""Where the CLI finds the head: `RUNYARD_ADDRESS` / `RUNYARD_TOKEN`, else the config file that `runyard up`
writes (`$RUNYARD_CONFIG`, else `$XDG_CONFIG_HOME/runyard/config.toml`, else `~/.config/runyard/config.toml`)."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from runyard.errors import ConfigError


@dataclass(frozen=True, slots=True)
class ClientConfig:
    address: str
    token: str


def config_path() -> Path:
    if os.environ.get("RUNYARD_CONFIG"):
        return Path(os.environ["RUNYARD_CONFIG"])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "runyard" / "config.toml"


def load_client_config() -> ClientConfig:
    values: dict[str, str] = {}
    path = config_path()
    if path.exists():
        try:
            values = {k: str(v) for k, v in tomllib.loads(path.read_text()).items()}
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise ConfigError(f"cannot read {path}: {err}") from None
    address = os.environ.get("RUNYARD_ADDRESS") or values.get("address", "")
    token = os.environ.get("RUNYARD_TOKEN") or values.get("token", "")
    if not address:
        raise ConfigError(f"no head address: start a local cluster with `runyard up`, or set RUNYARD_ADDRESS (looked in {path})")
    if not token:
        raise ConfigError(f"no token: set RUNYARD_TOKEN, or run `runyard up` to write {path}")
    return ClientConfig(address, token)


def write_client_config(config: ClientConfig, path: Path | None = None) -> Path:
    path = path or config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f'address = "{config.address}"\ntoken = "{config.token}"\n')
    os.replace(path.with_suffix(".tmp"), path)
    return path
