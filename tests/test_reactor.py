"""The reaction shell on a real store: what it reads, and that it converges when its memory of a node fell behind."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.fakes import enroll
from scheduler.core.lifecycle import RunState, Trigger
from scheduler.core.nodes import NodeFacts, NodeState, NodeTrigger
from scheduler.core.plan import NodeMove, Plan
from scheduler.core.react import Hello, NodeDown, NodeSilent, Policy
from scheduler.followers import Followers
from scheduler.model import Capacity, NewRun, NodeRecord, RunSpec
from scheduler.reactor import Reactor
from scheduler.sessions import Sessions
from scheduler.store import Store

START = 1_700_000_000.0


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    ticks = itertools.count()
    opened = await Store.open(tmp_path / "head", synchronous="NORMAL", clock=lambda: START + next(ticks))
    yield opened
    await opened.close()


def reactor_on(store: Store, sessions: Sessions) -> Reactor:
    return Reactor(store=store, sessions=sessions, followers=Followers(), wake=lambda: None, policy=Policy(),
                   now=store.clock)


async def ready_node(store: Store, sessions: Sessions, reactor: Reactor) -> NodeRecord:
    joined = await enroll(store, node_id="n1", name="gpu-1", cluster="default",
                                   labels={}, capacity=Capacity(cpus=4.0, memory_bytes=2**33, disk_bytes=2**40))
    sessions.known(NodeFacts(joined.id, joined.name, joined.state, joined.schedule), heard_at=START)
    await reactor.handle(Hello(joined.id, frozenset()))
    return await store.get_node(joined.id)


def remembered(sessions: Sessions, node_id: str) -> NodeState:
    facts = sessions.facts(node_id)
    assert facts is not None
    return facts.state


async def test_a_node_whose_close_committed_unrecorded_still_goes_down_and_loses_its_runs(store: Store) -> None:
    sessions = Sessions()
    reactor = reactor_on(store, sessions)
    node = await ready_node(store, sessions, reactor)
    assert node.state is NodeState.READY
    run_id, _ = await store.create_run(NewRun(
        workspace="default", experiment="e", display_name="", tags={}, properties={}, snapshot_sha256="0" * 64,
        spec=RunSpec(argv=("python", "train.py")), idempotency_key="", parent_id=""))
    await store.transition(run_id, Trigger.ASSIGN, node_id=node.id)
    # The stream's close committed, but its caller was cancelled before the sessions recorded it (a Connect torn
    # down by gRPC): the database says Disconnected, the sessions still say Ready.
    closed = NodeMove(node.id, NodeTrigger.CLOSED, NodeState.READY, "its stream ended")
    await store.apply_plan(Plan(node_moves=(closed,)))
    assert remembered(sessions, node.id) is NodeState.READY

    await reactor.handle(NodeSilent(node.id))
    assert remembered(sessions, node.id) is NodeState.DISCONNECTED
    await reactor.handle(NodeDown(node.id))

    assert (await store.get_node(node.id)).state is NodeState.DOWN
    run = await store.get_run(run_id)
    assert (run.state, run.node_id) == (RunState.QUEUED, "")
