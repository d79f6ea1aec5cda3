"""Loading a daemon's frozen config dataclass from TOML plus `RUNYARD_*` environment variables.

Each daemon has one frozen dataclass of plain fields (str, int, float, bool, dict, list of str). A field `data_dir` of the
head is set by `data_dir = "..."` in its TOML file or by `RUNYARD_HEAD_DATA_DIR`; the environment wins.
Unknown keys are an error, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from runyard.errors import UsageError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


def load_config(cls: type[T], path: Path | None, *, env_prefix: str, **overrides: Any) -> T:
    """Build `cls` from the TOML file at `path` (optional), the environment, then `overrides`."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            values.update(tomllib.loads(Path(path).read_text()))
        except OSError as err:
            raise UsageError(f"cannot read config {path}: {err.strerror}") from None
        except tomllib.TOMLDecodeError as err:
            raise UsageError(f"config {path} is not valid TOML: {err}") from None
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise UsageError(f"config {path}: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    for name in fields:
        raw = os.environ.get(f"{env_prefix}{name.upper()}")
        if raw is not None:
            values[name] = _from_env(f"{env_prefix}{name.upper()}", raw, hints[name])
    values.update({k: v for k, v in overrides.items() if v is not None})
    for name, value in list(values.items()):
        values[name] = _coerce(name, value, hints[name], path)
    return cls(**values)


def _from_env(var: str, raw: str, hint: Any) -> Any:
    if hint is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off", ""):
            return False
        raise UsageError(f"{var}={raw!r} is not a boolean; use true or false")
    if hint is int or hint is float:
        try:
            return hint(raw)
        except ValueError:
            raise UsageError(f"{var}={raw!r} is not a number") from None
    if typing.get_origin(hint) is dict:
        try:
            return dict(item.split("=", 1) for item in raw.split(",") if item)
        except ValueError:
            raise UsageError(f"{var} must look like key=value,key=value") from None
    if typing.get_origin(hint) is list:
        return [item for item in raw.split(",") if item]
    return raw


def _coerce(name: str, value: Any, hint: Any, path: Path | None) -> Any:
    where = f"config {path}" if path else "config"
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    origin = typing.get_origin(hint) or hint
    if origin in (str, int, float, bool, dict, list) and not isinstance(value, origin):
        raise UsageError(f"{where}: {name} must be {origin.__name__}, not {type(value).__name__}")
    if origin is list and not all(isinstance(item, str) for item in value):
        raise UsageError(f"{where}: {name} must be a list of strings")
    if isinstance(value, int) and not isinstance(value, bool) and value < 0:
        raise UsageError(f"{where}: {name} must not be negative")
    return value
