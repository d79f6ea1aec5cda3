"""Metric reads: series as columns, downsampled buckets, summaries aggregated in SQL, resends stored once; on a real
SQLite store, and through a real head and the CLI (`runyard metrics RUN --key K --points N`)."""

from __future__ import annotations

import math
import random
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from protos import runyard_pb2 as pb
from scheduler.store import Store
from scheduler.store.records import MetricSeries, MetricSummary
from tests.test_store import new_run, open_store
from testbed.harness import Cluster

INF = math.inf
NAN = math.nan


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await open_store(tmp_path / "head")
    yield opened
    await opened.close()


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def python_summary(points: list[tuple[int, float, float]]) -> tuple[int, float, float, float, int]:
    """The definition: (count, min, max, last, last step) of (step, value, ts) points; min and max leave NaN out
    (NaN when every value is), the last point is the last by step, then time."""
    ordered = sorted(points, key=lambda p: (p[0], p[2]))
    finite = [v for _, v, _ in ordered if not math.isnan(v)] or [NAN]
    return len(ordered), min(finite), max(finite), ordered[-1][1], ordered[-1][0]


def summary_tuple(s: MetricSummary) -> tuple[int, float, float, float, int]:
    return s.count, s.min, s.max, s.last, s.last_step


def assert_same_summary(got: tuple[int, float, float, float, int], want: tuple[int, float, float, float, int]) -> None:
    assert got[0] == want[0] and got[4] == want[4], (got, want)
    assert all(same(g, w) for g, w in zip(got[1:4], want[1:4])), (got, want)


async def log(store: Store, run_id: str, points: list[tuple[int, str, int, float, float]], *, first_seq: int = 0,
              attempt: int = 1) -> None:
    """(rank, key, step, value, ts) points, one record line each, numbered from `first_seq`."""
    await store.append_metrics(run_id, attempt, [(rank, first_seq + i, key, step, value, ts)
                                                 for i, (rank, key, step, value, ts) in enumerate(points)], {}, {})


# --- columns and buckets ----------------------------------------------------------------------------------------

async def test_a_series_reads_as_columns_in_step_then_time_order_with_nan_and_infinities(store: Store) -> None:
    run_id, _ = await store.create_run(new_run())
    await log(store, run_id, [(0, "loss", 2, INF, 12.0), (0, "loss", 0, 1.5, 10.0), (0, "loss", 1, NAN, 11.0),
                              (0, "loss", 1, -INF, 10.5), (0, "acc", 0, 0.5, 10.0), (1, "loss", 0, 9.0, 10.0)])
    series = await store.metric_series(run_id, "loss", 0)
    assert list(series.steps) == [0, 1, 1, 2] and list(series.ts) == [10.0, 10.5, 11.0, 12.0]
    assert [repr(v) for v in series.values] == ["1.5", "-inf", "nan", "inf"]
    assert series.total == 4 and not series.downsampled
    assert_same_summary(summary_tuple(series.summary()), (4, -INF, INF, INF, 2))


async def test_a_series_with_at_most_max_points_comes_whole(store: Store) -> None:
    run_id, _ = await store.create_run(new_run())
    await log(store, run_id, [(0, "loss", step, step / 10, 100.0 + step) for step in range(50)])
    for max_points in (50, 51, 1000):
        series = await store.metric_series(run_id, "loss", 0, max_points=max_points)
        assert not series.downsampled and list(series.steps) == list(range(50)) and series.total == 50
    assert (await store.metric_series(run_id, "loss", 0, max_points=49)).downsampled


