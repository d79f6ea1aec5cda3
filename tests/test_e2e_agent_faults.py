"""Faults inside one run never end the agent, and the agent's own faults are reported: real agent processes.

Most tests here put a real `runyard-agent` against `FakeHead` (tests/fakehead.py), which counts and records
exactly what the agent does on the wire; the first uses the real head.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from protos import runyard_pb2 as pb
from tests.fakehead import FakeHead, zip_of
from tests.fakes import eventually
from tests.places import attempt_dirs
from testbed.harness import Cluster, start_agent_process, terminate, wait_until

DEPTH = 3000

DEEP_RUN = f"""\
import os
top = os.getcwd()
with open(os.path.join("outputs", "result.txt"), "w") as f:
    f.write("shallow output")
for where in ("outputs", "."):
    os.chdir(os.path.join(top, where))
    for _ in range({DEPTH}):
        os.mkdir("d")
        os.chdir("d")
    with open("leaf.txt", "w") as f:
        f.write("at the bottom")
print("made two trees {DEPTH} deep")
"""


@pytest.fixture
def one_agent(tmp_path: Path) -> Iterator[Cluster]:
    found = Cluster.start(tmp_path / "cluster", agents=1)
    yield found
    found.stop()


@pytest.mark.timeout(120)
def test_a_run_leaving_three_thousand_nested_directories_does_not_end_the_agent(
        one_agent: Cluster, project: Path, tmp_path: Path) -> None:
    cluster = one_agent
    (project / "deep.py").write_text(DEEP_RUN)   # a snapshot this deep is refused at upload: the run makes its own
    run_id = cluster.cli("submit", str(project), "-d", "-q", "--", "python", "deep.py", check=True).stdout.strip()
    run = cluster.wait_state(run_id, "Completed", "Failed", timeout_s=60)
    assert (run["state"], run["exit_code"]) == ("Completed", 0), run
    logs = cluster.cli("logs", run_id, check=True)
    assert f"made two trees {DEPTH} deep" in logs.stdout
    assert "deeper than 64 levels were left out" in logs.stderr
    agent = cluster.agents[0]
    assert agent.proc is not None and agent.proc.poll() is None, "the agent must outlive the run"
    attempt_dir = attempt_dirs(agent.data_dir, run_id).top
    wait_until("the run's directory to be removed, however deep", lambda: not attempt_dir.exists())

    second = cluster.cli("submit", str(project), "-q", "--", "python", "hello.py")
    assert second.returncode == 0, second.stderr
    assert "hello from the run" in second.stdout


# --- against a fake head -------------------------------------------------------------------------------------------


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
        **head.agent_settings(), "cpus": 16.0, **settings}, stderr=stderr)


async def exit_of(proc: subprocess.Popen[bytes], timeout_s: float = 30) -> tuple[int, str]:
    """The exit status and the stderr of an agent started with stderr=PIPE."""
    await eventually("the agent to exit", lambda: proc.poll() is not None, timeout_s=timeout_s)
    assert proc.stderr is not None
    with proc.stderr:
        return proc.returncode, proc.stderr.read().decode()


@pytest.mark.timeout(60)
async def test_eight_runs_of_one_new_snapshot_download_it_once(head: FakeHead, agent_dir: Path) -> None:
    data, sha = zip_of({"hello.py": "import os\nprint('hello from', os.environ['RUNYARD_RUN_ID'])\n"})
    head.fetch_gate.clear()  # hold the download until every attempt is preparing
    runs = [f"run-{i}" for i in range(8)]
    for run_id in runs:
        head.assign(run_id, ["python", "hello.py"], data, sha)
    agent = start_agent(head, agent_dir)
    try:
        await eventually("all eight to be preparing", lambda: len(head.updates(pb.RunUpdate.PREPARING)) == 8)
        head.fetch_gate.set()
        await eventually("all eight to exit", lambda: all(head.exited(r) for r in runs))
        ends = [head.exited(r) for r in runs]
        assert [(e.exit_code, e.reason) for e in ends if e is not None] == [(0, pb.REASON_UNSPECIFIED)] * 8
        assert len(head.fetches) == 1, head.fetches
    finally:
        terminate(agent)
    assert [p.name for p in (agent_dir / "snapshots").iterdir()] == [f"{sha}.zip"]


@pytest.mark.timeout(60)
async def test_a_cut_off_agent_stops_its_runs_and_says_why(head: FakeHead, agent_dir: Path) -> None:
    data, sha = zip_of({"nothing.txt": ""})
    head.assign("quiet", ["sleep", "600"], data, sha)
    agent = start_agent(head, agent_dir, heartbeat_interval_s=0.2, stop_runs_after_s=1.0)
    try:
        await eventually("the run to start", lambda: head.updates(pb.RunUpdate.RUNNING))
        head.silent = True  # the head hears the agent but says nothing any more
        exited = await eventually("the run to be stopped", lambda: head.exited("quiet"))
        assert exited.reason == pb.REASON_CUT_OFF
        assert "cut off from the head for 1." in exited.detail and exited.exit_code == 128 + 15
        assert agent.poll() is None
    finally:
        terminate(agent)


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


@pytest.mark.timeout(60)
async def test_a_stale_attempt_is_stopped_while_it_runs_and_while_it_uploads(head: FakeHead, agent_dir: Path) -> None:
    quiet, quiet_sha = zip_of({"nothing.txt": ""})
    writer, writer_sha = zip_of({"out.py": "open('outputs/result.txt', 'w').write('result')\n"})
    head.upload_gate.clear()  # the head takes the upload and never answers
    head.assign("running", ["sleep", "600"], quiet, quiet_sha)
    head.assign("uploading", ["python", "out.py"], writer, writer_sha)
    agent = start_agent(head, agent_dir)
    try:
        await eventually("one to run and one to upload",
                         lambda: head.updates(pb.RunUpdate.RUNNING) and ("uploading", 1) in head.uploading)
        for run_id in ("running", "uploading"):
            head.send(pb.HeadMessage(cancel=pb.CancelRun(run_id=run_id, attempt=1, reason=pb.REASON_STALE)))
        running = await eventually("the running attempt to stop", lambda: head.exited("running"))
        uploading = await eventually("the uploading attempt to stop", lambda: head.exited("uploading"))
    finally:
        terminate(agent)
    assert (running.reason, running.exit_code) == (pb.REASON_STALE, 128 + 15)
    assert (uploading.reason, uploading.exit_code) == (pb.REASON_STALE, 0)
    assert uploading.detail == "exit code 0 (stale); outputs not uploaded: stopped (stale)"
