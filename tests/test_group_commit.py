"""Group commit on a real SQLite database: writes that arrive together share one transaction, and still every
caller's result holds on its own: an acknowledged write is committed, a failing one loses nothing of the others,
and the in-memory queue the dispatcher reads follows only what was committed.

A "gate" job holds the writer thread while the jobs of a test are queued, so that they form one group whatever
the speed of the machine; nothing here waits on time.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from scheduler.dispatch import FULL_PASS_EVERY_S, PREFIX_PER_CLUSTER, Dispatcher
from tests.fakes import enroll, ManualClock
from scheduler.errors import ResourceExhausted
from scheduler.fairshare import Queued, queue_order
from scheduler.followers import Followers
from scheduler.group_commit import GroupCommit
from scheduler.core.lifecycle import InvalidTransition, RunState, Trigger
from scheduler.core.nodes import NodeFacts, NodeState, NodeTrigger, Schedule, ScheduleTrigger
from scheduler.core.plan import NodeMove, Plan
from runyard.envspec import EnvSpec
from scheduler.model import Capacity, NewRun, RunSpec
from scheduler.sessions import Session, Sessions
from scheduler.store import Store, _spec_json, _translated

ROOT = Path(__file__).resolve().parent.parent


def new_run(*, key: str = "", priority: int = 200, workspace: str = "default", **spec: Any) -> NewRun:
    return NewRun(workspace=workspace, experiment="grouped", display_name="", tags={}, properties={},
                  snapshot_sha256="0" * 64, spec=RunSpec(argv=("true",), **spec), idempotency_key=key, parent_id="",
                  priority=priority)


class Gate:
    """A write job that holds the writer thread until `open()`: what is queued meanwhile is one group."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self._open = threading.Event()

    def __call__(self, conn: sqlite3.Connection, effects: list[Callable[[], None]]) -> None:
        self.entered.set()
        if not self._open.wait(timeout=60):
            raise TimeoutError("the gate was never opened")

    def open(self) -> None:
        self._open.set()


async def hold(write: Callable[[Any], Any]) -> tuple[Gate, asyncio.Future[Any]]:
    """Queue a gate and wait until the writer runs it: its group is formed, the next jobs wait for the next one."""
    gate = Gate()
    held = asyncio.ensure_future(write(gate))
    assert await asyncio.to_thread(gate.entered.wait, 60), "the writer never ran the gate"
    return gate, held


@pytest.fixture
async def writer(tmp_path: Path) -> AsyncIterator[GroupCommit]:
    path = tmp_path / "t.db"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
    group = GroupCommit(path, "FULL", asyncio.get_running_loop(), translate=_translated)
    await group.start()
    yield group
    await group.close()


def insert(k: int, then: Callable[[sqlite3.Connection], None] | None = None) -> Callable[..., int]:
    def work(conn: sqlite3.Connection, effects: list[Callable[[], None]]) -> int:
        conn.execute("INSERT INTO t (k, v) VALUES (?, ?)", (k, "x"))
        if then is not None:
            then(conn)
        return k
    return work


def rows(path: Path) -> list[int]:
    with sqlite3.connect(path) as conn:
        return [k for (k,) in conn.execute("SELECT k FROM t ORDER BY k")]


def fail(conn: sqlite3.Connection) -> None:
    raise ValueError("this caller's statements are bad")


async def test_a_failing_job_rolls_back_alone_and_the_others_of_its_group_commit(writer: GroupCommit,
                                                                                 tmp_path: Path) -> None:
    gate, held = await hold(writer.write)
    groups = writer.groups
    calls = [asyncio.ensure_future(writer.write(insert(k, fail if k == 2 else None))) for k in (1, 2, 3)]
    await asyncio.sleep(0)
    gate.open()
    await held
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert results[0] == 1 and results[2] == 3
    assert isinstance(results[1], ValueError)
    assert writer.groups == groups + 2, "the gate, then the three jobs in one transaction"
    assert rows(tmp_path / "t.db") == [1, 3]


