"""Node lifecycle on a manual clock, with the real store and reactor: silent nodes go Disconnected then Down
once, their attempts are lost once each, and the reaper's own loop runs on injected time (milliseconds here for
what takes minutes on a cluster)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from scheduler.core.heartbeats import Timers
from scheduler.core.lifecycle import Reason, RunState, Trigger
from scheduler.core.nodes import NodeFacts, NodeState
from scheduler.core.react import Hello, Policy
from scheduler.followers import Followers
from scheduler.model import Capacity, NewRun, RunSpec
from scheduler.reactor import Reactor
from scheduler.reaper import Reaper
from scheduler.sessions import Session, Sessions
from scheduler.store import Store
from tests.fakes import enroll, ManualClock

TIMERS = Timers(disconnected_after_s=20.0, down_after_s=300.0)
CAPACITY = Capacity(cpus=4.0, memory_bytes=2**32, disk_bytes=0)


class Head:
    """The head's lifecycle parts on a manual clock."""

    def __init__(self, store: Store, clock: ManualClock) -> None:
        self.store, self.clock = store, clock
        self.sessions = Sessions()
        self.wakes = 0
        self.reactor = Reactor(store=store, sessions=self.sessions, followers=Followers(), wake=self._woken,
                               policy=Policy(default_retries=1), now=clock.now)
        self.reaper = Reaper(sessions=self.sessions, reactor=self.reactor, timers=TIMERS, clock=clock)

    def _woken(self) -> None:
        self.wakes += 1

    async def node(self, name: str) -> str:
        """A node that joined and said Hello now."""
        node = await enroll(self.store, node_id=name, name=name, cluster="default", labels={},
                                          capacity=CAPACITY)
        self.sessions.known(NodeFacts(node.id, node.name, node.state, node.schedule), heard_at=self.clock.now())
        self.sessions.attach(Session(node.id, node.name, "default", CAPACITY))
        await self.reactor.handle(Hello(node.id, frozenset()))
        return node.id

    async def running_on(self, node_id: str, **spec: object) -> str:
        run_id, _ = await self.store.create_run(NewRun("default", "exp", "", {}, {}, "0" * 64,
                                                       RunSpec(argv=("true",), **spec), "", ""))  # type: ignore[arg-type]
        await self.store.transition(run_id, Trigger.ASSIGN, node_id=node_id)
        await self.store.transition(run_id, Trigger.START, attempt=1)
        return run_id

    async def state(self, node_id: str) -> NodeState:
        return (await self.store.get_node(node_id)).state


@pytest.fixture
async def head(tmp_path: Path) -> AsyncIterator[Head]:
    clock = ManualClock(start_s=1_700_000_000.0)
    store = await Store.open(tmp_path / "head", synchronous="NORMAL", clock=clock.now)
    yield Head(store, clock)
    await store.close()


async def test_a_silent_node_goes_disconnected_then_down_once_and_its_run_is_requeued_once(head: Head) -> None:
    node = await head.node("n1")
    run_id = await head.running_on(node)
    assert await head.reaper.tick() == frozenset()
    head.clock.advance(TIMERS.disconnected_after_s)
    assert await head.reaper.tick() == frozenset()
    assert await head.state(node) is NodeState.DISCONNECTED
    assert (await head.store.get_run(run_id)).state is RunState.RUNNING, "Disconnected leaves its runs alone"
    assert not head.sessions.takes_new_runs(node, head.clock.now(), TIMERS.disconnected_after_s)

    head.clock.advance(TIMERS.down_after_s)
    assert await head.reaper.tick() == {node}
    assert await head.state(node) is NodeState.DOWN
    run = await head.store.get_run(run_id)
    assert (run.state, run.attempt, run.node_id) == (RunState.QUEUED, 1, "")
    for _ in range(3):   # later ticks: still Down, nothing lost again
        head.clock.advance(5.0)
        assert await head.reaper.tick() == frozenset()
    events = [e.event for e in await head.store.run_events(run_id)]
    assert events.count("requeue") == 1
    assert [e.to_state for e in await head.store.node_events(node)][-2:] == ["Disconnected", "Down"]


async def test_a_run_out_of_retries_fails_node_lost(head: Head) -> None:
    node = await head.node("n1")
    run_id = await head.running_on(node, max_retries=0)
    head.clock.advance(TIMERS.down_after_s)
    await head.reaper.tick()
    run = await head.store.get_run(run_id)
    assert (run.state, run.reason) == (RunState.FAILED, Reason.NODE_LOST)


async def test_a_node_heard_again_before_down_is_ready_and_keeps_its_run(head: Head) -> None:
    from scheduler.core.react import NodeHeard

    node = await head.node("n1")
    run_id = await head.running_on(node)
    head.clock.advance(TIMERS.disconnected_after_s)
    await head.reaper.tick()
    head.sessions.heard(node, head.clock.now())
    await head.reactor.handle(NodeHeard(node))
    assert await head.state(node) is NodeState.READY
    head.clock.advance(TIMERS.down_after_s - 1)
    await head.reaper.tick()
    assert (await head.store.get_run(run_id)).state is RunState.RUNNING


async def test_when_most_nodes_go_silent_at_once_the_head_suspects_itself(head: Head) -> None:
    nodes = [await head.node(f"n{i}") for i in range(3)]
    runs = [await head.running_on(n) for n in nodes]
    head.clock.advance(TIMERS.down_after_s)
    assert await head.reaper.tick() == frozenset()
    assert [(await head.store.get_run(r)).state for r in runs] == [RunState.RUNNING] * 3


async def test_the_reaper_loop_runs_on_the_injected_clock(head: Head) -> None:
    node = await head.node("n1")
    await head.running_on(node)
    loop = asyncio.ensure_future(head.reaper.run(tick_s=1.0))
    try:
        seconds = 0
        async with asyncio.timeout(10):     # 300 simulated seconds; each tick is a real store round trip
            while await head.state(node) is not NodeState.DOWN:
                head.clock.advance(1.0)
                await asyncio.sleep(0)      # the reaper wakes and ticks
                seconds += 1
        assert TIMERS.down_after_s <= seconds <= TIMERS.down_after_s + 50
    finally:
        loop.cancel()
        with pytest.raises(asyncio.CancelledError):
            await loop
