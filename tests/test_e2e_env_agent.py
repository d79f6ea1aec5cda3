"""Runs that declare their software: a real `runyard-agent` against `FakeHead`, real uv and real venvs, installing
offline from the tests' own wheelhouse (`pip_index_url = "none"`, `pip_find_links = [wheelhouse]`).

An environment is built once per node and shared: one build however many runs ask at once, a new build when the
spec changes, nothing half-built ever used (an agent killed mid-build included), eviction never takes one a live
run uses. Its build's output is the run's BUILD stream; a spec the builder refuses fails the run with
env_build_failed and the builder's last lines. No container runtime is installed here: the image test drives a
stand-in podman that records what the agent asks of it (the exact command lines are tests/test_agent_envparts.py).
"""

from __future__ import annotations

import re
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from uv import find_uv_bin

from protos import runyard_pb2 as pb
from runyard.envspec import EnvSpec, identity, node_platform
from tests.fakehead import FakeHead, zip_of
from tests.fakes import eventually
from tests.places import run_root
from testbed.harness import process_gone, start_agent_process, terminate

CHECK = """\
import os, subprocess, sys
import tinyalpha
from runyard import Run

Run.get_context().log("alpha_loaded", 1.0)
print("tinyalpha", tinyalpha.VALUE, "in", sys.prefix)
print(subprocess.run(["tinyalpha-hello"], capture_output=True, text=True, check=True).stdout.strip())
print("PATH starts with", os.environ["PATH"].split(os.pathsep)[0])
try:
    open(os.path.join(sys.prefix, "mine"), "w")
    print("the environment is writable")
except PermissionError:
    print("the environment is read-only")
"""
WHICH = "import sys, tinybeta; print(tinybeta.VALUE, sys.prefix)\n"
ALPHA = pb.EnvironmentSpec(python="3.11", pip=["tinyalpha"])


def spec_of(env: pb.EnvironmentSpec) -> EnvSpec:
    return EnvSpec(python=env.python, pip=tuple(env.pip))


def hash_of(env: pb.EnvironmentSpec) -> str:
    return identity(spec_of(env), node_platform())


@pytest.fixture
async def head() -> AsyncIterator[FakeHead]:
    found = FakeHead()
    await found.start()
    yield found
    await found.stop()


@pytest.fixture
def agent_dir(tmp_path: Path) -> Path:
    return tmp_path / "agent"


def start_agent(head: FakeHead, agent_dir: Path, wheelhouse: Path, **settings: object) -> subprocess.Popen[bytes]:
    return start_agent_process("node-1", agent_dir, agent_dir.parent / "agent.log", {
        **head.agent_settings(), "cpus": 16.0, "pip_index_url": "none", "pip_find_links": [str(wheelhouse)],
        **settings})


def builds(agent_dir: Path) -> list[str]:
    """The directories of environments on the node: published or not."""
    found = run_root(agent_dir).envs / ".builds"
    return sorted(p.name for p in found.iterdir()) if found.exists() else []


