"""The parts of runs' environments on a node, one by one: the container command lines, interpreter discovery,
builder detection. Real files and processes; no network."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from agent.builders import Builders, find_builders
from agent.containers import (
    ContainerRun, Mount, Runtime, apptainer_ref, container_env, pull_argv, remove_argv, run_argv,
)
from agent.interpreters import Interpreter, candidates, find_interpreters, matches, pick, version_of, versions


# --- container command lines ----------------------------------------------------------------------------------

RUN = ContainerRun(runtime=Runtime.DOCKER, binary="/usr/bin/docker", image="nvcr.io/nvidia/pytorch:24.05-py3",
                   name="runyard-r1-2", argv=("python", "train.py", "--lr", "3e-4"), workdir="/runs/attempts/r1-2/code",
                   mounts=(Mount("/runs/attempts/r1-2"), Mount("/runs/sdk", read_only=True)),
                   env_names=("HOME", "PATH", "RUNYARD_RUN_ID", "WANDB_API_KEY"), uid=200007, gid=200007,
                   gpus=(1, 3))
COMMON = ["--rm", "--init", "--name", "runyard-r1-2", "--pull", "never", "--user", "200007:200007", "--cap-drop", "ALL",
          "--security-opt", "no-new-privileges", "--network", "host", "--shm-size", "8g",
          "--workdir", "/runs/attempts/r1-2/code", "--volume", "/runs/attempts/r1-2:/runs/attempts/r1-2",
          "--volume", "/runs/sdk:/runs/sdk:ro", "--env", "HOME", "--env", "RUNYARD_RUN_ID", "--env", "WANDB_API_KEY"]
TAIL = ["nvcr.io/nvidia/pytorch:24.05-py3", "python", "train.py", "--lr", "3e-4"]


def with_runtime(runtime: Runtime, binary: str, **changes: object) -> ContainerRun:
    values = {f: getattr(RUN, f) for f in RUN.__dataclass_fields__}
    values.update(runtime=runtime, binary=binary, **changes)
    return ContainerRun(**values)  # type: ignore[arg-type]


def test_docker_runs_the_command_as_the_runs_uid_with_its_gpus_quoted_as_one_field() -> None:
    assert run_argv(RUN) == ["/usr/bin/docker", "run", *COMMON, "--gpus", '"device=1,3"', *TAIL]


def test_podman_passes_the_gpus_as_cdi_devices() -> None:
    run = with_runtime(Runtime.PODMAN, "/usr/bin/podman")
    assert run_argv(run) == ["/usr/bin/podman", "run", *COMMON, "--device", "nvidia.com/gpu=1",
                             "--device", "nvidia.com/gpu=3", *TAIL]


def test_a_container_without_gpus_asks_for_none() -> None:
    assert run_argv(with_runtime(Runtime.DOCKER, "docker", gpus=())) == ["docker", "run", *COMMON, *TAIL]


def test_apptainer_runs_the_sif_with_the_same_paths_bound_and_the_nodes_gpus() -> None:
    run = with_runtime(Runtime.APPTAINER, "/usr/bin/apptainer", image="/envs/.builds/h-1/image.sif")
    assert run_argv(run) == [
        "/usr/bin/apptainer", "exec", "--contain", "--pwd", "/runs/attempts/r1-2/code",
        "--bind", "/runs/attempts/r1-2:/runs/attempts/r1-2", "--bind", "/runs/sdk:/runs/sdk:ro", "--nv",
        "/envs/.builds/h-1/image.sif", "python", "train.py", "--lr", "3e-4"]


def test_no_value_of_the_runs_environment_is_on_a_command_line() -> None:
    for runtime in Runtime:
        argv = run_argv(with_runtime(runtime, str(runtime)))
        assert not any("=" in arg and arg.split("=", 1)[0] in RUN.env_names for arg in argv)


@pytest.mark.parametrize(("runtime", "visible"), [
    (Runtime.DOCKER, "0,1"), (Runtime.PODMAN, "0,1"), (Runtime.APPTAINER, "1,3")])
def test_cuda_visible_devices_as_the_container_numbers_the_gpus(runtime: Runtime, visible: str) -> None:
    env = container_env(runtime, {"CUDA_VISIBLE_DEVICES": "1,3", "HOME": "/h"}, [1, 3])
    assert env == {"CUDA_VISIBLE_DEVICES": visible, "HOME": "/h"}


def test_pulling_and_removing() -> None:
    assert pull_argv(Runtime.DOCKER, "docker", "alpine:3", "/envs/x") == ["docker", "pull", "alpine:3"]
    assert pull_argv(Runtime.PODMAN, "podman", "alpine:3", "/envs/x") == ["podman", "pull", "alpine:3"]
    assert pull_argv(Runtime.APPTAINER, "apptainer", "alpine:3", "/envs/x") == [
        "apptainer", "pull", "/envs/x/image.sif", "docker://alpine:3"]
    assert apptainer_ref("oras://ghcr.io/x/y:1") == "oras://ghcr.io/x/y:1"
    assert remove_argv(Runtime.DOCKER, "docker", "runyard-r-1") == ["docker", "rm", "--force", "runyard-r-1"]
    assert remove_argv(Runtime.PODMAN, "podman", "runyard-r-1") == ["podman", "rm", "--force", "runyard-r-1"]
    assert remove_argv(Runtime.APPTAINER, "apptainer", "runyard-r-1") is None


# --- interpreters ----------------------------------------------------------------------------------------------


def fake_python(path: Path, version: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho {version}\n")
    path.chmod(0o755)
    return path


def test_candidates_are_the_agents_own_then_python3_names_in_the_searched_dirs_and_path(tmp_path: Path) -> None:
    usr, extra = tmp_path / "usr-bin", tmp_path / "on-path"
    for name in ("python3", "python3.11", "python3.11-config", "python2.7", "pythonista"):
        fake_python(usr / name, "3.11.7")
    fake_python(extra / "python3.12", "3.12.1")
    found = candidates(own="/opt/agent/bin/python", dirs=(str(usr),), search_path=f"relative:{extra}")
    assert found == [Path("/opt/agent/bin/python"), usr / "python3", usr / "python3.11", extra / "python3.12"]


def binary(path: Path) -> Path:
    """An executable ELF file at `path` (a copy of /bin/true): a stand-in interpreter, asked through `ask`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(shutil.which("true") or "/bin/true", path)
    return path


