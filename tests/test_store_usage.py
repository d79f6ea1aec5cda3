"""Runs' system metrics and the usage report on a real SQLite store: a resent sample stored once, peaks and means
per key, and CPU- and GPU-hours per workspace and user with each run's wall time clipped to the window."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from scheduler.core.lifecycle import Trigger
from scheduler.store import Store
from tests.test_store import new_run, open_store

HOUR = 3600.0


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await open_store(tmp_path / "head")
    yield opened
    await opened.close()


async def ran(store: Store, workspace: str, *, start: float, end: float | None, gpus: tuple[int, ...] = (),
              cpus: float = 1.0) -> str:
    run_id, _ = await store.create_run(new_run(workspace, cpus=cpus, gpus=len(gpus)))
    await store.transition(run_id, Trigger.ASSIGN, node_id="node-1", gpu_indices=gpus)
    await store.transition(run_id, Trigger.START, attempt=1, started_at=start)
    if end is not None:
        await store.transition(run_id, Trigger.COMPLETE, attempt=1, ended_at=end)
    return run_id


async def test_a_resent_sample_is_stored_once_and_summarised_per_key(store: Store) -> None:
    run_id, _ = await store.create_run(new_run())
    first = [(0, 10.0, [("system/memory_bytes", 100.0), ("system/cpu_seconds", 1.0)]),
             (1, 11.0, [("system/memory_bytes", 300.0), ("system/cpu_seconds", 2.0)])]
    await store.append_usage(run_id, 1, first)
    await store.append_usage(run_id, 1, first[1:])     # resent after a reconnect
    points = await store.usage_points(run_id, "system/memory_bytes")
    assert [(p.seq, p.value) for p in points] == [(0, 100.0), (1, 300.0)]
    summaries = {s.key: s for s in await store.usage_summaries(run_id)}
    assert (summaries["system/memory_bytes"].peak, summaries["system/memory_bytes"].mean) == (300.0, 200.0)
    assert summaries["system/cpu_seconds"].count == 2
    assert await store.metric_summaries(run_id) == []      # never among the run's own metrics


async def test_usage_per_workspace_and_user_clipped_to_the_window(store: Store) -> None:
    a = await ran(store, "default", start=0.0, end=2 * HOUR, gpus=(0, 1), cpus=4.0)
    await ran(store, "default", start=3 * HOUR, end=4 * HOUR)
    await ran(store, "team-b", start=HOUR, end=None, gpus=(0,))         # still running: up to now
    await store.create_run(new_run("default"))                          # never ran: not counted
    # a's CPU time: 1 h by the end of its first hour, 1.5 h at its end
    await store.append_usage(a, 1, [(0, 0.5 * HOUR, [("system/cpu_seconds", 0.5 * HOUR)]),
                                    (1, 1.0 * HOUR - 1, [("system/cpu_seconds", HOUR)]),
                                    (2, 2.0 * HOUR, [("system/cpu_seconds", 1.5 * HOUR)])])
    rows = await store.usage_report(since=HOUR, until=3.5 * HOUR, now=5 * HOUR)
    by = {r.workspace: r for r in rows}
    assert set(by) == {"default", "team-b"}
    default = by["default"]
    assert default.runs == 2
    assert default.gpu_hours == pytest.approx(2 * 1.0)              # a: 2 GPUs x its 1 h in the window
    assert default.cpu_hours_allocated == pytest.approx(4 * 1.0 + 1 * 0.5)
    assert default.cpu_hours == pytest.approx(0.5)                  # 1.5 h used by its end, 1 h before the window
    assert by["team-b"].gpu_hours == pytest.approx(2.5)             # from 1 h to the window's end
    only = await store.usage_report(since=0.0, until=5 * HOUR, now=5 * HOUR, workspace="team-b")
    assert [r.workspace for r in only] == ["team-b"] and only[0].gpu_hours == pytest.approx(4.0)
    assert await store.usage_report(since=4 * HOUR + 1, until=4.5 * HOUR, now=5 * HOUR, workspace="default") == []
