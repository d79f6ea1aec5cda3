"""The store's queries for people on a real SQLite database: run ids by prefix, every filter of `list_runs`,
the experiments of a workspace with their runs per state, and the bounded log search of `logs --grep`."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from scheduler import logsearch
from scheduler.core.lifecycle import Trigger
from scheduler.errors import InvalidArgument, NotFound
from scheduler.model import NewRun, RunSpec
from scheduler.store import LOG_CONTINUED, LOG_GAP, RunQuery, Store
from scheduler.store.runs import GPU_USAGE_SQL, MAX_CANDIDATES, PREFIX_SQL
from tests.test_store import manual_clock

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(tmp_path / "head", synchronous="NORMAL", clock=manual_clock())
    yield opened
    await opened.close()


async def submit(store: Store, workspace: str = "default", *, experiment: str = "mnist", submitter: str = "ann",
                 tags: dict[str, str] | None = None, parent: str = "", compute: str = "default") -> str:
    run_id, _ = await store.create_run(NewRun(
        workspace=workspace, experiment=experiment, display_name="", tags=tags or {}, properties={},
        snapshot_sha256="0" * 64, spec=RunSpec(argv=("true",), compute=compute), idempotency_key="",
        parent_id=parent, submitter=submitter))
    return run_id


async def ids(store: Store, **query: object) -> list[str]:
    return [r.id for r in await store.list_runs("default", RunQuery(**query))]  # type: ignore[arg-type]


# --- run ids by prefix --------------------------------------------------------------------------------------------

async def test_a_unique_prefix_of_at_least_four_characters_finds_the_run_in_any_case(store: Store) -> None:
    first = await submit(store)
    assert (await store.find_run(first, "default")).id == first
    # ids made one second apart share their first characters; the last ones tell them apart
    second = await submit(store)
    assert first[:8] == second[:8] and first != second
    assert (await store.find_run(second[:12], "default")).id == second
    assert (await store.find_run(second[:12].upper(), "default")).id == second


async def test_an_ambiguous_prefix_names_at_most_ten_candidates(store: Store) -> None:
    made = sorted([await submit(store) for _ in range(MAX_CANDIDATES + 2)])
    common = made[0][:5]
    assert all(r.startswith(common) for r in made)
    with pytest.raises(InvalidArgument) as refused:
        await store.find_run(common, "default")
    text = str(refused.value)
    assert text.startswith(f"run id prefix '{common}' is ambiguous: ") and text.endswith("; give more characters")
    assert [r for r in made if r in text] == made[:MAX_CANDIDATES] and ", ..." in text
    exact = made[0]     # a whole id is never ambiguous
    assert (await store.find_run(exact, "default")).id == exact


async def test_an_unknown_a_short_and_another_workspaces_prefix_are_no_such_run(store: Store) -> None:
    mine = await submit(store)
    theirs = await submit(store, "other")
    with pytest.raises(NotFound, match="no run 'zzzzzz'"):
        await store.find_run("zzzzzz", "default")
    with pytest.raises(NotFound, match="at least 4 characters"):
        await store.find_run(mine[:3], "default")
    for given in (theirs, theirs[:14]):
        with pytest.raises(NotFound, match="no run"):
            await store.find_run(given, "default")
    # another workspace's runs make no prefix ambiguous
    assert mine[:6] == theirs[:6]
    assert (await store.find_run(mine[:6], "default")).id == mine
    assert (await store.find_run(theirs[:6], "other")).id == theirs


def test_the_prefix_query_walks_the_primary_key(tmp_path: Path) -> None:
    from scheduler import db

    conn = sqlite3.connect(tmp_path / "plan.db")
    conn.executescript(db.fresh_schema())
    plan = " ".join(row[-1] for row in conn.execute(f"EXPLAIN QUERY PLAN {PREFIX_SQL}", ("01ab", "01ac", "w", 11)))
    conn.close()
    assert "USING INDEX sqlite_autoindex_runs_1 (id>? AND id<?)" in plan, plan


# --- fair share's GPU usage ------------------------------------------------------------------------------------

async def test_gpu_usage_is_the_live_gpu_attempts_and_those_ended_after_the_time(store: Store, tmp_path: Path) -> None:
    runs = {name: await submit(store, compute="gpu-pool") for name in
            ("live", "ended_late", "ended_early", "cpu_live", "never_started", "requeued_unstarted")}
    rows = {  # gpu_indices, node_id, started_at, ended_at
        "live": ("[0, 1]", "n1", 100.0, None), "ended_late": ("[2]", "n1", 100.0, 500.0),
        "ended_early": ("[3]", "n1", 100.0, 200.0), "cpu_live": ("[]", "n1", 100.0, None),
        "never_started": ("[4]", "n1", None, None), "requeued_unstarted": ("[5]", None, 100.0, None),
    }
    conn = sqlite3.connect(tmp_path / "head" / "runyard.db", isolation_level=None)
    try:
        for name, (gpus, node, started, ended) in rows.items():
            conn.execute("UPDATE runs SET gpu_indices = ?, node_id = ?, started_at = ?, ended_at = ? WHERE id = ?",
                         (gpus, node, started, ended, runs[name]))
    finally:
        conn.close()
    assert sorted(await store.gpu_usage(since=300.0)) == [
        ("default", "gpu-pool", 1, 100.0, 500.0), ("default", "gpu-pool", 2, 100.0, None)]
    assert len(await store.gpu_usage(since=0.0)) == 3


def test_the_gpu_usage_query_walks_only_the_gpu_runs_index(tmp_path: Path) -> None:
    from scheduler import db

    conn = sqlite3.connect(tmp_path / "plan.db")
    conn.executescript(db.fresh_schema())
    plan = [row[-1] for row in conn.execute(f"EXPLAIN QUERY PLAN {GPU_USAGE_SQL}", (0.0,))]
    conn.close()
    assert "SEARCH runs USING INDEX runs_gpu_held (ended_at>?)" in plan, plan
    assert "SEARCH runs USING INDEX runs_gpu_held (ended_at=?)" in plan, plan
    assert not any(step.startswith("SCAN runs") for step in plan), plan


# --- list_runs filters --------------------------------------------------------------------------------------------

async def test_each_filter_keeps_exactly_the_runs_it_names(store: Store) -> None:
    a = await submit(store, submitter="ann", tags={"team": "vision", "lr": "0.1"})
    b = await submit(store, submitter="bob", experiment="bert", tags={"team": "nlp"}, compute="gpu-pool")
    c = await submit(store, submitter="ann", tags={"team": "vision"}, parent=a)
    d = await submit(store, submitter="bob", parent=c)
    await submit(store, "other", submitter="ann", tags={"team": "vision"})
    await store.transition(b, Trigger.ASSIGN, node_id="node-2")
    await store.transition(c, Trigger.CANCEL)
    every = [d, c, b, a]
    assert await ids(store) == every
    assert await ids(store, user="ann") == [c, a]
    assert await ids(store, experiment="bert") == [b]
    assert await ids(store, states=("Queued",)) == [d, a]
    assert await ids(store, states=("Canceled", "Preparing")) == [c, b]
    assert await ids(store, tags=(("team", "vision"),)) == [c, a]
    assert await ids(store, tags=(("team", "vision"), ("lr", "0.1"))) == [a]
    assert await ids(store, tags=(("lr", None),)) == [a]
    assert await ids(store, tags=(("team", None),)) == [c, b, a]
    assert await ids(store, tags=(("team", "vision'; --"),)) == []
    assert await ids(store, parent_id=a) == [c]
    assert await ids(store, parent_id=c) == [d]
    assert await ids(store, compute="gpu-pool") == [b]
    assert await ids(store, node_id="node-2") == [b]
    runs = {r.id: r for r in await store.list_runs("default", RunQuery())}
    assert await ids(store, created_after=runs[b].created_at) == [d, c, b]
    assert await ids(store, created_before=runs[b].created_at) == [a]
    assert await ids(store, created_after=runs[b].created_at, created_before=runs[d].created_at) == [c, b]
    assert await ids(store, user="ann", tags=(("team", "vision"),), states=("Queued",)) == [a]
    assert await ids(store, limit=2) == [d, c]
    # the keywords of the short form still work
    assert [r.id for r in await store.list_runs("default", user="bob", state="Queued")] == [d]


# --- experiments --------------------------------------------------------------------------------------------------

async def test_experiments_count_their_runs_per_state_most_recent_first(store: Store) -> None:
    queued = await submit(store, experiment="mnist")
    running = await submit(store, experiment="mnist")
    failed = await submit(store, experiment="mnist")
    done = await submit(store, experiment="bert")
    await submit(store, "other", experiment="secret")
    await store.transition(running, Trigger.ASSIGN, node_id="node-1")
    await store.transition(failed, Trigger.FAIL, ended_at=1_800_000_000.0)
    await store.transition(done, Trigger.CANCEL, ended_at=1_700_000_500.0)
    found = await store.experiments("default")
    assert [e.name for e in found] == ["mnist", "bert"]
    mnist, bert = found
    assert (mnist.queued, mnist.running, mnist.completed, mnist.failed, mnist.canceled, mnist.total) == (1, 1, 0, 1, 0, 3)
    assert (bert.queued, bert.canceled, bert.total) == (0, 1, 1)
    assert mnist.last_activity == 1_800_000_000.0 and bert.last_activity == 1_700_000_500.0
    assert queued and [e.name for e in await store.experiments("other")] == ["secret"]


# --- the log search of `logs --grep` --------------------------------------------------------------------------------

def _source(run_id: str) -> logsearch.Source:
    return logsearch.Source(run_id, (run_id,), {}, ranked=False)


async def test_the_search_joins_continued_records_skips_gaps_and_decodes_with_replacement(store: Store) -> None:
    run_id = await submit(store)
    await store.append_logs(run_id, 1, [
        (0, 1, 0, 1.0, LOG_CONTINUED, b"a long li"), (0, 2, 0, 1.5, 0, b"an error on stderr"),
        (0, 1, 1, 2.0, 0, b"ne with an error in it"), (0, 1, 2, 3.0, LOG_GAP, b"5 error records dropped"),
        (1, 1, 3, 4.0, 0, b"\xff error at rank 1"), (0, 1, 4, 5.0, 0, b"fine"),
    ])
    found = await logsearch.search(store, [_source(run_id)], logsearch.compile_pattern("ERROR", True))
    assert [(m.line, m.rank, m.stream, m.ts) for m in found.matches] == [
        ("an error on stderr", 0, 2, 1.5), ("a long line with an error in it", 0, 1, 1.0),
        ("\ufffd error at rank 1", 1, 1, 4.0)]
    assert found.scanned == 6 and found.stopped == ""
    only_stderr = await logsearch.search(store, [_source(run_id)], logsearch.compile_pattern("error", False), stream=2)
    assert [m.line for m in only_stderr.matches] == ["an error on stderr"]


async def test_the_search_stops_at_each_of_its_bounds_and_says_which(store: Store) -> None:
    run_id = await submit(store)
    await store.append_logs(run_id, 1, [(0, 1, seq, float(seq), 0, b"line %d" % seq) for seq in range(600)])
    pattern = logsearch.compile_pattern("line", False)
    by_records = await logsearch.search(store, [_source(run_id)], pattern, limits=logsearch.Limits(records=300))
    assert by_records.scanned == 300 and len(by_records.matches) == 300
    assert by_records.stopped.startswith("stopped after reading 300 log records")
    by_matches = await logsearch.search(store, [_source(run_id)], pattern, limits=logsearch.Limits(matches=5))
    assert [m.line for m in by_matches.matches] == [f"line {n}" for n in range(5)]
    assert by_matches.stopped.startswith("stopped at 5 matches")
    ticks = iter(range(0, 100, 3))        # a clock that moves 3 s at every reading: the second page is over 5 s
    by_time = await logsearch.search(store, [_source(run_id)], pattern, monotonic=lambda: float(next(ticks)))
    assert by_time.scanned == logsearch.PAGE_RECORDS and by_time.stopped.startswith("stopped after 5 s")


@pytest.mark.parametrize(("pattern", "why"), [("", "give a pattern"), ("(", "not a valid regular expression"),
                                              ("a" * 1001, "over the limit of 1,000")])
def test_a_bad_pattern_is_refused_in_one_line(pattern: str, why: str) -> None:
    with pytest.raises(InvalidArgument, match=why):
        logsearch.compile_pattern(pattern, False)