def test_interpreters_are_one_per_file_and_only_those_runs_can_use(tmp_path: Path) -> None:
    real = binary(tmp_path / "bin" / "python3.11")
    (tmp_path / "bin" / "python3").symlink_to("python3.11")
    hidden = binary(tmp_path / "hidden" / "python3.10")
    broken = binary(tmp_path / "bin" / "python3.9")
    shim = fake_python(tmp_path / "shims" / "python3.12", "3.12.1")     # a script in front of an interpreter
    answers = {real: "3.11.7", hidden: "3.10.4", shim: "3.12.1"}
    asked: list[Path] = []

    def ask(path: Path) -> str | None:
        asked.append(path)
        return answers.get(path)

    found = find_interpreters([real, tmp_path / "bin" / "python3", hidden, broken, shim, tmp_path / "missing"],
                              usable=lambda path: "hidden" not in str(path), ask=ask)
    assert found == [Interpreter(real, "3.11.7", own=True)]
    assert asked == [real, broken], "each file once; neither one out of the runs' reach nor a script is asked"


def test_the_version_is_asked_of_the_interpreter_itself() -> None:
    assert version_of(Path(sys.executable)) == "%d.%d.%d" % sys.version_info[:3]
    assert version_of(Path("/bin/true")) is None


OWN = Interpreter(Path("/agent/python3.11"), "3.11.7", own=True)
SYS11 = Interpreter(Path("/usr/bin/python3.11"), "3.11.2")
SYS12 = Interpreter(Path("/usr/bin/python3.12"), "3.12.1")
LOCAL11 = Interpreter(Path("/usr/local/bin/python3.11"), "3.11.9")


