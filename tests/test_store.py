"""The head's store on a real SQLite database: runs, transitions, logs, metrics, nodes, and opening the data dir."""

from __future__ import annotations

import dataclasses

import asyncio
import contextlib
import itertools
import math
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tests.fakes import enroll
from scheduler import db
from scheduler.db import MARKER, open_database
from scheduler.errors import NotFound, StartupRefused, Unauthenticated
from scheduler.core.lifecycle import DesiredState, InvalidTransition, Reason, RunState, Trigger
from scheduler.core.nodes import InvalidNodeTransition, Schedule, ScheduleTrigger
from scheduler.core.plan import NodeCount, Plan, StopRun
from scheduler.model import Capacity, Gpu, NewRun, RunSpec
from scheduler.store import Store
from scheduler.store.credentials import KeyMismatch


def manual_clock(start: float = 1_700_000_000.0) -> Callable[[], float]:
    """A clock that moves one second on every reading, so timestamps and ids are ordered."""
    ticks = itertools.count()
    return lambda: start + next(ticks)


async def open_store(data_dir: Path) -> Store:
    return await Store.open(data_dir, synchronous="NORMAL", clock=manual_clock())


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await open_store(tmp_path / "head")
    yield opened
    await opened.close()


def new_run(workspace: str = "default", *, key: str = "", tags: dict[str, str] | None = None, **spec: object) -> NewRun:
    return NewRun(
        workspace=workspace,
        experiment="mnist",
        display_name="",
        tags={"team": "vision"} if tags is None else tags,
        properties={"git": "abc123", "note": "first try"},
        snapshot_sha256="0" * 64,
        spec=RunSpec(argv=("python", "train.py", "--lr", "0.1"), **spec),  # type: ignore[arg-type]
        idempotency_key=key,
        parent_id="",
    )


# --- runs -------------------------------------------------------------------------------------------------------


async def test_created_run_reads_back_as_submitted(store: Store) -> None:
    submitted = new_run(
        environment={"OMP_NUM_THREADS": "4"}, cpus=2.5, memory_bytes=3 * 1024**3, gpus=1, timeout_s=90.0, compute="gpu"
    )
    run_id, existed = await store.create_run(submitted)
    assert not existed
    run = await store.get_run(run_id)
    assert run.id == run_id and run.workspace == "default" and run.experiment == "mnist"
    assert run.spec == submitted.spec
    assert run.tags == {"team": "vision"}
    assert run.properties == {"git": "abc123", "note": "first try"}
    assert run.snapshot_sha256 == "0" * 64
    assert run.state is RunState.QUEUED and run.attempt == 0 and run.node_id == "" and run.gpu_indices == ()
    assert run.display_name == "python train.py --lr 0.1"
    events = await store.run_events(run_id)
    assert [(e.from_state, e.to_state, e.event) for e in events] == [("", "Queued", "submit")]


async def test_idempotency_key_returns_the_same_run(store: Store) -> None:
    first, existed_first = await store.create_run(new_run(key="retry-1"))
    again, existed_again = await store.create_run(new_run(key="retry-1"))
    other, _ = await store.create_run(new_run(key="retry-2"))
    assert (again, existed_again, existed_first) == (first, True, False)
    assert other != first
    assert len(await store.list_runs("default")) == 2


async def test_idempotency_key_is_per_workspace(store: Store) -> None:
    in_a, _ = await store.create_run(new_run("A", key="k"))
    in_b, existed = await store.create_run(new_run("B", key="k"))
    assert in_a != in_b and not existed


async def test_runs_without_a_key_are_never_merged(store: Store) -> None:
    first, _ = await store.create_run(new_run())
    second, existed = await store.create_run(new_run())
    assert first != second and not existed


async def test_another_workspace_cannot_see_a_run(store: Store) -> None:
    run_id, _ = await store.create_run(new_run("A"))
    assert (await store.get_run(run_id, "A")).id == run_id
    with pytest.raises(NotFound):
        await store.get_run(run_id, "B")
    assert await store.list_runs("B") == []
    with pytest.raises(NotFound):
        await store.get_run("no-such-run")


# --- transitions ------------------------------------------------------------------------------------------------