def gated_uv(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A uv that waits at its install step until the gate file exists; returns it, the gate and its pid file."""
    gate, pids, script = tmp_path / "gate", tmp_path / "uv-pids", tmp_path / "uv"
    script.write_text(f"""#!/bin/sh
if [ "$1" = pip ]; then
    echo $$ >> {pids}
    while [ ! -e {gate} ]; do sleep 0.05; done
fi
exec {find_uv_bin()} "$@"
""")
    script.chmod(0o755)
    return script, gate, pids


async def exited(head: FakeHead, run_id: str, timeout_s: float = 60) -> pb.RunUpdate:
    return await eventually(f"{run_id} to exit", lambda: head.exited(run_id), timeout_s=timeout_s)


@pytest.mark.timeout(90)
async def test_a_run_uses_what_only_its_environment_has_and_sees_its_build(
        head: FakeHead, agent_dir: Path, wheelhouse: Path) -> None:
    data, sha = zip_of({"check.py": CHECK})
    head.assign("with-env", ["python", "check.py"], data, sha, env=ALPHA, env_hash=hash_of(ALPHA))
    head.assign("without", ["python", "-c", "import tinyalpha"], data, sha)
    agent = start_agent(head, agent_dir, wheelhouse)
    try:
        done = await exited(head, "with-env")
        bare = await exited(head, "without")
        key = hash_of(ALPHA)
        await eventually("the head to hear of the environment", lambda: head.env_hashes() == [key])
        (build,) = builds(agent_dir)
    finally:
        terminate(agent)
    assert (done.exit_code, done.reason) == (0, pb.REASON_UNSPECIFIED), head.log_lines("with-env", pb.STDERR)
    out = head.log_lines("with-env", pb.STDOUT)
    prefix = str(run_root(agent_dir).envs / ".builds" / build)
    assert out == [f"tinyalpha alpha 1.0 in {prefix}", f"hello from tinyalpha in {prefix}",
                   f"PATH starts with {prefix}/bin", "the environment is read-only"]
    build_lines = head.log_lines("with-env", pb.BUILD)
    assert build_lines[0].startswith("==> create the venv (python 3.11")
    assert "==> install 1 pip requirement" in build_lines and " + tinyalpha==1.0" in build_lines
    assert f"environment {key[:12]}: building it on this node" in head.log_lines("with-env", pb.SYSTEM)
    metrics = [key for m in head.messages if m.WhichOneof("body") == "metrics" for r in m.metrics.records
               for key in r.keys]
    assert metrics == ["alpha_loaded"], "the SDK works in the environment without being installed there"
    assert bare.exit_code == 1 and "No module named 'tinyalpha'" in "\n".join(head.log_lines("without", pb.STDERR))
    hello = head.hello()
    assert hello is not None and hello.capacity.platform == node_platform()
    assert "uv" in hello.capacity.builders and any(v.startswith("3.11.") for v in hello.capacity.interpreters)


@pytest.mark.timeout(90)
async def test_one_build_for_ten_runs_at_once_then_the_cache_and_a_new_build_for_a_changed_requirement(
        head: FakeHead, agent_dir: Path, wheelhouse: Path, tmp_path: Path) -> None:
    uv, gate, _ = gated_uv(tmp_path)
    beta1 = pb.EnvironmentSpec(python="3.11", pip=["tinybeta==1.0"])
    beta2 = pb.EnvironmentSpec(python="3.11", pip=["tinybeta==2.0"])
    data, sha = zip_of({"which.py": WHICH})
    runs = [f"run-{i}" for i in range(10)]
    for run_id in runs:
        head.assign(run_id, ["python", "which.py"], data, sha, env=beta1, env_hash=hash_of(beta1))
    agent = start_agent(head, agent_dir, wheelhouse, uv_bin=str(uv))
    key1, key2 = hash_of(beta1), hash_of(beta2)
    try:
        def waiting() -> list[str]:
            return [r for r in runs if any("waiting for that build" in line
                                           for line in head.log_lines(r, pb.SYSTEM))]

        await eventually("nine runs to wait for the one build", lambda: len(waiting()) == 9)
        gate.touch()
        ends = [await exited(head, r) for r in runs]
        assert [(e.exit_code, e.reason) for e in ends] == [(0, pb.REASON_UNSPECIFIED)] * 10
        assert len(builds(agent_dir)) == 1, "ten runs, one build"
        (builder,) = [r for r in runs if r not in waiting()]
        assert f"environment {key1[:12]}: building it on this node" in head.log_lines(builder, pb.SYSTEM)
        assert all(" + tinybeta==1.0" in head.log_lines(r, pb.BUILD) for r in runs), "all saw the build"

        head.assign("again", ["python", "which.py"], data, sha, env=beta1, env_hash=key1)
        head.assign("changed", ["python", "which.py"], data, sha, env=beta2, env_hash=key2)
        for run_id in ("again", "changed"):
            assert (await exited(head, run_id)).exit_code == 0
        await eventually("the head to hear of both", lambda: head.env_hashes() == sorted([key1, key2]))
        assert len(builds(agent_dir)) == 2 and key1 != key2
    finally:
        terminate(agent)
    assert f"environment {key1[:12]}: taken from the node's cache" in head.log_lines("again", pb.SYSTEM)
    assert head.log_lines("again", pb.BUILD) == []
    assert head.log_lines("again", pb.STDOUT)[0].startswith("beta 1.0 ")
    assert head.log_lines("changed", pb.STDOUT)[0].startswith("beta 2.0 ")


@pytest.mark.timeout(90)
async def test_a_broken_spec_fails_the_run_with_env_build_failed_and_the_builders_words(
        head: FakeHead, agent_dir: Path, wheelhouse: Path) -> None:
    broken = pb.EnvironmentSpec(python="3.11", pip=["tinyalpha", "not-in-the-wheelhouse==3.1"])
    data, sha = zip_of({"check.py": CHECK})
    head.assign("broken", ["python", "check.py"], data, sha, env=broken, env_hash=hash_of(broken))
    agent = start_agent(head, agent_dir, wheelhouse)
    try:
        done = await exited(head, "broken")
        assert agent.poll() is None, "a broken spec fails the run, not the agent"
        assert builds(agent_dir) == [], "nothing of the failed build is left"
    finally:
        terminate(agent)
    assert (done.exit_code, done.reason) == (-1, pb.REASON_ENV_BUILD_FAILED)
    assert done.detail.startswith("environment build failed: install 2 pip requirements exited 1:\n")
    assert "not-in-the-wheelhouse" in done.detail and "No solution found" in done.detail
    assert any("not-in-the-wheelhouse" in line for line in head.log_lines("broken", pb.BUILD))
    assert head.updates(pb.RunUpdate.RUNNING) == [], "the command never started"
    assert head.env_hashes() == []


@pytest.mark.timeout(120)
async def test_an_agent_killed_mid_build_leaves_nothing_a_later_run_uses(
        head: FakeHead, agent_dir: Path, wheelhouse: Path, tmp_path: Path) -> None:
    uv, _, pids = gated_uv(tmp_path)     # the gate never opens: the first agent dies inside the install step
    data, sha = zip_of({"check.py": CHECK})
    head.assign("first", ["python", "check.py"], data, sha, env=ALPHA, env_hash=hash_of(ALPHA))
    agent = start_agent(head, agent_dir, wheelhouse, uv_bin=str(uv))
    try:
        await eventually("the install step to begin", lambda: pids.exists())
        half_built = builds(agent_dir)
        assert len(half_built) == 1
    finally:
        agent.send_signal(signal.SIGKILL)
        agent.wait()
    stuck = int(pids.read_text().split()[0])
    await eventually("the builder to die with its agent", lambda: process_gone(stuck))

    agent = start_agent(head, agent_dir, wheelhouse)
    try:
        # assigned once the new agent is connected: the fake head may not have seen the old stream end yet
        await eventually("the new agent to say hello",
                         lambda: sum(m.WhichOneof("body") == "hello" for m in head.messages) == 2)
        head.assign("second", ["python", "check.py"], data, sha, env=ALPHA, env_hash=hash_of(ALPHA))
        done = await exited(head, "second")
        (build,) = builds(agent_dir)
    finally:
        terminate(agent)
    assert done.exit_code == 0, head.log_lines("second", pb.STDERR)
    assert f"environment {hash_of(ALPHA)[:12]}: building it on this node" in head.log_lines("second", pb.SYSTEM)
    assert build not in half_built, "the half-built environment was removed, never used"
    assert head.log_lines("second", pb.STDOUT)[0].endswith(build)



@pytest.mark.timeout(120)
async def test_eviction_keeps_the_environment_of_a_live_run(
        head: FakeHead, agent_dir: Path, wheelhouse: Path, shared: Path) -> None:
    hold = shared / "hold"
    long = (f"import importlib, os, time, tinyalpha\nprint('started', flush=True)\n"
            f"while not os.path.exists({str(hold)!r}):\n    time.sleep(0.05)\n"
            f"print('still', importlib.reload(tinyalpha).VALUE)\n")   # read from the environment again
    beta1 = pb.EnvironmentSpec(python="3.11", pip=["tinybeta==1.0"])
    beta2 = pb.EnvironmentSpec(python="3.11", pip=["tinybeta==2.0"])
    data, sha = zip_of({"long.py": long, "which.py": WHICH})
    agent = start_agent(head, agent_dir, wheelhouse, env_cache_max_bytes=1)   # every environment is one too many
    try:
        head.assign("live", ["python", "long.py"], data, sha, env=ALPHA, env_hash=hash_of(ALPHA))
        await eventually("the live run to start", lambda: "started" in head.log_lines("live", pb.STDOUT))
        head.assign("other", ["python", "which.py"], data, sha, env=beta1, env_hash=hash_of(beta1))
        assert (await exited(head, "other")).exit_code == 0
        head.assign("third", ["python", "which.py"], data, sha, env=beta2, env_hash=hash_of(beta2))
        assert (await exited(head, "third")).exit_code == 0
        await eventually("the ended runs' environments to be evicted",
                         lambda: head.env_hashes() == [hash_of(ALPHA)], timeout_s=30)
        (kept,) = builds(agent_dir)
        assert kept.startswith(hash_of(ALPHA))
        hold.touch()
        done = await exited(head, "live")
        assert (done.exit_code, head.log_lines("live", pb.STDOUT)) == (0, ["started", "still alpha 1.0"])
        # (an empty set of environments cannot be said in a heartbeat: an empty list there means "no change")
        await eventually("its environment to go once the run ended", lambda: builds(agent_dir) == [])
    finally:
        terminate(agent)


@pytest.mark.timeout(90)
async def test_the_head_can_have_a_node_build_an_environment_for_no_run(
        head: FakeHead, agent_dir: Path, wheelhouse: Path) -> None:
    agent = start_agent(head, agent_dir, wheelhouse)
    try:
        await eventually("the agent to say hello", lambda: head.hello() is not None)
        assert head.env_hashes() == []
        head.send(pb.HeadMessage(build_env=pb.BuildEnvironment(env=ALPHA, env_hash=hash_of(ALPHA))))
        await eventually("the node to say it has it", lambda: head.env_hashes() == [hash_of(ALPHA)])
        assert len(builds(agent_dir)) == 1
    finally:
        terminate(agent)
    assert head.updates() == []



FAKE_PODMAN = """#!/bin/sh
# A stand-in for podman: says what it was asked, "pulls" by saying so, and "runs" the command after the image
# (as the agent: this checks the agent's side of the runtime, not the runtime's isolation).
echo "$*" >> {log}
case "$1" in
    --version) echo "podman version 5.0.0 (a stand-in)" ;;
    pull) echo "Trying to pull $2..."; echo "Writing manifest to image destination" ;;
    rm) ;;
    run)
        shift
        while [ $# -gt 0 ]; do
            case "$1" in
                --rm|--init) shift ;;
                --*) shift 2 ;;
                *) break ;;
            esac
        done
        shift
        exec "$@" ;;
