"""What a run's process sees: an allowlisted environment, a `python` its user can execute, commands judged for
that user (not for the root agent)."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.errors import CannotStart
from agent.reach import may_execute
from agent.rundirs import AttemptDirs
from agent.runenv import DEFAULT_PATH, check_command, python_dir, run_environment
from agent.runusers import RunUser, find_setpriv
from protos import runyard_pb2 as pb

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="judging for another uid matters under a root agent")
RUN_UID = 200321


@pytest.fixture
def other() -> RunUser:
    return RunUser(RUN_UID, RUN_UID, f"runyard-{RUN_UID}", find_setpriv() or "/usr/bin/setpriv")


@pytest.fixture
def open_parent() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="runyard-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def test_the_environment_is_an_allowlist_and_the_run_variables_win(tmp_path: Path, other: RunUser) -> None:
    dirs = AttemptDirs(tmp_path / "r-1")
    asg = pb.Assignment(run_id="r", attempt=1, spec=pb.RunSpec(environment={"MY_VAR": "42", "RUNYARD_RUN_ID": "x"}))
    agent_env = {"LANG": "C.UTF-8", "PATH": "/root/.pyenv/shims:/usr/bin", "RUNYARD_AGENT_JOIN_TOKEN": "secret",
                 "AWS_SECRET_ACCESS_KEY": "the agent's", "HOME": "/root"}
    env = run_environment(asg, dirs=dirs, user=other, sdk_dir=tmp_path / "sdk", python_bin="/opt/py/bin",
                          extra={"HF_HOME": "/data/hf"}, agent_env=agent_env)
    assert env["LANG"] == "C.UTF-8" and env["MY_VAR"] == "42" and env["HF_HOME"] == "/data/hf"
    assert env["PATH"] == f"/opt/py/bin:{DEFAULT_PATH}"
    assert (env["HOME"], env["TMPDIR"]) == (str(dirs.home), str(dirs.tmp))
    assert env["USER"] == env["LOGNAME"] == f"runyard-{RUN_UID}"
    assert env["RUNYARD_RUN_ID"] == "r" and env["RUNYARD_RECORDS_FILE"] == str(dirs.records)
    assert "AWS_SECRET_ACCESS_KEY" not in env and "RUNYARD_AGENT_JOIN_TOKEN" not in env


@pytest.mark.parametrize(("variable", "unset"), [("VIRTUAL_ENV", "CONDA_PREFIX"), ("CONDA_PREFIX", "VIRTUAL_ENV")])
def test_the_runs_environment_comes_first_on_its_path(tmp_path: Path, other: RunUser, variable: str,
                                                      unset: str) -> None:
    asg = pb.Assignment(run_id="r", attempt=1, spec=pb.RunSpec(environment={"PATH": "/custom/bin"}))
    env = run_environment(asg, dirs=AttemptDirs(tmp_path / "r-1"), user=other, sdk_dir=tmp_path / "sdk",
                          python_bin="/opt/py/bin", env_dir="/envs/.builds/h-1", env_variable=variable,
                          agent_env={})
    assert env["PATH"] == "/envs/.builds/h-1/bin:/opt/py/bin:/custom/bin"
    assert env[variable] == "/envs/.builds/h-1" and unset not in env
    assert env["PYTHONPATH"] == str(tmp_path / "sdk"), "the SDK without being installed in the environment"


@as_root
def test_python_is_a_link_to_one_the_run_can_execute_when_the_agents_is_out_of_reach(
        tmp_path: Path, open_parent: Path, other: RunUser) -> None:
    hidden = tmp_path / "venv" / "bin"   # below pytest's 0700 directories
    hidden.mkdir(parents=True)
    (hidden / "python").symlink_to(shutil.which("python3") or "/usr/bin/python3")
    assert not may_execute(hidden / "python", other)
    found = python_dir(str(hidden), other, open_parent / "bin")
    assert found == str(open_parent / "bin")
    assert may_execute(open_parent / "bin" / "python", other) and may_execute(open_parent / "bin" / "python3", other)

    reachable = open_parent / "py"
    reachable.mkdir()
    (reachable / "python").symlink_to(os.path.realpath(open_parent / "bin" / "python"))
    assert python_dir(str(reachable), other, open_parent / "bin") == str(reachable)


@as_root
def test_the_linked_python_sees_the_agents_packages(tmp_path: Path, open_parent: Path, other: RunUser) -> None:
    hidden = tmp_path / "venv" / "bin"   # below pytest's 0700 directories
    hidden.mkdir(parents=True)
    found = python_dir(str(hidden), other, open_parent / "bin")
    if os.path.realpath(Path(found) / "python") == os.path.realpath(sys.executable):
        pytest.skip("the agent's own interpreter is within the run's reach: nothing is linked")

    probe = subprocess.run(other.command([str(Path(found) / "python"), "-c", "import pydantic; print(pydantic.__file__)"]),
                           capture_output=True, text=True, timeout=60, cwd=open_parent)

    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.startswith(tuple(site.getsitepackages())), "pydantic as the agent has it"


@as_root
def test_the_agents_commands_come_with_the_linked_python(tmp_path: Path, open_parent: Path, other: RunUser) -> None:
    hidden = tmp_path / "venv" / "bin"   # below pytest's 0700 directories
    hidden.mkdir(parents=True)
    found = python_dir(str(hidden), other, open_parent / "bin")
    if os.path.realpath(Path(found) / "python") == os.path.realpath(sys.executable):
        pytest.skip("the agent's own interpreter is within the run's reach: nothing is linked")
    agent_bin = Path(sys.executable).parent
    scripts = [p.name for p in agent_bin.iterdir() if p.is_file() and not p.name.startswith("python")
               and p.read_bytes().startswith(f"#!{agent_bin}/python".encode())]
    assert "pip" in scripts, "the agent's venv has console scripts"

    # `pip --version` as the run's user: the copy names the linked python, which sees the agent's pip
    probe = subprocess.run(other.command([str(Path(found) / "pip"), "--version"]), capture_output=True, text=True,
                           timeout=60, cwd=open_parent)

    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.startswith("pip "), probe.stdout
    assert (Path(found) / "pip").read_bytes().startswith(f"#!{found}/python\n".encode())


@as_root
def test_a_command_is_judged_for_the_runs_user(open_parent: Path, other: RunUser) -> None:
    tool = open_parent / "tool"
    tool.write_text("#!/bin/sh\necho hi\n")
    tool.chmod(0o700)   # root's: root may run it, the run may not
    with pytest.raises(CannotStart, match="Permission denied"):
        check_command([str(tool)], cwd=open_parent, env={"PATH": DEFAULT_PATH}, user=other)
    with pytest.raises(CannotStart, match="No such file"):
        check_command(["tool"], cwd=open_parent, env={"PATH": str(open_parent)}, user=other)
    tool.chmod(0o755)
    check_command(["tool"], cwd=open_parent, env={"PATH": str(open_parent)}, user=other)
    check_command(["sh"], cwd=open_parent, env={"PATH": DEFAULT_PATH}, user=other)
