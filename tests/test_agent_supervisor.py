"""The supervisor with real processes and a manual clock: cut-off, time limits, failures inside one attempt, and
a run's whole output shipped before its end."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.app import open_containment
from agent.containment import Containment
from agent.cutoff import watch_cut_off
from agent.outbox import Outbox
from agent.rundirs import close_run_root, open_run_root
from agent.runusers import RunUsers
from agent.supervisor import Supervisor
from protos import runyard_pb2 as pb
from tests.fakes import CountingFiles, ManualClock, eventually
from tests.test_agent_containment import MODES

CUT_OFF_S = 240.0


def snapshot(files: dict[str, str]) -> tuple[bytes, str]:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return buffer.getvalue(), hashlib.sha256(buffer.getvalue()).hexdigest()


@dataclass
class Node:
    supervisor: Supervisor
    outbox: Outbox
    clock: ManualClock
    files: CountingFiles
    sha: str

    def assign(self, run_id: str, argv: list[str], *, timeout_s: float = 0) -> None:
        self.supervisor.start(pb.Assignment(run_id=run_id, attempt=1, snapshot_sha256=self.sha,
                                            spec=pb.RunSpec(argv=argv, timeout_s=timeout_s)))

    def updates(self, run_id: str, phase: int) -> list[pb.RunUpdate]:
        return [m.run_update for m in self.outbox.after(0) if m.WhichOneof("body") == "run_update"
                and m.run_update.run_id == run_id and m.run_update.phase == phase]

    def exited(self, run_id: str) -> pb.RunUpdate | None:
        found = self.updates(run_id, pb.RunUpdate.EXITED)
        return found[0] if found else None

    def stdout(self, run_id: str) -> bytes:
        return b"\n".join(r.data for m in self.outbox.after(0) if m.WhichOneof("body") == "logs"
                           and m.logs.run_id == run_id for r in m.logs.records if r.stream == pb.STDOUT)

    def system_lines(self, run_id: str) -> list[str]:
        return [r.data.decode() for m in self.outbox.after(0) if m.WhichOneof("body") == "logs"
                and m.logs.run_id == run_id for r in m.logs.records if r.stream == pb.SYSTEM]


@pytest.fixture(params=MODES, ids=str)
async def containment(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Containment]:
    found = await open_containment(request.param, data_dir=tmp_path)
    yield found
    await found.close()


@pytest.fixture
async def node(tmp_path: Path, containment: Containment) -> AsyncIterator[Node]:
    data, sha = snapshot({"hello.py": "print('hello')\n"})
    files = CountingFiles(data)
    clock = ManualClock()
    outbox = Outbox(10_000)
    config = AgentConfig(data_dir=str(tmp_path), stop_grace_s=5.0, stop_runs_after_s=CUT_OFF_S)
    users = RunUsers.open(config.uid_range, allow_root_runs=False)
    root = open_run_root(tmp_path, "", users.sample())
    async with asyncio.TaskGroup() as tasks:
        supervisor = Supervisor(config=config, outbox=outbox, files=files, tasks=tasks, clock=clock,
                                containment=containment, users=users, root=root)
        yield Node(supervisor, outbox, clock, files, sha)
        stopping = asyncio.create_task(supervisor.stop_all())

        def stopped() -> bool:
            clock.advance(60.0)  # past any grace period armed meanwhile
            return stopping.done()

        await eventually("every attempt to stop", stopped)
    close_run_root(root)


@pytest.mark.timeout(30)
async def test_cut_off_is_driven_by_the_clock_to_the_millisecond(node: Node) -> None:
    node.assign("quiet", ["sleep", "600"])
    await eventually("the run to start", lambda: node.updates("quiet", pb.RunUpdate.RUNNING))
    heard = node.clock.now()

    def last_contact() -> float:
        return heard

    watch = asyncio.create_task(watch_cut_off(clock=node.clock, last_contact=last_contact, runs=node.supervisor,
                                              after_s=CUT_OFF_S))
    try:
        node.clock.advance(100.0)
        heard = node.clock.now()  # the head spoke at +100 s: the cut-off moves to +340 s
        node.clock.advance(140.0)
        await eventually("the watch to sleep again", lambda: node.clock.pending() == [pytest.approx(100.0)])
        node.clock.advance(99.999)
        await asyncio.sleep(0)
        assert node.supervisor.live() == {("quiet", 1)} and node.exited("quiet") is None
        node.clock.advance(0.001)
        exited = await eventually("the run to be stopped", lambda: node.exited("quiet"))
    finally:
        watch.cancel()
    assert exited.reason == pb.REASON_CUT_OFF
    assert exited.exit_code == 128 + 15
    assert exited.detail == "exit code 143 (cut_off): cut off from the head for 240.0s (stop_runs_after_s = 240)"
    assert "stopping the run: cut_off; SIGTERM, then SIGKILL after 5s" in node.system_lines("quiet")


@pytest.mark.timeout(30)
async def test_time_limit_and_grace_run_on_the_clock(node: Node, tmp_path: Path) -> None:
    node.assign("stubborn", ["sh", "-c", "trap 'echo ignoring TERM' TERM; echo ready; while :; do sleep 1; done"],
                timeout_s=60)
    await eventually("the run to be ready", lambda: b"ready" in node.stdout("stubborn"))
    node.clock.advance(59.999)
    await asyncio.sleep(0)
    assert node.exited("stubborn") is None
    node.clock.advance(0.001)
    await eventually("the run to shrug off SIGTERM", lambda: b"ignoring TERM" in node.stdout("stubborn"))
    assert "stopping the run: timeout; SIGTERM, then SIGKILL after 5s" in node.system_lines("stubborn")
    assert node.exited("stubborn") is None, "it runs on until the grace period ends on the clock"
    node.clock.advance(5.0)
    exited = await eventually("the run to be killed", lambda: node.exited("stubborn"))
    assert (exited.exit_code, exited.reason) == (128 + 9, pb.REASON_TIMEOUT)


@pytest.mark.timeout(30)
async def test_a_failing_step_is_that_attempts_agent_error_and_the_next_attempt_runs(node: Node) -> None:
    promised = node.files.data
    node.files.data = b"not what the head promised"
    node.assign("broken", ["python", "hello.py"])
    exited = await eventually("the attempt to fail", lambda: node.exited("broken"))
    assert (exited.exit_code, exited.reason) == (-1, pb.REASON_AGENT_ERROR)
    assert exited.detail.startswith("agent error: fetch: SnapshotMismatch: the snapshot the head sent has sha256")

    node.files.data = promised   # the same bytes: a zip made again in another second has another sha256
    node.assign("fine", ["python", "hello.py"])
    exited = await eventually("the next attempt to exit", lambda: node.exited("fine"))
    assert (exited.exit_code, exited.reason) == (0, pb.REASON_UNSPECIFIED)


@pytest.mark.timeout(30)
async def test_a_command_that_cannot_start_exits_127_with_a_line_saying_why(node: Node) -> None:
    node.assign("typo", ["pyhton", "hello.py"])
    exited = await eventually("the attempt to end", lambda: node.exited("typo"))
    assert (exited.exit_code, exited.reason) == (127, pb.REASON_UNSPECIFIED)
    assert node.system_lines("typo") == ["cannot start 'pyhton': No such file or directory"]
    assert not node.updates("typo", pb.RunUpdate.RUNNING)


@pytest.mark.timeout(30)
async def test_a_tampered_cached_snapshot_is_fetched_again_before_the_next_attempt(node: Node, tmp_path: Path) -> None:
    node.assign("first", ["python", "hello.py"])
    await eventually("the first attempt to exit", lambda: node.exited("first"))
    cache = tmp_path / "snapshots"
    cached = cache / f"{node.sha}.zip"
    assert (cache.stat().st_mode & 0o777, cached.stat().st_mode & 0o777) == (0o700, 0o600)
    cached.write_bytes(snapshot({"hello.py": "print('tampered')\n"})[0])   # a valid zip, not the snapshot
    node.assign("second", ["python", "hello.py"])
    exited = await eventually("the second attempt to exit", lambda: node.exited("second"))
    assert (exited.exit_code, node.stdout("second")) == (0, b"hello")
    assert [run for run, _, _ in node.files.fetches] == ["first", "second"], "the tampered copy was fetched again"


@pytest.mark.timeout(30)
async def test_a_run_executes_as_a_uid_of_its_own_with_an_environment_of_its_own(
        node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_ONLY_MARKER", "the agent's")
    node.assign("who", ["sh", "-c", 'id -u; id -G; echo "$HOME $TMPDIR $USER"; env | cut -d= -f1 | sort'])
    exited = await eventually("the run to exit", lambda: node.exited("who"))
    assert exited.exit_code == 0, node.system_lines("who")
    uid, groups, places, *names = node.stdout("who").decode().split("\n")
    if os.geteuid() == 0:
        assert 200000 <= int(uid) <= 265535 and groups == uid
        assert places.endswith(f" runyard-{uid}")
    home, tmp = places.split()[:2]
    assert home.endswith("/who-1/home") and tmp.endswith("/who-1/tmp")
    assert "AGENT_ONLY_MARKER" not in names
    assert set(names) - {"PWD", "SHLVL", "_", "LANG", "LC_ALL", "TZ"} == {
        "HOME", "TMPDIR", "USER", "LOGNAME", "PATH", "PYTHONPATH", "PYTHONUNBUFFERED", "CUDA_VISIBLE_DEVICES",
        "RUNYARD_RUN_ID", "RUNYARD_PARENT_RUN_ID", "RUNYARD_EXPERIMENT", "RUNYARD_WORKSPACE", "RUNYARD_ATTEMPT",
        "RUNYARD_OUTPUTS_DIR", "RUNYARD_RECORDS_FILE"}


@pytest.mark.timeout(120)
async def test_everything_a_run_wrote_is_in_the_outbox_before_its_end(node: Node) -> None:
    lines = 100_000
    node.assign("chatty", ["sh", "-c", f"seq 1 {lines}; echo to stderr >&2"])
    exited = await eventually("the run to exit", lambda: node.exited("chatty"), timeout_s=100)
    assert exited.exit_code == 0
    messages = [m for m in node.outbox.after(0) if m.WhichOneof("body") in ("logs", "run_update")
                and getattr(m, m.WhichOneof("body")).run_id == "chatty"]
    end = next(m.msg_seq for m in messages if m.WhichOneof("body") == "run_update"
               and m.run_update.phase == pb.RunUpdate.EXITED)
    stdout = [r for m in messages if m.WhichOneof("body") == "logs" for r in m.logs.records if r.stream == pb.STDOUT]
    assert all(m.msg_seq < end for m in messages if m.WhichOneof("body") == "logs"), "logs go before the end"
    assert [r.data for r in stdout] == [str(n).encode() for n in range(1, lines + 1)]
    assert [r.seq for r in stdout] == list(range(lines))
    assert b"to stderr" in [r.data for m in messages if m.WhichOneof("body") == "logs" for r in m.logs.records
                            if r.stream == pb.STDERR]
