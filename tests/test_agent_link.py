"""The agent's link to the head against a fake head on 127.0.0.1:0: refusals, a full head, its own bugs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from runyard.clock import MonotonicClock
from agent.config import AgentConfig
from agent.errors import NodeNameTaken
from agent.link import HeadLink
from agent.outbox import Outbox
from agent.runmodel import Reason
from protos import runyard_pb2 as pb
from tests.fakehead import FakeHead
from tests.fakes import ManualClock, eventually

TAKEN = "node name node-1 is held by a live agent; stop it or pick another name"


@pytest.fixture
async def head() -> AsyncIterator[FakeHead]:
    found = FakeHead()
    await found.start()
    yield found
    await found.stop()


def config(head: FakeHead, tmp_path: Path, **settings: object) -> AgentConfig:
    values: dict[str, object] = {**head.agent_settings(), "name": "node-1",
                                 "data_dir": str(tmp_path), "heartbeat_interval_s": 1000.0,
                                 "reconnect_max_s": 0.1, "head_full_retry_max_s": 0.4}
    values.update(settings)
    return AgentConfig(**values)  # type: ignore[arg-type]


def report(run_id: str) -> pb.AgentMessage:
    return pb.AgentMessage(run_update=pb.RunUpdate(run_id=run_id, attempt=1, phase=pb.RunUpdate.RUNNING))


class Recorder:
    """The supervisor's side of the link: what it was asked to start and stop."""

    def __init__(self) -> None:
        self.assigned: list[pb.Assignment] = []
        self.stopped: list[tuple[str, int, Reason]] = []
        self.live: set[tuple[str, int]] = set()

    def link(self, cfg: AgentConfig, outbox: Outbox, clock: object) -> HeadLink:
        return HeadLink(config=cfg, outbox=outbox, capacity=pb.Capacity(cpus=1), clock=clock,  # type: ignore[arg-type]
                        live_attempts=lambda: self.live, on_assign=self.assigned.append,
                        on_stop=lambda r, a, why: self.stopped.append((r, a, why)))


@pytest.mark.timeout(30)
@pytest.mark.parametrize("refused", ["join", "connect"])
async def test_already_exists_means_the_node_name_is_taken(head: FakeHead, tmp_path: Path, refused: str) -> None:
    if refused == "join":
        head.join_abort = (grpc.StatusCode.ALREADY_EXISTS, TAKEN)
    else:
        head.connect_aborts = [(grpc.StatusCode.ALREADY_EXISTS, TAKEN)]
    link = Recorder().link(config(head, tmp_path), Outbox(100), MonotonicClock())
    try:
        with pytest.raises(NodeNameTaken) as caught:
            await link.run()
    finally:
        await link.close()
    assert str(caught.value) == TAKEN
    assert (head.joins, head.connects) == ((1, 0) if refused == "join" else (1, 1)), "no retry"


@pytest.mark.timeout(30)
async def test_a_full_head_keeps_every_report_and_warns_once(head: FakeHead, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="agent.link")
    full = (grpc.StatusCode.RESOURCE_EXHAUSTED, "the head's disk is full")
    head.connect_aborts = [full] * 5
    outbox = Outbox(100)
    for run_id in ("a", "b", "c"):
        outbox.put(report(run_id))
    clock = ManualClock()
    link = Recorder().link(config(head, tmp_path), outbox, clock)
    task = asyncio.create_task(link.run())
    delays = []
    try:
        for refused in range(1, 6):
            await eventually(f"connect {refused}", lambda: head.connects == refused)
            (delay,) = await eventually("the link to back off", lambda: [d for d in clock.pending() if d < 100])
            assert len(outbox) == 3, "no report is dropped while the head is full"
            delays.append(delay)
            clock.advance(delay)
        await eventually("the reports to be delivered", lambda: len(outbox) == 0)
        delivered = [m.run_update.run_id for m in head.messages if m.WhichOneof("body") == "run_update"]
        assert delivered == ["a", "b", "c"]
    finally:
        task.cancel()
        await link.close()
    assert all(0 < d <= 0.4 for d in delays), delays
    assert max(delays) > 0.1, f"the back-off may grow past reconnect_max_s while the head is full: {delays}"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [(r.getMessage(), getattr(r, "unacknowledged", None)) for r in warnings] == [
        ("head out of space; keeping the unacknowledged reports and retrying", 3)]
    resumed = [r.getMessage() for r in caplog.records if "resumed" in r.getMessage()]
    assert resumed == ["head has space again; delivery resumed"]


