"""What `runyard submit` sends, and its flags; the request of a plain submit (no job file, no option the job
file's model must check) built without that model.

`jobfile.build_request` merges a job file with the flags through the job file's pydantic model; most submits
from a shell loop name only a directory and a command, and for those `plain_request` gives the same request
without importing pydantic (a test holds the two equal). This module must not import pydantic or yaml.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from runyard import priorities
from runyard.envspec import EnvSpec
from runyard.errors import UsageError

DEFAULT_MEMORY_BYTES = 1024**3


@dataclass(frozen=True, slots=True)
class RunRequest:
    """What `runyard submit` asks the head to run, after the job file and the flags are merged."""

    code_dir: Path
    argv: tuple[str, ...]
    experiment: str
    display_name: str
    tags: dict[str, str]
    environment: dict[str, str]
    compute: str
    cpus: float
    memory_bytes: int
    gpus: int
    instance_count: int
    timeout_s: float
    priority: int
    gpu_model: str = ""
    gpu_memory_bytes: int = 0
    node_labels: dict[str, str] = field(default_factory=dict)
    max_retries: int | None = None
    env: EnvSpec = EnvSpec()            # the software it runs in, normalized
    env_ref: str = ""                   # or a registered environment, NAME:VERSION or NAME@latest
    distribution: str = ""              # "pytorch", or '' for none
    procs_per_node: int = 1             # processes per node of a distributed run
    workers: int = 0                    # tensorflow: worker processes
    parameter_servers: int = 0          # tensorflow: parameter server processes


@dataclass(frozen=True, slots=True)
class CliOptions:
    """Everything the `runyard submit` flags can say; None = not given."""

    directory: Path | None = None
    job_file: Path | None = None
    experiment: str | None = None
    display_name: str | None = None
    compute: str | None = None
    cpus: float | None = None
    memory: str | None = None
    gpus: int | None = None
    nodes: int | None = None
    procs_per_node: int | None = None
    distribution: str | None = None
    env: tuple[str, ...] = ()           # KEY=VALUE variables, and at most one environment NAME[:VERSION|@latest]
    conda_file: Path | None = None
    sets: tuple[str, ...] = ()
    priority: str | None = None
    timeout_s: float | None = None
    command: tuple[str, ...] = ()


def env_items(items: Sequence[str]) -> dict[str, str]:
    """The variables among `--env` items (KEY=VALUE); the others name an environment (`jobfile._env_ref`)."""
    env: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            continue
        if not key:
            raise UsageError(f"--env {item!r}: expected KEY=VALUE")
        env[key] = value
    return env


def plain_request(options: CliOptions) -> RunRequest | None:
    """The request of a submit that gives a command, maybe a directory and `--env KEY=VALUE` variables, and
    nothing the job file's model checks; None for any other (`jobfile.build_request` makes those)."""
    if (options.job_file is not None or options.sets or options.conda_file is not None or not options.command
            or any(value is not None for value in (
                options.experiment, options.display_name, options.compute, options.cpus, options.memory,
                options.gpus, options.nodes, options.procs_per_node, options.distribution, options.priority,
                options.timeout_s))
            or not all(item.partition("=")[0] and "=" in item for item in options.env)):
        return None
    code_dir = Path.cwd()
    if options.directory is not None:
        code_dir = Path(os.path.abspath(options.directory.expanduser()))
        if not code_dir.is_dir():
            raise UsageError(f"{options.directory} is not a directory")
    return RunRequest(
        code_dir=code_dir, argv=tuple(options.command), experiment=code_dir.name.lower() or "default",
        display_name="", tags={}, environment=env_items(options.env),
        compute="default", cpus=1.0, memory_bytes=DEFAULT_MEMORY_BYTES, gpus=0, instance_count=1, timeout_s=0.0,
        priority=priorities.parse("medium"),
    )