async def test_transition_applies_the_table_and_appends_an_event(store: Store) -> None:
    run_id, _ = await store.create_run(new_run(gpus=2))
    assigned = await store.transition(
        run_id, Trigger.ASSIGN, node_id="node-1", gpu_indices=(2, 3), pending_reason="", detail="placed on gpu-1"
    )
    assert assigned.state is RunState.PREPARING
    assert assigned.attempt == 1 and assigned.node_id == "node-1" and assigned.gpu_indices == (2, 3)
    assert (await store.get_run(run_id)) == assigned

    started = await store.transition(run_id, Trigger.START, attempt=1, started_at=5.0, detail="pid 42")
    assert started.state is RunState.RUNNING and started.attempt == 1 and started.started_at == 5.0

    requeued = await store.transition(run_id, Trigger.REQUEUE, attempt=1, detail="node lost")
    again = await store.transition(run_id, Trigger.ASSIGN, node_id="node-2", gpu_indices=(0, 1))
    assert requeued.state is RunState.QUEUED and again.attempt == 2 and again.node_id == "node-2"

    events = await store.run_events(run_id)
    assert [(e.from_state, e.to_state, e.event, e.detail) for e in events] == [
        ("", "Queued", "submit", ""),
        ("Queued", "Preparing", "assign", "placed on gpu-1"),
        ("Preparing", "Running", "start", "pid 42"),
        ("Running", "Queued", "requeue", "node lost"),
        ("Queued", "Preparing", "assign", ""),
    ]
    assert [e.at for e in events] == sorted(e.at for e in events)


async def test_forbidden_transition_changes_nothing(store: Store) -> None:
    run_id, _ = await store.create_run(new_run())
    before = await store.get_run(run_id)
    events_before = await store.run_events(run_id)
    for trigger in (Trigger.START, Trigger.COMPLETE, Trigger.FINALIZE, Trigger.REQUEUE):
        with pytest.raises(InvalidTransition):
            await store.transition(run_id, trigger, exit_code=0, detail="should not be written")
    assert await store.get_run(run_id) == before
    assert await store.run_events(run_id) == events_before


async def test_terminal_run_refuses_every_trigger(store: Store) -> None:
    run_id, _ = await store.create_run(new_run())
    await store.transition(run_id, Trigger.CANCEL, reason="canceled_by_user")
    ended = await store.get_run(run_id)
    assert ended.state is RunState.CANCELED and ended.reason == "canceled_by_user"
    for trigger in Trigger:
        if trigger is Trigger.SUBMIT:
            continue
        with pytest.raises(InvalidTransition):
            await store.transition(run_id, trigger)
    assert await store.get_run(run_id) == ended
    assert len(await store.run_events(run_id)) == 2


async def test_stale_attempt_is_refused(store: Store) -> None:
    run_id, _ = await store.create_run(new_run())
    await store.transition(run_id, Trigger.ASSIGN, node_id="node-1")
    await store.transition(run_id, Trigger.REQUEUE, attempt=1)
    await store.transition(run_id, Trigger.ASSIGN, node_id="node-2")
    before = await store.get_run(run_id)
    events_before = await store.run_events(run_id)
    # A late report of attempt 1 must not move attempt 2.
    with pytest.raises(InvalidTransition):
        await store.transition(run_id, Trigger.START, attempt=1)
    with pytest.raises(InvalidTransition):
        await store.transition(run_id, Trigger.FAIL, attempt=1, reason="exit_code", exit_code=1)
    assert await store.get_run(run_id) == before
    assert await store.run_events(run_id) == events_before
    assert (await store.transition(run_id, Trigger.START, attempt=2)).state is RunState.RUNNING


async def test_transition_of_unknown_run_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.transition("no-such-run", Trigger.CANCEL)


async def test_transition_refuses_columns_outside_the_settable_set(store: Store) -> None:
    run_id, _ = await store.create_run(new_run())
    with pytest.raises(ValueError, match="workspace"):
        await store.transition(run_id, Trigger.CANCEL, workspace="B")
    assert (await store.get_run(run_id)).state is RunState.QUEUED


# --- logs -------------------------------------------------------------------------------------------------------


LogTuple = tuple[int, int, int, float, int, bytes]


def log_records(count: int, *, start: int = 0, rank: int = 0, stream: int = 1) -> list[LogTuple]:
    return [(rank, stream, seq, 100.0 + seq, 0, f"line {seq}".encode()) for seq in range(start, start + count)]


async def test_resent_logs_are_stored_once(store: Store) -> None:
    run_id, _ = await store.create_run(new_run())
    batch = log_records(5)
    assert await store.append_logs(run_id, 1, batch) == 5
    assert await store.append_logs(run_id, 1, batch) == 0
    assert await store.append_logs(run_id, 1, log_records(4, start=3)) == 2  # seq 3, 4 known; 5, 6 new
    rows = await store.read_logs(run_id)
    assert [r.data for r in rows] == [f"line {i}".encode() for i in range(7)]