async def test_a_transaction_lost_mid_group_is_run_again_for_the_others(writer: GroupCommit, tmp_path: Path) -> None:
    """SQLite may abandon the whole transaction on an error (a full disk, an I/O error): the jobs that had run
    before are run again; the failing one gets its error."""
    def lose_everything(conn: sqlite3.Connection) -> None:
        conn.execute("ROLLBACK")
        raise sqlite3.OperationalError("disk I/O error")

    gate, held = await hold(writer.write)
    calls = [asyncio.ensure_future(writer.write(insert(k, lose_everything if k == 2 else None))) for k in (1, 2, 3)]
    await asyncio.sleep(0)
    gate.open()
    await held
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert results[0] == 1 and results[2] == 3
    assert isinstance(results[1], sqlite3.OperationalError)
    assert rows(tmp_path / "t.db") == [1, 3]


async def test_a_full_disk_fails_only_the_job_that_hit_it(writer: GroupCommit, tmp_path: Path) -> None:
    def overflow(conn: sqlite3.Connection) -> None:
        (pages,) = conn.execute("PRAGMA page_count").fetchone()
        conn.execute(f"PRAGMA max_page_count = {pages}")
        try:
            conn.execute("INSERT INTO t (k, v) VALUES (100, ?)", ("y" * 1_000_000,))
        finally:
            conn.execute("PRAGMA max_page_count = 1073741823")

    gate, held = await hold(writer.write)
    calls = [asyncio.ensure_future(writer.write(insert(k, overflow if k == 2 else None))) for k in (1, 2, 3)]
    await asyncio.sleep(0)
    gate.open()
    await held
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert results[0] == 1 and results[2] == 3
    assert isinstance(results[1], ResourceExhausted) and "disk is full" in str(results[1])
    assert rows(tmp_path / "t.db") == [1, 3]


async def test_effects_of_a_failed_job_are_not_applied(writer: GroupCommit) -> None:
    applied: list[int] = []

    def job(k: int, bad: bool) -> Callable[..., None]:
        def work(conn: sqlite3.Connection, effects: list[Callable[[], None]]) -> None:
            conn.execute("INSERT INTO t (k, v) VALUES (?, 'x')", (k,))
            effects.append(lambda: applied.append(k))
            if bad:
                raise ValueError("bad")
        return work

    gate, held = await hold(writer.write)
    calls = [asyncio.ensure_future(writer.write(job(k, k == 2))) for k in (1, 2, 3)]
    await asyncio.sleep(0)
    gate.open()
    await held
    await asyncio.gather(*calls, return_exceptions=True)
    assert applied == [1, 3]


# --- the store -------------------------------------------------------------------------------------------------------


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(tmp_path / "head", synchronous="FULL")
    yield opened
    await opened.close()


async def test_the_idempotency_key_dedupes_within_one_group(store: Store) -> None:
    gate, held = await hold(store._write)
    calls = [asyncio.ensure_future(store.create_run(new_run(key="same"))) for _ in range(5)]
    others = [asyncio.ensure_future(store.create_run(new_run(key=f"other-{i}"))) for i in range(3)]
    await asyncio.sleep(0)
    gate.open()
    await held
    results = await asyncio.gather(*calls)
    assert len({run_id for run_id, _ in results}) == 1
    assert sorted(existed for _, existed in results) == [False, True, True, True, True]
    assert len({run_id for run_id, _ in await asyncio.gather(*others)}) == 3
    assert len(await store.list_runs("default")) == 4
    assert store.queue_size() == 4


async def test_a_refused_transition_in_a_group_leaves_the_others_and_the_queue_right(store: Store, tmp_path: Path) -> None:
    a, _ = await store.create_run(new_run())
    b, _ = await store.create_run(new_run())
    gate, held = await hold(store._write)
    assign = asyncio.ensure_future(store.transition(a, Trigger.ASSIGN, node_id="n1", detail="placed"))
    refused = asyncio.ensure_future(store.transition(b, Trigger.START, detail="not assigned yet"))
    cancel = asyncio.ensure_future(store.transition(b, Trigger.CANCEL, reason="canceled_by_user"))
    await asyncio.sleep(0)
    gate.open()
    await held
    assert (await assign).state is RunState.PREPARING
    with pytest.raises(InvalidTransition):
        await refused
    assert (await cancel).state is RunState.CANCELED
    assert await store.queued() == []
    assert [(e.from_state, e.to_state) for e in await store.run_events(b)] == [("", "Queued"), ("Queued", "Canceled")]