async def test_downsampled_buckets_hold_min_max_last_count_and_step_range(store: Store) -> None:
    rng = random.Random(7)
    run_id, _ = await store.create_run(new_run())
    points = []
    for i in range(3000):        # irregular steps, some repeated, NaN and infinities among the values
        step = rng.randrange(0, 10_000) if i % 3 else i * 3
        value = rng.choice([NAN, INF, -INF]) if i % 97 == 0 else rng.uniform(-5, 5)
        points.append((0, "loss", step, value, 1000.0 + i))
    points += [(0, "loss", s, NAN, 9000.0 + s) for s in range(5000, 5040)]    # a stretch of NaN only
    await log(store, run_id, points)
    for max_points in (1, 7, 100, 1000):
        series = await store.metric_series(run_id, "loss", 0, max_points=max_points)
        assert series.downsampled and 1 <= len(series.steps) <= max_points
        assert series.total == sum(series.counts) == len(points)
        lo = min(p[2] for p in points)
        hi = max(p[2] for p in points)
        width = (hi - lo) // max_points + 1
        buckets: dict[int, list[tuple[int, float, float]]] = {}
        for _, _, step, value, ts in points:
            buckets.setdefault((step - lo) // width, []).append((step, value, ts))
        assert len(series.steps) == len(buckets)
        for i, index in enumerate(sorted(buckets)):
            inside = buckets[index]
            count, low, high, last, last_step = python_summary(inside)
            assert series.first_steps[i] == min(s for s, _, _ in inside)
            assert series.steps[i] == last_step and series.counts[i] == count
            assert same(series.mins[i], low) and same(series.maxs[i], high) and same(series.values[i], last)
            assert series.ts[i] == max(t for s, _, t in inside if s == last_step)
            assert index * width <= series.first_steps[i] - lo and series.steps[i] - lo < (index + 1) * width
        assert_same_summary(summary_tuple(series.summary()), python_summary([p[2:] for p in points]))


async def test_a_series_of_one_step_many_times_downsamples_to_one_bucket(store: Store) -> None:
    run_id, _ = await store.create_run(new_run())
    await log(store, run_id, [(0, "lr", 5, float(i), 100.0 + i) for i in range(20)])
    series = await store.metric_series(run_id, "lr", 0, max_points=3)
    assert (list(series.first_steps), list(series.steps), list(series.counts)) == ([5], [5], [20])
    assert (series.mins[0], series.maxs[0], series.values[0], series.ts[0]) == (0.0, 19.0, 19.0, 119.0)


# --- summaries ----------------------------------------------------------------------------------------------------

async def test_summaries_in_sql_equal_the_python_definition(store: Store) -> None:
    rng = random.Random(11)
    run_id, _ = await store.create_run(new_run())
    points = []
    for i in range(4000):
        key = rng.choice(["loss", "acc", "lr", "nan_only"])
        value = NAN if key == "nan_only" else rng.choice([NAN, INF, -INF, rng.uniform(-1, 1), rng.uniform(-1, 1)])
        points.append((rng.choice([0, 0, 1, 3]), key, rng.randrange(0, 300), value, 1000.0 + rng.randrange(0, 50)))
    await log(store, run_id, points)
    by_series: dict[tuple[str, int], list[tuple[int, float, float]]] = {}
    for rank, key, step, value, ts in points:
        by_series.setdefault((key, rank), []).append((step, value, ts))

    summaries = await store.metric_summaries(run_id)
    assert [(s.key, s.rank) for s in summaries] == sorted(by_series)
    names = await store.metric_series_names(run_id)
    assert [(key, rank) for _, key, rank in names] == sorted(by_series)
    for summary in summaries:
        want = python_summary(by_series[(summary.key, summary.rank)])
        assert_same_summary(summary_tuple(summary), want)
        series = await store.metric_series(run_id, summary.key, summary.rank)
        assert_same_summary(summary_tuple(series.summary()), want)
        buckets = await store.metric_series(run_id, summary.key, summary.rank, max_points=10)
        assert_same_summary(summary_tuple(buckets.summary()), want)

    only = await store.metric_summaries(run_id, "loss", rank=3)
    assert [(s.key, s.rank) for s in only] == [("loss", 3)]
    assert await store.metric_series_names(run_id, "loss", rank=2) == []
    assert await store.metric_series_names(run_id, "nope") == []


async def test_summaries_of_several_runs_keep_each_runs_series(store: Store) -> None:
    a, _ = await store.create_run(new_run(key="a"))
    b, _ = await store.create_run(new_run(key="b"))
    await log(store, a, [(0, "loss", 0, 1.0, 1.0), (0, "loss", 1, 0.5, 2.0)])
    await log(store, b, [(0, "loss", 0, 3.0, 1.0)])
    found = {s.run_id: summary_tuple(s) for s in await store.metric_summaries([a, b], "loss")}
    assert found == {a: (2, 0.5, 1.0, 0.5, 1), b: (1, 3.0, 3.0, 3.0, 0)}


# --- exactly once -------------------------------------------------------------------------------------------------

async def test_a_resent_batch_and_an_overlapping_one_store_each_point_once(store: Store) -> None:
    run_id, _ = await store.create_run(new_run())
    batch = [(0, "loss", step, step * 1.0, 10.0 + step) for step in range(100)]
    await log(store, run_id, batch)
    await log(store, run_id, batch)                                             # resent whole
    await log(store, run_id, [(0, "loss", s, 99.0, 50.0 + s) for s in range(50, 150)], first_seq=50)   # half resent
    await log(store, run_id, batch[:10], attempt=2)                             # another attempt: its own lines
    await log(store, run_id, [(1, "loss", 0, 7.0, 10.0)])                       # another rank: its own lines
    series = await store.metric_series(run_id, "loss", 0)
    assert series.total == 100 + 50 + 10
    resent = [(step, value) for step, value in zip(series.steps, series.values) if 50 <= step < 100]
    assert resent == [(step, float(step)) for step in range(50, 100)], "a resent line changes nothing"
    assert sum(s.count for s in await store.metric_summaries(run_id)) == 161
    record_lines = await store._all("SELECT count(*) FROM metric_records WHERE run_id = ?", (run_id,))
    assert record_lines == [(150 + 10 + 1,)]


async def test_params_and_tags_of_a_resent_line_are_upserted_not_doubled(store: Store) -> None:
    run_id, _ = await store.create_run(new_run())
    for _ in range(2):
        await store.append_metrics(run_id, 1, [(0, 0, "loss", 0, 1.0, 1.0)], {"lr": "0.1"}, {"stage": "a"})
    assert await store.params(run_id) == {"lr": "0.1"}
    assert (await store.metric_series(run_id, "loss", 0)).total == 1


# --- through a real head and the CLI ------------------------------------------------------------------------------

SCRIPT = """
from runyard import Run
run = Run.get_context()
special = {3: float("nan"), 4: float("inf"), 5: float("-inf")}
for step in range(200):
    run.log_metrics({"loss": special.get(step, 1000.0 - step), "acc": step / 200}, step=step)
"""


@pytest.mark.timeout(180)
def test_packed_series_and_points_through_the_head_and_the_cli(cluster: Cluster, tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "log.py").write_text(SCRIPT)
    done = cluster.cli("submit", str(code), "--", "python", "log.py", timeout_s=120)
    assert done.returncode == 0, done.stderr
    run_id = done.stderr.split("run ", 1)[1].split()[0]

    client = cluster.client()
    found = client.metrics(run_id, "loss")
    (series,) = found.series
    assert (series.key, series.total, list(series.steps)) == ("loss", 200, list(range(200)))
    assert [repr(v) for v in series.values[2:7]] == ["998.0", "nan", "inf", "-inf", "994.0"]
    assert not found.points and not series.first_steps
    (summary,) = found.summaries
    assert (summary.count, summary.min, summary.max, summary.last, summary.last_step) == (200, -INF, INF, 801.0, 199)

    buckets = client.metrics(run_id, "loss", max_points=10).series[0]
    assert (len(buckets.steps), sum(buckets.counts), buckets.total) == (10, 200, 200)
    assert (list(buckets.first_steps[:2]), list(buckets.steps[:2])) == ([0, 20], [19, 39])
    assert (buckets.mins[0], buckets.maxs[0], buckets.values[0]) == (-INF, INF, 981.0)

    old = client._stub.GetMetrics(pb.MetricsRequest(run_id=run_id, key="loss"), **client._kw())   # an older client
    assert not old.series and [p.step for p in old.points] == list(range(200))
    summaries_only = client.metrics(run_id, summaries_only=True)
    assert not summaries_only.series and [s.key for s in summaries_only.summaries] == ["acc", "loss"]

    shown = cluster.json("metrics", run_id, "--key", "loss", "--points", "10")
    assert len(shown["points"]) == 10
    assert shown["points"][0] == {"key": "loss", "value": 981.0, "step": 19, "ts": shown["points"][0]["ts"],
                                  "rank": 0, "min": "-Infinity", "max": "Infinity", "first_step": 0, "count": 20}
    whole = cluster.json("metrics", run_id, "--key", "loss")
    assert [p["value"] for p in whole["points"][3:6]] == ["NaN", "Infinity", "-Infinity"]
    assert whole["summaries"][0]["count"] == 200       # integers are JSON numbers
    csv_lines = cluster.cli("metrics", run_id, "--key", "acc", "--points", "4", "-o", "csv", check=True).stdout.splitlines()
    assert csv_lines[0] == "key,step,value,ts,min,max,first_step,count" and len(csv_lines) == 5
    assert csv_lines[1].startswith("acc,49,0.245,") and csv_lines[1].endswith(",0.0,0.245,0,50")
    table = cluster.cli("metrics", run_id, "--key", "loss", "--points", "5", check=True).stdout
    assert "FIRST STEP" in table and "COUNT" in table and len(table.splitlines()) == 6
    refused = cluster.cli("metrics", run_id, "--key", "loss", "--points", "0")
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    shutil.rmtree(code)
