"""The agent's own faults end it or are reported: a real `runyard-agent` against `FakeHead` (tests/fakehead.py),
which records exactly what the agent does on the wire.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from tests.fakehead import FakeHead
from tests.fakes import eventually
from tests.harness import start_agent_process, terminate


@pytest.fixture
async def head() -> AsyncIterator[FakeHead]:
    found = FakeHead()
    await found.start()
    yield found
    await found.stop()


@pytest.fixture
def agent_dir(tmp_path: Path) -> Path:
    return tmp_path / "agent"


def start_agent(head: FakeHead, agent_dir: Path, stderr: int | None = None,
                **settings: object) -> subprocess.Popen[bytes]:
    return start_agent_process("node-1", agent_dir, agent_dir.parent / "agent.log", {
        "head_address": head.address, "join_token": "join-secret", "cpus": 16.0, **settings}, stderr=stderr)


async def exit_of(proc: subprocess.Popen[bytes], timeout_s: float = 30) -> tuple[int, str]:
    """The exit status and the stderr of an agent started with stderr=PIPE."""
    await eventually("the agent to exit", lambda: proc.poll() is not None, timeout_s=timeout_s)
    assert proc.stderr is not None
    with proc.stderr:
        return proc.returncode, proc.stderr.read().decode()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("refused", ["join", "connect"])
async def test_a_node_name_held_by_another_agent_ends_this_one_with_one_line(
        head: FakeHead, agent_dir: Path, refused: str) -> None:
    message = "node name node-1 is held by a live agent (connected from 10.0.0.7); stop it or pick another name"
    if refused == "join":
        head.join_abort = (grpc.StatusCode.ALREADY_EXISTS, message)
    else:
        head.connect_aborts = [(grpc.StatusCode.ALREADY_EXISTS, message)]
    agent = start_agent(head, agent_dir, stderr=subprocess.PIPE)
    try:
        code, stderr = await exit_of(agent)
    finally:
        terminate(agent)
    assert code == 2
    assert stderr.splitlines()[-1] == f"runyard-agent: {message}"  # the lines before are the agent's JSON log
    assert "Traceback" not in stderr
    assert head.connects == (0 if refused == "join" else 1)