async def test_the_queue_in_memory_equals_the_queue_on_disk(tmp_path: Path) -> None:
    data = tmp_path / "head"
    store = await Store.open(data, synchronous="NORMAL")
    try:
        ids = [run_id for run_id, _ in await asyncio.gather(*(store.create_run(new_run(priority=100 + i % 3 * 100))
                                                               for i in range(30)))]
        moves = []
        for i, run_id in enumerate(ids):
            if i % 3 == 0:
                moves.append(store.transition(run_id, Trigger.ASSIGN, node_id="n1"))
            elif i % 3 == 1:
                moves.append(store.transition(run_id, Trigger.CANCEL, reason="canceled_by_user"))
            moves.append(store.transition(run_id, Trigger.COMPLETE, attempt=1))    # refused while queued
        await asyncio.gather(*moves, return_exceptions=True)
        for run_id in ids[::3][:4]:
            await store.transition(run_id, Trigger.REQUEUE, attempt=1, node_id=None, detail="node lost")
        in_memory = sorted(await store.queued())
    finally:
        await store.close()
    reopened = await Store.open(data, synchronous="NORMAL")
    try:
        assert sorted(await reopened.queued()) == in_memory
        assert len(in_memory) == 10 + 4
    finally:
        await reopened.close()


async def test_a_caller_cancelled_while_queued_still_has_its_run_committed(store: Store) -> None:
    gate, held = await hold(store._write)
    task = asyncio.ensure_future(store.create_run(new_run(key="gone")))
    await asyncio.sleep(0)
    task.cancel()
    gate.open()
    await held
    with pytest.raises(asyncio.CancelledError):
        await task
    again, existed = await store.create_run(new_run(key="gone"))  # the client's retry with the same key
    assert existed and store.queue_size() == 1
    assert [r.id for r in await store.list_runs("default")] == [again]


async def test_node_writes_are_seen_by_the_next_list_of_nodes(store: Store) -> None:
    capacity = Capacity(cpus=4.0, memory_bytes=2**30, disk_bytes=0)
    assert await store.list_nodes() == []
    node_id = (await enroll(store, node_id="n1", name="one", cluster="c", labels={},
                                     capacity=capacity)).id
    assert [(n.id, n.state) for n in await store.list_nodes()] == [(node_id, NodeState.JOINING)]
    await store.apply_plan(Plan(node_moves=(NodeMove(node_id, NodeTrigger.HELLO, NodeState.JOINING),)))
    assert [n.state for n in await store.list_nodes()] == [NodeState.READY]
    await store.set_node_schedule("one", ScheduleTrigger.CORDON, "by an admin")
    assert [n.schedule for n in await store.list_nodes()] == [Schedule.CORDONED]


def test_the_stored_spec_is_the_spec_as_its_own_json() -> None:
    spec = RunSpec(argv=("python", "train.py"), environment={"A": "1"}, cpus=2.5, memory_bytes=3, gpus=1,
                   instance_count=2, timeout_s=9.0, compute="gpu", gpu_model="A100", gpu_memory_bytes=7,
                   node_labels={"zone": "a"}, max_retries=2,
                   env=EnvSpec(python="3.11", pip=("numpy>=2",), conda=("libgomp",)), env_hash="ab" * 32)
    assert _spec_json(spec) == spec.to_json()
    assert RunSpec.from_json(_spec_json(spec)) == spec


# --- acknowledged means durable -------------------------------------------------------------------------------------

_SUBMITTER = """
import asyncio, os, signal, sys
sys.path.insert(0, {root!r})
from scheduler.store import Store
from scheduler.model import NewRun, RunSpec

async def main():
    store = await Store.open(__import__("pathlib").Path({data!r}), synchronous="FULL")
    async def one(i):
        run_id, _ = await store.create_run(NewRun("default", "durable", "", {{}}, {{}}, "0" * 64,
                                                  RunSpec(argv=("true",)), f"key-{{i}}", ""))
        os.write(1, (run_id + "\\n").encode())    # acknowledged: written before anything else happens
    pending = [asyncio.ensure_future(one(i)) for i in range(400)]
    done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    while len(done) < 150:
        more, _ = await asyncio.wait([p for p in pending if not p.done()], return_when=asyncio.FIRST_COMPLETED)
        done |= more
    os.kill(os.getpid(), signal.SIGKILL)     # mid-burst: more writes queued and in flight

asyncio.run(main())
"""