@pytest.mark.parametrize(("wanted", "found", "chosen"), [
    ("3.11", [OWN, SYS11, SYS12], OWN),             # the highest matching release
    ("3.11", [OWN, SYS11, LOCAL11], LOCAL11),
    ("3.11.2", [OWN, SYS11, LOCAL11], SYS11),
    ("3", [OWN, SYS11, SYS12], SYS12),
    ("3.1", [OWN, SYS11, SYS12], None),             # 3.1 is not 3.11
    ("3.9", [OWN, SYS11], None),
    ("", [SYS12, OWN], OWN),                        # none asked: the agent's own
    ("", [SYS11, SYS12], SYS12),                    # ... or the highest when runs cannot use the agent's
    ("", [], None),
])
def test_picking_an_interpreter(wanted: str, found: list[Interpreter], chosen: Interpreter | None) -> None:
    assert pick(found, wanted) == chosen


def test_versions_are_reported_once_each_highest_first() -> None:
    assert versions([SYS11, OWN, SYS12, Interpreter(Path("/x"), "3.11.2")]) == ["3.12.1", "3.11.7", "3.11.2"]
    assert matches("3.11.7", "3.11") and matches("3.11.7", "") and not matches("3.11.7", "3.1")


# --- builders --------------------------------------------------------------------------------------------------


def which_of(found: dict[str, str]) -> object:
    return lambda name: found.get(name)


def test_a_docker_client_without_a_daemon_is_not_offered_but_a_podman_that_answers_is(tmp_path: Path) -> None:
    on_path = {"docker": "/usr/local/bin/docker", "podman": "/usr/bin/podman", "micromamba": "/opt/mm/micromamba"}
    answering = {"/usr/bin/podman"}
    found = find_builders(uv_bin=sys.executable, which=which_of(on_path),  # type: ignore[arg-type]
                          probe=lambda runtime, binary: binary in answering)
    assert found == Builders(uv=sys.executable, conda="/opt/mm/micromamba", runtime=Runtime.PODMAN,
                             runtime_bin="/usr/bin/podman")
    assert found.names() == ["uv", "micromamba", "podman"]
    only_docker = find_builders(uv_bin=sys.executable, which=which_of({"docker": "/usr/local/bin/docker"}),  # type: ignore[arg-type]
                                probe=lambda runtime, binary: False)
    assert only_docker.runtime is None and only_docker.names() == ["uv"]


def test_configured_builders_win_and_none_turns_images_off(tmp_path: Path) -> None:
    conda = fake_python(tmp_path / "conda", "x")
    apptainer = fake_python(tmp_path / "apptainer", "x")
    found = find_builders(uv_bin=sys.executable, conda_builder=str(conda), container_runtime=str(apptainer),
                          which=which_of({"podman": "/usr/bin/podman"}), probe=lambda r, b: True)  # type: ignore[arg-type]
    assert (found.conda_kind, found.runtime, found.runtime_bin) == ("conda", Runtime.APPTAINER, str(apptainer))
    off = find_builders(uv_bin=sys.executable, container_runtime="none",
                        which=which_of({"podman": "/usr/bin/podman"}), probe=lambda r, b: True)  # type: ignore[arg-type]
    assert off.runtime is None


def test_uv_is_found_next_to_the_agent_and_a_missing_one_is_not_offered(tmp_path: Path) -> None:
    assert find_builders(which=which_of({})).uv  # type: ignore[arg-type]
    assert find_builders(uv_bin=str(tmp_path / "uv"), which=which_of({})).names() == []  # type: ignore[arg-type]