async def test_same_seq_in_another_attempt_stream_or_rank_is_kept(store: Store) -> None:
    run_id, _ = await store.create_run(new_run())
    await store.append_logs(run_id, 1, log_records(1))
    await store.append_logs(run_id, 2, log_records(1))
    await store.append_logs(run_id, 1, log_records(1, stream=2))
    await store.append_logs(run_id, 1, log_records(1, rank=1))
    assert len(await store.read_logs(run_id)) == 4
    assert [r.rank for r in await store.read_logs(run_id, rank=1)] == [1]


async def test_log_bytes_round_trip_exactly(store: Store) -> None:
    run_id, _ = await store.create_run(new_run())
    raw = b"\x1b[31mred\x1b[0m \xff\xfe not utf-8 \x00"
    await store.append_logs(run_id, 1, [(0, 1, 0, 1.0, 1, raw)])
    (row,) = await store.read_logs(run_id)
    assert (row.data, row.flags, row.attempt, row.seq) == (raw, 1, 1, 0)


async def test_read_logs_pages_with_after_id(store: Store) -> None:
    run_id, _ = await store.create_run(new_run())
    other, _ = await store.create_run(new_run())
    await store.append_logs(run_id, 1, log_records(10))
    await store.append_logs(other, 1, log_records(3))
    seen: list[bytes] = []
    after = 0
    while page := await store.read_logs(run_id, after_id=after, limit=4):
        assert len(page) <= 4
        seen.extend(r.data for r in page)
        after = page[-1].id
    assert seen == [f"line {i}".encode() for i in range(10)]


async def test_tail_start_gives_the_last_lines(store: Store) -> None:
    run_id, _ = await store.create_run(new_run())
    await store.append_logs(run_id, 1, log_records(10))
    last3 = await store.read_logs(run_id, after_id=await store.tail_start(run_id, 3))
    assert [r.data for r in last3] == [b"line 7", b"line 8", b"line 9"]
    everything = await store.read_logs(run_id, after_id=await store.tail_start(run_id, 50))
    assert len(everything) == 10