def test_every_acknowledged_run_survives_a_kill_in_the_middle_of_a_burst(tmp_path: Path) -> None:
    data = tmp_path / "head"
    proc = subprocess.run([sys.executable, "-c", _SUBMITTER.format(root=str(ROOT), data=str(data))],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    acknowledged = proc.stdout.split()
    assert len(acknowledged) >= 150

    async def stored() -> set[str]:
        store = await Store.open(data, synchronous="FULL")
        try:
            return {r.id for r in await store.list_runs("default", experiment="durable", limit=1000)}
        finally:
            await store.close()

    found = asyncio.run(stored())
    assert set(acknowledged) <= found
    with sqlite3.connect(data / "runyard.db") as conn:
        events = {run_id for (run_id,) in conn.execute("SELECT run_id FROM run_events WHERE event = 'submit'")}
    assert found <= events, "a run and its first event are committed together"


# --- the dispatcher's view of the queue ---------------------------------------------------------------------------


def dispatcher(store: Store, *nodes: Session, clock: ManualClock | None = None) -> Dispatcher:
    sessions = Sessions()
    for node in nodes:
        sessions.attach(node)
        sessions.known(NodeFacts(node.node_id, node.name, NodeState.READY, Schedule.ACTIVE), heard_at=store.clock())
    return Dispatcher(store=store, sessions=sessions, followers=Followers(), clock=clock)


async def test_the_kept_queue_order_is_the_order_of_the_whole_queue(store: Store) -> None:
    """Runs arrive in and out of order (priorities, workspaces), leave and come back: the order the dispatcher
    keeps is always `queue_order` of the whole queue."""
    d = dispatcher(store)

    async def expected() -> list[str]:
        rows = await store.queued()
        return [q.run_id for q in queue_order([Queued(r.id, r.workspace, r.compute, r.priority, r.created_at)
                                               for r in rows], await d.usage())]

    ids: list[str] = []
    assigned: list[str] = []
    canceled: set[str] = set()
    for step in range(60):
        priority = 300 if step % 7 == 0 else 100 if step % 5 == 0 else 200
        ids.append((await store.create_run(new_run(priority=priority, workspace=f"w{step % 3}")))[0])
        if step % 4 == 3 and ids[step - 2] not in canceled:
            await store.transition(ids[step - 2], Trigger.ASSIGN, node_id="n1")
            assigned.append(ids[step - 2])
        if step % 9 == 8:   # back to the queue, keeping its created_at: it goes in ahead of later runs
            await store.transition(assigned.pop(0), Trigger.REQUEUE, attempt=1, node_id=None)
        if step % 11 == 10:
            await store.transition(ids[step], Trigger.CANCEL, reason="canceled_by_user")
            canceled.add(ids[step])
        assert [r.id for r in await d.ordered_queue()] == await expected()
    assert len(await d.ordered_queue()) > 30


async def test_a_run_beyond_the_quick_pass_is_placed_by_the_full_pass_the_loop_owes(store: Store) -> None:
    """A quick pass looks at the head of each cluster's queue only; a run further back that could start now is
    placed by the full pass the loop makes by itself, with no further wake-up."""
    node = Session("n1", "node-1", "a", Capacity(cpus=2.0, memory_bytes=2**32, disk_bytes=0))
    clock = ManualClock(start_s=1_700_000_000.0)
    d = dispatcher(store, node, clock=clock)
    for _ in range(PREFIX_PER_CLUSTER + 5):
        await store.create_run(new_run(cpus=4.0, compute="a"))    # no node of cluster a can ever hold these
    await d.pass_once(full=True)
    small, _ = await store.create_run(new_run(cpus=1.0, compute="a"))
    assert await d.pass_once() == 0, "a quick pass does not reach it"
    loop = asyncio.ensure_future(d.run())
    try:
        await asyncio.sleep(0.05)
        assert (await store.get_run(small)).state is RunState.QUEUED, "nothing happens before the full pass is due"
        clock.advance(FULL_PASS_EVERY_S)        # on the dispatcher's own clock: no real second goes by
        async with asyncio.timeout(30):
            while (await store.get_run(small)).state is not RunState.PREPARING:
                await asyncio.sleep(0.01)
    finally:
        loop.cancel()
        with pytest.raises(asyncio.CancelledError):
            await loop
    placed = await store.get_run(small)
    assert (placed.node_id, placed.pending_reason) == ("n1", "")
    assert all(r.pending_reason.startswith("no node in cluster a can hold") for r in await store.runs_in({RunState.QUEUED}))