@pytest.mark.timeout(30)
async def test_reports_resent_after_a_reconnect_are_kept_until_the_head_acknowledges_them(
        head: FakeHead, tmp_path: Path) -> None:
    head.acking = False  # the head takes Hello, then commits nothing yet
    outbox = Outbox(100)
    for run_id in ("a", "b", "c"):
        outbox.put(report(run_id))
    link = Recorder().link(config(head, tmp_path), outbox, MonotonicClock())
    task = asyncio.create_task(link.run())
    try:
        await eventually("the reports to reach the head", lambda: len(head.messages) == 4)
        assert head.messages[0].HasField("hello")
        assert len(outbox) == 3, "the ack of Hello must not acknowledge the reports sent after it"
        head.send(pb.HeadMessage(ack=pb.Ack(msg_seq=head.messages[-1].msg_seq)))
        await eventually("the reports to be acknowledged", lambda: len(outbox) == 0)
    finally:
        task.cancel()
        await link.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("error", [RuntimeError("boom in a callback"),
                                   ExceptionGroup("several", [ValueError("boom in a group")])], ids=["plain", "group"])
async def test_an_unexpected_error_building_messages_is_logged_not_swallowed(
        head: FakeHead, tmp_path: Path, caplog: pytest.LogCaptureFixture, error: Exception) -> None:
    recorder = Recorder()
    calls = 0

    def live() -> set[tuple[str, int]]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise error
        return set()

    link = recorder.link(config(head, tmp_path), Outbox(100), MonotonicClock())
    link._live_attempts = live
    task = asyncio.create_task(link.run())
    try:
        await eventually("the link to connect after the error", link.connected.is_set)
    finally:
        task.cancel()
        await link.close()
    (logged,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert logged.getMessage() == "building messages for the head failed; reconnecting"
    assert logged.exc_info is not None and "boom in a" in "".join(logging.Formatter().formatException(logged.exc_info))
    assert logged.head == head.address  # type: ignore[attr-defined]


@pytest.mark.timeout(30)
async def test_a_failing_handler_is_logged_and_the_stream_goes_on(head: FakeHead, tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    recorder = Recorder()
    link = recorder.link(config(head, tmp_path), Outbox(100), MonotonicClock())

    def broken(assignment: pb.Assignment) -> None:
        raise KeyError("no such thing")

    link._on_assign = broken
    head.send(pb.HeadMessage(assign=pb.Assignment(run_id="r", attempt=1)))
    head.send(pb.HeadMessage(cancel=pb.CancelRun(run_id="r", attempt=1, reason=pb.REASON_SIBLING_FAILED)))
    head.send(pb.HeadMessage(cancel=pb.CancelRun(run_id="r", attempt=1, reason=pb.REASON_UNSCHEDULABLE)))   # a reason this agent does not stop for
    task = asyncio.create_task(link.run())
    try:
        await eventually("both cancels", lambda: len(recorder.stopped) == 2)
    finally:
        task.cancel()
        await link.close()
    assert recorder.stopped == [("r", 1, Reason.SIBLING_FAILED), ("r", 1, Reason.CANCELED_BY_USER)]
    failed = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [(r.getMessage(), getattr(r, "kind", None)) for r in failed] == [
        ("handling a message from the head failed", "assign")]
    assert head.connects == 1


@pytest.mark.timeout(30)
async def test_a_stale_stop_drops_what_is_queued_about_that_attempt(head: FakeHead, tmp_path: Path) -> None:
    head.acking = False         # the reports stay queued until the head says something about them
    outbox = Outbox(100)
    for run_id in ("old", "live"):
        outbox.put(pb.AgentMessage(run_update=pb.RunUpdate(run_id=run_id, attempt=1, phase=pb.RunUpdate.RUNNING)))
    recorder = Recorder()
    link = recorder.link(config(head, tmp_path), outbox, MonotonicClock())
    head.send(pb.HeadMessage(cancel=pb.CancelRun(run_id="old", attempt=1, reason=pb.REASON_STALE)))
    head.send(pb.HeadMessage(cancel=pb.CancelRun(run_id="live", attempt=1, reason=pb.REASON_CANCELED_BY_USER)))
    task = asyncio.create_task(link.run())
    try:
        await eventually("both stops", lambda: len(recorder.stopped) == 2)
    finally:
        task.cancel()
        await link.close()
    assert recorder.stopped == [("old", 1, Reason.STALE), ("live", 1, Reason.CANCELED_BY_USER)]
    assert outbox.attempts() == {("live", 1)}, "only the stale attempt's reports are dropped"
