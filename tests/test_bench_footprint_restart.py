"""The pure and database parts of benches S8 (footprint) and S10 (head restart): what S8 computes from its
readings, and that S10's filling leaves a database the head's store opens as its own, with the runs in the states
it says and every log line stored. The benches themselves run in `make bench`, not here."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _bench(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_per_run_memory_is_growth_over_runs_in_decimal_kilobytes() -> None:
    s8 = _bench("s8_footprint")
    assert s8.per_run_kb(80.0, 120.0, 10_000) == pytest.approx(4.0)
    assert s8.per_run_kb(80.0, 79.0, 1000) == pytest.approx(-1.0)


@pytest.mark.parametrize(("before", "during", "after", "started"), [
    (0, 0, 0, 0),           # none before, during or after
    (1, 1, 1, 0),           # one helper all along: not per run
    (0, 3, 0, 3),           # processes that came and went during the submits
    (1, 1, 4, 3),           # processes left behind
    (2, 2, 1, 0),           # one ended meanwhile
])
def test_processes_started_counts_what_came_during_or_stayed(before: int, during: int, after: int,
                                                             started: int) -> None:
    assert _bench("s8_footprint").processes_started(before, during, after) == started


@pytest.mark.timeout(120)
def test_restart_fill_is_a_database_the_head_opens(tmp_path: Path) -> None:
    from scheduler.store import Store

    s10 = _bench("s10_restart")
    data_dir = tmp_path / "head"
    ids, filled = asyncio.run(s10.fill(data_dir, 300, 25_000, 3))
    assert len(ids) == len(set(ids)) == 300 and filled["lines"] == 25_000
    states = s10.end_runs(data_dir / "runyard.db", ids, 40)
    assert states == {"Completed": 208, "Failed": 26, "Canceled": 26, "Queued": 40}
    counts = s10.count_rows(data_dir / "runyard.db")
    assert counts["runs"] == 300 and counts["queued"] == 40 and counts["log_lines"] == 25_000
    assert counts["run_events"] == 300 + 3 * 260

    async def reopened() -> None:
        store = await Store.open(data_dir)
        try:
            assert sorted(r.id for r in await store.queued()) == sorted(ids[-40:])
            ended = await store.get_run(ids[0])
            assert (ended.state, ended.attempt, ended.exit_code) == ("Completed", 1, 0)
            assert [e.event for e in await store.run_events(ids[0])] == ["submit", "assign", "start", "complete"]
            lines = await store.read_logs(ids[1], limit=10_000)
            assert len(lines) == 25_000 // 3 + 1 and lines[-1].seq == len(lines) - 1
        finally:
            await store.close()
    asyncio.run(reopened())