async def test_logs_stored_in_chunks_read_back_record_by_record(store: Store) -> None:
    """Records arrive in batches of runs of several ranks and streams, some resent, some overlapping what is stored;
    every record is stored once and reads back exactly, in order, paged and tailed at any place in a chunk."""
    run_id, _ = await store.create_run(new_run())
    sent: dict[tuple[int, int], int] = {}
    expected: list[tuple[int, int, int, bytes, int]] = []
    for batch in range(30):
        records = []
        for rank, stream in ((0, 1), (1, 1), (0, 2)):
            start = sent.get((rank, stream), 0)
            count = 1 + (batch * 7 + rank) % 11
            records += [(rank, stream, seq, float(seq), seq % 3 == 0, b"r%d s%d line %d" % (rank, stream, seq))
                        for seq in range(start, start + count)]
            expected += [(rank, stream, seq, b"r%d s%d line %d" % (rank, stream, seq), seq % 3 == 0)
                         for seq in range(start, start + count)]
            sent[(rank, stream)] = start + count
        tuples = [(r, s, q, t, int(f), d) for r, s, q, t, f, d in records]
        assert await store.append_logs(run_id, 1, tuples) == len(tuples)
        assert await store.append_logs(run_id, 1, tuples[: len(tuples) // 2]) == 0       # resent
    # one that overlaps the end of what is stored and goes on: only the new ones are kept
    more = [(0, 1, seq, 0.5, 0, b"r0 s1 line %d" % seq) for seq in range(sent[(0, 1)] - 5, sent[(0, 1)] + 5)]
    assert await store.append_logs(run_id, 1, more) == 5
    expected += [(0, 1, seq, b"r0 s1 line %d" % seq, False) for seq in range(sent[(0, 1)], sent[(0, 1)] + 5)]
    everything = await store.read_logs(run_id, limit=10_000)
    assert [(r.rank, r.stream, r.seq, r.data, bool(r.flags)) for r in everything] == expected
    assert [r.id for r in everything] == sorted({r.id for r in everything})
    paged, after = [], 0
    while page := await store.read_logs(run_id, after_id=after, limit=7):
        paged += page
        after = page[-1].id
    assert paged == everything
    for lines in (1, 5, 13, 100, len(expected) - 1, len(expected), len(expected) + 1):
        tail = await store.read_logs(run_id, after_id=await store.tail_start(run_id, lines), limit=10_000)
        assert tail == everything[-lines:]
    rank1 = [r for r in everything if r.rank == 1]
    tail = await store.read_logs(run_id, rank=1, after_id=await store.tail_start(run_id, 9, rank=1), limit=10_000)
    assert tail == rank1[-9:]

    # the same records as chunks (what `logs -f` sends): page by page, each page's cursor where read_logs' is
    chunked, after = [], 0
    while chunks := await store.read_log_chunks(run_id, after_id=after, limit=7):
        assert sum(len(c.lengths) for c in chunks) <= 7
        for c in chunks:
            pieces, offset = [], 0
            for i, length in enumerate(c.lengths):
                pieces.append((c.rank, c.stream, c.first_seq + i, c.data[offset:offset + length], bool(c.flags[i]),
                               c.ts[i]))
                offset += length
            assert offset == len(c.data)
            chunked += pieces
        after = chunks[-1].last_id
        assert after == (await store.read_logs(run_id, after_id=0, limit=len(chunked)))[-1].id
    assert chunked == [(r.rank, r.stream, r.seq, r.data, bool(r.flags), r.ts) for r in everything]


# --- metrics ----------------------------------------------------------------------------------------------------


async def test_resent_metric_points_are_stored_once(store: Store) -> None:
    run_id, _ = await store.create_run(new_run())
    points = [(0, 0, "loss", 0, 1.5, 10.0), (0, 1, "loss", 1, 1.25, 11.0)]
    await store.append_metrics(run_id, 1, points, {}, {})
    await store.append_metrics(run_id, 1, points, {}, {})
    await store.append_metrics(run_id, 1, [(0, 1, "loss", 1, 99.0, 12.0)], {}, {})  # same seq, changed value: ignored
    rows = await store.read_metrics(run_id, "loss")
    assert [(r.step, r.value) for r in rows] == [(0, 1.5), (1, 1.25)]


async def test_each_rank_has_its_own_sequence_and_can_be_read_alone(store: Store) -> None:
    run_id, _ = await store.create_run(new_run())
    # ranks 0 and 3 each number their records from 0: the same seq of two ranks is two points
    await store.append_metrics(run_id, 1, [(0, 0, "loss", 0, 1.5, 10.0), (3, 0, "loss", 0, 2.5, 10.0)], {}, {})
    await store.append_metrics(run_id, 1, [(3, 0, "loss", 0, 9.0, 11.0)], {}, {})  # rank 3 resent: ignored
    assert [(r.rank, r.value) for r in await store.read_metrics(run_id)] == [(0, 1.5), (3, 2.5)]
    assert [(r.rank, r.value, r.run_id) for r in await store.read_metrics([run_id], rank=3)] == [(3, 2.5, run_id)]


async def test_nan_and_infinities_round_trip(store: Store) -> None:
    run_id, _ = await store.create_run(new_run())
    points = [(0, 0, "a", 0, math.nan, 1.0), (0, 1, "b", 0, math.inf, 1.0), (0, 2, "c", 0, -math.inf, 1.0)]
    await store.append_metrics(run_id, 1, points, {}, {})
    a, b, c = await store.read_metrics(run_id)
    assert a.key == "a" and math.isnan(a.value)
    assert (b.key, b.value) == ("b", math.inf)
    assert (c.key, c.value) == ("c", -math.inf)


async def test_params_upsert_and_tags_merge(store: Store) -> None:
    run_id, _ = await store.create_run(new_run(tags={"team": "vision", "stage": "dev"}))
    await store.append_metrics(run_id, 1, [], {"lr": "0.1", "batch": "32"}, {"stage": "prod"})
    await store.append_metrics(run_id, 1, [], {"lr": "0.01"}, {"best": "yes"})
    assert await store.params(run_id) == {"batch": "32", "lr": "0.01"}
    assert (await store.get_run(run_id)).tags == {"team": "vision", "stage": "prod", "best": "yes"}


# --- nodes ------------------------------------------------------------------------------------------------------


CAPACITY = Capacity(
    cpus=8.0, memory_bytes=32 * 1024**3, disk_bytes=10**12, gpus=(Gpu(0, "GPU-a", "A100", 80 * 1024**3),)
)


async def test_the_same_key_enrolls_again_under_its_name_with_the_same_node_id(store: Store) -> None:
    first = await enroll(store, node_id="node-a", name="gpu-1", cluster="c", labels={"zone": "1"}, capacity=CAPACITY,
                         key="k1", serial="a1")
    again = await enroll(store, node_id="node-b", name="gpu-1", cluster="c", labels={"zone": "2"}, capacity=CAPACITY,
                         key="k1", serial="b2")
    assert first.id == again.id == "node-a"
    (joined,) = await store.list_nodes()
    assert (joined.id, joined.name, joined.labels, joined.capacity) == ("node-a", "gpu-1", {"zone": "2"}, CAPACITY)
    (key,) = await store.node_keys()
    assert (key.name, key.key_sha256, key.cert_serial) == ("gpu-1", "k1", "b2")


async def test_another_key_never_takes_over_an_enrolled_name_until_it_is_removed(store: Store) -> None:
    await enroll(store, node_id="node-a", name="gpu-1", capacity=CAPACITY, key="k1")
    with pytest.raises(KeyMismatch, match="enrolled with another key"):
        await enroll(store, node_id="node-a", name="gpu-1", capacity=CAPACITY, key="k2")
    await store.forget_node_key("gpu-1")
    assert await store.node_keys() == []
    await enroll(store, node_id="node-a", name="gpu-1", capacity=CAPACITY, key="k2")
    assert [k.key_sha256 for k in await store.node_keys()] == ["k2"]


async def test_a_join_token_is_spent_by_its_uses_and_refused_after_its_ttl(store: Store) -> None:
    await store.add_join_token("j1", "sha-1", uses=2, expires_at=store.clock() + 60, created_by="admin")
    for name in ("one", "two"):
        await store.enroll(join_sha="sha-1", node_id=name, name=name, key_sha256=name, cert_serial="1", cluster="c",
                           labels={}, capacity=CAPACITY, approved=True)
    with pytest.raises(Unauthenticated, match="no use left"):
        await store.enroll(join_sha="sha-1", node_id="three", name="three", key_sha256="three", cert_serial="1",
                           cluster="c", labels={}, capacity=CAPACITY, approved=True)
    await store.add_join_token("j2", "sha-2", uses=5, expires_at=store.clock() - 1, created_by="admin")
    with pytest.raises(Unauthenticated, match="expired"):
        await store.enroll(join_sha="sha-2", node_id="four", name="four", key_sha256="four", cert_serial="1",
                           cluster="c", labels={}, capacity=CAPACITY, approved=True)
    assert await store.join_tokens() == {}
    assert [n.name for n in await store.list_nodes()] == ["one", "two"]


async def test_distinct_names_are_distinct_nodes(store: Store) -> None:
    a = await enroll(store, node_id="n1", name="one", cluster="c", labels={}, capacity=CAPACITY)
    b = await enroll(store, node_id="n2", name="two", cluster="c", labels={}, capacity=CAPACITY)
    assert (a.id, b.id) == ("n1", "n2")
    assert [n.name for n in await store.list_nodes()] == ["one", "two"]


# --- the data dir -----------------------------------------------------------------------------------------------


async def test_runs_survive_a_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "head"
    first = await open_store(data_dir)
    run_id, _ = await first.create_run(new_run(key="k"))
    await first.transition(run_id, Trigger.ASSIGN, node_id="node-1")
    await first.append_logs(run_id, 1, log_records(3))
    before = await first.get_run(run_id)
    cluster_id = first.cluster_id
    await first.close()

    second = await open_store(data_dir)
    try:
        assert second.cluster_id == cluster_id
        assert await second.get_run(run_id) == before
        assert len(await second.read_logs(run_id)) == 3
        assert await second.create_run(new_run(key="k")) == (run_id, True)
    finally:
        await second.close()


async def test_deleted_database_is_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "head"
    first = await open_store(data_dir)
    await first.create_run(new_run())
    await first.close()
    assert (data_dir / MARKER).exists()
    for leftover in data_dir.glob("runyard.db*"):
        leftover.unlink()
    with pytest.raises(StartupRefused, match="runyard.db is missing"):
        await open_database(data_dir, synchronous="NORMAL")
    assert not (data_dir / "runyard.db").exists(), "a refused start must not create an empty database"


async def test_garbage_database_is_refused_and_left_alone(tmp_path: Path) -> None:
    data_dir = tmp_path / "head"
    data_dir.mkdir()
    garbage = bytes(range(256)) * 64
    (data_dir / "runyard.db").write_bytes(garbage)
    with pytest.raises(StartupRefused, match="not a usable database"):
        await open_database(data_dir, synchronous="NORMAL")
    assert (data_dir / "runyard.db").read_bytes() == garbage


async def test_database_of_another_cluster_is_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "head"
    first = await open_store(data_dir)
    await first.close()
    (data_dir / MARKER).write_text("0123456789abcdef\n")
    with pytest.raises(StartupRefused, match="belongs to cluster"):
        await open_database(data_dir, synchronous="NORMAL")


async def test_first_start_writes_the_marker(tmp_path: Path) -> None:
    data_dir = tmp_path / "head"
    conn, cluster_id = await open_database(data_dir, synchronous="NORMAL")
    await conn.close()
    assert cluster_id and (data_dir / MARKER).read_text().strip() == cluster_id


async def test_emptied_database_of_an_initialised_cluster_is_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "head"
    first = await open_store(data_dir)
    await first.close()
    for leftover in data_dir.glob("runyard.db*"):
        leftover.unlink()
    (data_dir / "runyard.db").write_bytes(b"")  # e.g. truncated by a bad restore
    with pytest.raises(StartupRefused, match="no cluster id"):
        await open_database(data_dir, synchronous="NORMAL")


async def test_a_database_newer_than_the_head_is_refused(tmp_path: Path) -> None:
    store = await Store.open(tmp_path, synchronous="NORMAL")
    await store.close()
    conn = sqlite3.connect(tmp_path / "runyard.db")
    conn.execute(f"PRAGMA user_version = {db.migrations()[-1][0] + 1}")
    conn.close()
    with pytest.raises(StartupRefused, match="newer than this head knows"):
        await Store.open(tmp_path, synchronous="NORMAL")


async def test_a_writer_cancelled_mid_transaction_does_not_wedge_the_store(store: Store) -> None:
    """A caller cancelled while its statements are queued (a gRPC stream torn down) leaves a transaction open
    in the connection's thread; the next transaction must still work and see nothing half-written."""
    run_id, _ = await store.create_run(new_run())
    for _ in range(20):
        task = asyncio.ensure_future(store.append_logs(run_id, 1, [(0, 1, 1, 1.0, 0, b"x")]))
        await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await store.set_node_capacity("nobody", CAPACITY)  # would fail with "cannot start a transaction within a transaction"
    assert len(await store.read_logs(run_id)) <= 1



async def test_node_is_quarantined_after_failures_in_a_row_and_uncordon_forgives(store: Store) -> None:
    node_id = (await enroll(store, node_id="n1", name="gpu-7", cluster="a100", labels={},
                                     capacity=CAPACITY)).id

    async def count(node_side: bool, quarantine: bool = False) -> None:
        await store.apply_plan(Plan(counts=(NodeCount(node_id, node_side, quarantine, "gpu-7 quarantined: 3 runs"),)))

    await count(True)
    await count(False)   # a good run resets
    await count(True)
    await count(True)
    assert (await store.get_node(node_id)).failures_in_row == 2
    await count(True, quarantine=True)
    node = await store.get_node(node_id)
    assert (node.schedule, node.failures_in_row) == (Schedule.QUARANTINED, 3)
    (event,) = await store.events()
    assert (event.cluster, event.node, event.kind, event.detail) == ("a100", "gpu-7", "quarantine", "gpu-7 quarantined: 3 runs")
    history = [(e.from_state, e.to_state, e.event) for e in await store.node_events(node_id)]
    assert history == [("", "Joining", "join"), ("active", "quarantined", "quarantine")]

    forgiven = await store.set_node_schedule("gpu-7", ScheduleTrigger.UNCORDON, "uncordon by an admin")
    assert (forgiven.schedule, forgiven.failures_in_row) == (Schedule.ACTIVE, 0)
    with pytest.raises(InvalidNodeTransition):
        await store.set_node_schedule("gpu-7", ScheduleTrigger.UNCORDON, "again")


async def test_a_stop_keeps_why_it_was_asked_while_the_run_is_live(store: Store) -> None:
    run_id, _ = await store.create_run(new_run())
    await store.transition(run_id, Trigger.ASSIGN, node_id="node-1")
    stop = StopRun(run_id, 1, "node-1", Reason.SIBLING_FAILED, "a sibling failed")
    await store.apply_plan(Plan(stops=(stop,)))
    await store.apply_plan(Plan(stops=(dataclasses.replace(stop, reason=Reason.CANCELED_BY_USER),)))   # once only
    run = await store.get_run(run_id)
    assert (run.desired_state, run.reason) == (DesiredState.STOP, Reason.SIBLING_FAILED)
    assert [e.event for e in await store.run_events(run_id)].count("stop_requested") == 1
