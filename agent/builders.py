"""The tools this node builds environments with, found once at start and reported to the head.

- uv, always: `uv_bin` in the agent config, else the binary installed with the agent (`uv.find_uv_bin()`).
- a conda builder for conda packages other than python and pip: `conda_builder` (a path), else micromamba or
  conda on the agent's PATH.
- a container runtime for images: `container_runtime` (podman, docker, apptainer, or a path to one of them;
  "none" for no images), else the first of podman, apptainer, docker on the agent's PATH. A runtime is offered
  only once it answers: `--version` for podman and apptainer, the daemon's version for docker (a docker client
  without a daemon runs nothing).
Only what was found goes into `Capacity.builders`, so the head never places a run on a node that cannot build it.
Blocking: call `find_builders` through `asyncio.to_thread`. Must not: install anything.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.containers import Runtime

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 5.0
CONDA_NAMES = ("micromamba", "conda")
RUNTIME_ORDER = (Runtime.PODMAN, Runtime.APPTAINER, Runtime.DOCKER)
NO_RUNTIME = "none"


@dataclass(frozen=True, slots=True)
class Builders:
    uv: str = ""                        # uv's executable; '' when it is missing (every build then fails the node)
    conda: str = ""                     # micromamba's or conda's executable, or ''
    runtime: Runtime | None = None
    runtime_bin: str = ""

    @property
    def conda_kind(self) -> str:
        """"micromamba" or "conda", as its executable is named; '' without one."""
        if not self.conda:
            return ""
        return "micromamba" if "micromamba" in Path(self.conda).name else "conda"

    def names(self) -> list[str]:
        """What the node reports in `Capacity.builders`."""
        found = ["uv"] if self.uv else []
        if self.conda:
            found.append(self.conda_kind)
        if self.runtime is not None:
            found.append(str(self.runtime))
        return found


def _own_uv() -> str:
    from uv import find_uv_bin

    try:
        return find_uv_bin()
    except FileNotFoundError:
        return ""


def answers(argv: list[str]) -> bool:
    """True when `argv` exits 0 within `PROBE_TIMEOUT_S`."""
    try:
        return subprocess.run(argv, capture_output=True, timeout=PROBE_TIMEOUT_S, check=False).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def runtime_answers(runtime: Runtime, binary: str) -> bool:
    if runtime is Runtime.DOCKER:
        return answers([binary, "version", "--format", "{{.Server.Version}}"])
    return answers([binary, "--version"])


def runtime_of(name: str) -> Runtime | None:
    """The runtime a configured name or path stands for, by its file name."""
    base = Path(name).name
    return next((r for r in Runtime if base == r.value or base.startswith(r.value + "-")), None)


def find_builders(*, uv_bin: str = "", conda_builder: str = "", container_runtime: str = "",
                  which: Callable[[str], str | None] = shutil.which,
                  probe: Callable[[Runtime, str], bool] = runtime_answers) -> Builders:
    """Find the builders as the module docstring says; configured ones that are missing are said once."""
    uv = uv_bin or _own_uv()
    if uv and not _executable(uv):
        log.warning("uv not found; every environment build will fail on this node", extra={"uv_bin": uv})
        uv = ""
    conda = _configured(conda_builder, "conda_builder", which) if conda_builder else \
        next((found for name in CONDA_NAMES if (found := which(name))), "")
    runtime, runtime_bin = _find_runtime(container_runtime, which, probe)
    return Builders(uv=uv, conda=conda or "", runtime=runtime, runtime_bin=runtime_bin)


def _configured(name: str, key: str, which: Callable[[str], str | None]) -> str:
    found = name if os.path.isabs(name) else which(name) or ""
    if not found or not _executable(found):
        log.warning("configured builder not found; not offered", extra={key: name})
        return ""
    return found


def _find_runtime(configured: str, which: Callable[[str], str | None],
                  probe: Callable[[Runtime, str], bool]) -> tuple[Runtime | None, str]:
    if configured == NO_RUNTIME:
        return None, ""
    if configured:
        runtime = runtime_of(configured)
        binary = _configured(configured, "container_runtime", which) if runtime else ""
        if runtime is None:
            log.warning("container_runtime is none of podman, docker, apptainer; no images on this node",
                        extra={"container_runtime": configured})
        elif binary and probe(runtime, binary):
            return runtime, binary
        elif binary:
            log.warning("container runtime does not answer; no images on this node",
                        extra={"container_runtime": binary})
        return None, ""
    for runtime in RUNTIME_ORDER:
        found = which(runtime.value)
        if found and probe(runtime, found):
            return runtime, found
        if found:
            log.info("container runtime found but does not answer; not offered", extra={"runtime": found})
    return None, ""


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)
