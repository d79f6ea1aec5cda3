"""Running a run's command in a container image: the exact command line for each runtime (podman, docker,
apptainer), as pure functions of what the run needs.

The run sees the same paths inside as outside: its attempt directory (code, HOME, TMPDIR, records file) and the
in-run SDK (read-only) are mounted at their own paths, its working directory is its code, and its variables are
passed by name only (`--env NAME`, the value from the client's environment), so no value of a run's environment
shows in a process list. The container never pulls at start (`pull_argv` is the environment's build step).

- podman, docker: the client runs as the agent and talks to the runtime; the container runs as the run's uid and
  gid, without capabilities, with no_new_privs, on the host's network (multi-node rendezvous), named after the
  attempt so that `remove_argv` can make sure it is gone. The GPUs given to the run are passed through
  (docker: `--gpus "device=0,1"`; podman: CDI devices `nvidia.com/gpu=N`) and are numbered from 0 inside, so
  CUDA_VISIBLE_DEVICES is renumbered for the container.
- apptainer: no daemon, the client runs as the run's user (setpriv) and the container's processes are its
  children, contained like any run; the image is a .sif file kept in the environment's directory; `--nv` passes
  the node's GPUs through and CUDA_VISIBLE_DEVICES selects the run's.
Must not: run anything, read the disk, or put a variable's value in a command line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum


class Runtime(StrEnum):
    PODMAN = "podman"
    DOCKER = "docker"
    APPTAINER = "apptainer"


# The client asks a runtime that runs as root: it must not drop to the run's uid itself (`--user` does inside).
CLIENT_AS_AGENT = frozenset({Runtime.PODMAN, Runtime.DOCKER})
SIF_NAME = "image.sif"
SHM_SIZE = "8g"                 # a DataLoader with workers needs more than the 64 MB a container gets by default
_SCHEMES = ("docker://", "docker-archive:", "oci://", "oci-archive:", "library://", "oras://", "shub://")
_NOT_PASSED = frozenset({"PATH"})   # the image's own PATH finds its programs


@dataclass(frozen=True, slots=True)
class Mount:
    path: str                   # mounted at the same path inside
    read_only: bool = False


@dataclass(frozen=True, slots=True)
class ContainerRun:
    """One run's command in a container."""

    runtime: Runtime
    binary: str                 # the runtime's executable
    image: str                  # the image reference; for apptainer the .sif file
    name: str                   # the container's name (podman, docker)
    argv: tuple[str, ...]
    workdir: str
    mounts: tuple[Mount, ...]
    env_names: tuple[str, ...]  # variables passed from the client's environment
    uid: int
    gid: int
    gpus: tuple[int, ...] = ()


def run_argv(run: ContainerRun) -> list[str]:
    """The command line that runs `run.argv` in the container."""
    if run.runtime is Runtime.APPTAINER:
        argv = [run.binary, "exec", "--contain", "--pwd", run.workdir]
        for mount in run.mounts:
            argv += ["--bind", f"{mount.path}:{mount.path}" + (":ro" if mount.read_only else "")]
        if run.gpus:
            argv.append("--nv")
        return [*argv, run.image, *run.argv]
    argv = [run.binary, "run", "--rm", "--init", "--name", run.name, "--pull", "never",
            "--user", f"{run.uid}:{run.gid}", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            "--network", "host", "--shm-size", SHM_SIZE, "--workdir", run.workdir]
    for mount in run.mounts:
        argv += ["--volume", f"{mount.path}:{mount.path}" + (":ro" if mount.read_only else "")]
    for name in run.env_names:
        if name not in _NOT_PASSED:
            argv += ["--env", name]
    if run.gpus and run.runtime is Runtime.DOCKER:
        # docker reads the value as CSV: a list of devices must be quoted to stay one field
        argv += ["--gpus", '"device=' + ",".join(str(g) for g in run.gpus) + '"']
    elif run.gpus:
        for gpu in run.gpus:
            argv += ["--device", f"nvidia.com/gpu={gpu}"]
    return [*argv, run.image, *run.argv]


def container_env(runtime: Runtime, env: Mapping[str, str], gpus: Sequence[int]) -> dict[str, str]:
    """The client's environment for a run in a container: the run's own, with CUDA_VISIBLE_DEVICES as the
    container numbers the GPUs it was given."""
    result = dict(env)
    if runtime in CLIENT_AS_AGENT:
        result["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(len(gpus)))
    return result


def pull_argv(runtime: Runtime, binary: str, image: str, dest: str) -> list[str]:
    """The command line that fetches `image` once for the node; apptainer writes it to `dest`/image.sif."""
    if runtime is Runtime.APPTAINER:
        return [binary, "pull", f"{dest}/{SIF_NAME}", apptainer_ref(image)]
    return [binary, "pull", image]


def apptainer_ref(image: str) -> str:
    """An image reference as apptainer takes it: a registry image without a scheme is a docker:// one."""
    return image if image.startswith(_SCHEMES) else f"docker://{image}"


def remove_argv(runtime: Runtime, binary: str, name: str) -> list[str] | None:
    """The command line that makes sure the run's container is gone; None where the container dies with its
    client (apptainer)."""
    if runtime is Runtime.APPTAINER:
        return None
    return [binary, "rm", "--force", name]


def container_name(run_id: str, attempt: int) -> str:
    return f"runyard-{run_id}-{attempt}"