esac
"""


@pytest.mark.timeout(90)
async def test_an_image_run_is_pulled_then_run_through_the_nodes_runtime(
        head: FakeHead, agent_dir: Path, wheelhouse: Path, tmp_path: Path) -> None:
    calls = tmp_path / "podman-calls"
    podman = tmp_path / "bin" / "podman"
    podman.parent.mkdir()
    podman.write_text(FAKE_PODMAN.format(log=calls))
    podman.chmod(0o755)
    image = pb.EnvironmentSpec(image="registry.example/team/train:1")
    data, sha = zip_of({"hello.py": "import os\nprint('in the image as', os.getuid(), os.getcwd())\n"})
    head.assign("boxed", ["python3", "hello.py"], data, sha, env=image,
                env_hash=identity(EnvSpec(image=image.image), node_platform()))
    agent = start_agent(head, agent_dir, wheelhouse, container_runtime=str(podman))
    try:
        done = await exited(head, "boxed")
        await eventually("the container to be removed", lambda: "rm --force runyard-boxed-1" in calls.read_text())
    finally:
        terminate(agent)
    assert done.exit_code == 0, head.log_lines("boxed", pb.STDERR)
    hello = head.hello()
    assert hello is not None and "podman" in hello.capacity.builders
    assert "Trying to pull registry.example/team/train:1..." in head.log_lines("boxed", pb.BUILD)
    asked = calls.read_text().splitlines()
    assert asked[0] == "--version" and asked[1] == "pull registry.example/team/train:1"
    (run,) = [line for line in asked if line.startswith("run ")]
    code = str(run_root(agent_dir).attempt("boxed", 1).code)
    top = str(run_root(agent_dir).attempt("boxed", 1).top)
    assert run.startswith("run --rm --init --name runyard-boxed-1 --pull never --user ")
    assert f"--workdir {code} --volume {top}:{top} --volume " in run and ":ro --env " in run
    passed = re.findall(r"--env (\S+)", run)
    assert {"HOME", "RUNYARD_RUN_ID", "CUDA_VISIBLE_DEVICES"} <= set(passed) and "PATH" not in passed
    assert run.endswith(" registry.example/team/train:1 python3 hello.py")
    (line,) = head.log_lines("boxed", pb.STDOUT)
    assert line.startswith("in the image as ") and line.endswith(code)
