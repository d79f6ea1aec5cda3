"""Tracked runs on a real SQLite store: the child runs a run's script starts, written and ended by its records,
and ended with the run that tracks them; records that name any other run are dropped."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runyard.ids import new_run_id
from scheduler.core.lifecycle import RunState, Trigger
from scheduler.core.plan import Move, Plan
from scheduler.store import Store, TrackingRecord
from tests.test_store import new_run, open_store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await open_store(tmp_path / "head")
    yield opened
    await opened.close()


async def running(store: Store, workspace: str = "default") -> str:
    run_id, _ = await store.create_run(new_run(workspace))
    await store.transition(run_id, Trigger.ASSIGN, node_id="node-1", gpu_indices=())
    await store.transition(run_id, Trigger.START, attempt=1, started_at=5.0)
    return run_id


def child(seq: int, child_id: str, name: str, *, of: str = "") -> TrackingRecord:
    return TrackingRecord(rank=0, seq=seq, run_id=of, child=(child_id, name), ts=10.0)


def point(seq: int, key: str, value: float, *, of: str = "", step: int = 0) -> TrackingRecord:
    return TrackingRecord(rank=0, seq=seq, run_id=of, keys=(key,), steps=(step,), values=(value,), ts=11.0)


def end(seq: int, of: str, word: str = "FINISHED") -> TrackingRecord:
    return TrackingRecord(rank=0, seq=seq, run_id=of, end=word, ts=12.0)


async def test_a_child_is_created_once_written_to_and_ended_by_its_script(store: Store) -> None:
    top = await running(store)
    fold = new_run_id()
    batch = [child(0, fold, "fold-1"), point(1, "acc", 0.5, of=fold),
             TrackingRecord(rank=0, seq=2, run_id=fold, params={"k": "3"}, tags={"stage": "cv"}), point(3, "loss", 2.0)]

    await store.apply_records(top, 1, batch)
    await store.apply_records(top, 1, batch)   # resent: nothing twice

    made = await store.get_run(fold)
    assert (made.parent_id, made.state, made.display_name, made.tracked) == (top, RunState.RUNNING, "fold-1", True)
    assert (made.workspace, made.experiment, made.started_at) == ("default", "mnist", 10.0)
    assert [(m.key, m.value) for m in await store.read_metrics(fold)] == [("acc", 0.5)]
    assert [(m.key, m.value) for m in await store.read_metrics(top)] == [("loss", 2.0)]
    assert await store.params(fold) == {"k": "3"} and made.tags == {"stage": "cv"}
    assert len(await store.children(top)) == 1

    await store.apply_records(top, 1, [end(4, fold)])
    ended = await store.get_run(fold)
    assert (ended.state, ended.ended_at) == (RunState.COMPLETED, 12.0)
    assert [(e.event, e.to_state) for e in await store.run_events(fold)] == [("track", "Running"),
                                                                            ("complete", "Completed")]


async def test_children_of_children_and_every_end_word(store: Store) -> None:
    top = await running(store)
    a, b, c = new_run_id(), new_run_id(), new_run_id()
    await store.apply_records(top, 1, [child(0, a, "a"), child(1, b, "b", of=a), child(2, c, "c"),
                                       end(3, b, "FAILED"), end(4, c, "KILLED")])
    assert (await store.get_run(b)).parent_id == a
    assert [(await store.get_run(r)).state for r in (a, b, c)] == [RunState.RUNNING, RunState.FAILED,
                                                                    RunState.CANCELED]


async def test_records_naming_another_run_are_dropped(store: Store) -> None:
    top, other = await running(store), await running(store)
    theirs = new_run_id()
    await store.apply_records(other, 1, [child(0, theirs, "theirs")])

    applied = await store.apply_records(top, 1, [
        point(0, "loss", 1.0, of=other),            # another run
        point(1, "loss", 1.0, of=theirs),           # another run's tracked child
        end(2, theirs),
        child(3, theirs, "stolen"),                 # an id that is already another parent's
        child(4, "not-an-id", "x"),
        child(5, new_run_id(), "x", of=other),      # a child under another run
    ])

    assert applied.dropped == 6
    assert await store.read_metrics(other) == [] and await store.read_metrics(theirs) == []
    assert (await store.get_run(theirs)).state is RunState.RUNNING
    assert (await store.get_run(theirs)).parent_id == other
    assert await store.children(top) == []
    # nor may a run name itself a child: a tracked run's parent must be tracked all the way up
    assert (await store.apply_records(top, 1, [point(6, "x", 1.0, of=top)])).dropped == 0


@pytest.mark.parametrize(("trigger", "then"), [
    (Trigger.COMPLETE, RunState.COMPLETED), (Trigger.FAIL, RunState.FAILED), (Trigger.CANCEL, RunState.CANCELED),
    (Trigger.REQUEUE, RunState.FAILED),
])
async def test_open_children_end_with_the_run_that_tracks_them(store: Store, trigger: Trigger,
                                                               then: RunState) -> None:
    top = await running(store)
    open_child, grandchild, done = new_run_id(), new_run_id(), new_run_id()
    await store.apply_records(top, 1, [child(0, open_child, "open"), child(1, grandchild, "inner", of=open_child),
                                       child(2, done, "done"), end(3, done)])

    await store.apply_plan(Plan(moves=(Move(top, trigger, RunState.RUNNING, 1, detail="the process ended"),)))

    assert (await store.get_run(open_child)).state is then
    assert (await store.get_run(grandchild)).state is then
    assert (await store.get_run(done)).state is RunState.COMPLETED   # ended before: left as it was
    said = "was queued again (its attempt was lost)" if trigger is Trigger.REQUEUE else f"ended {then}"
    assert (await store.run_events(open_child))[-1].detail == f"its parent {top} {said}"
    assert (await store.run_events(grandchild))[-1].detail == f"its parent {open_child} ended {then}"
