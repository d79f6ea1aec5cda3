"""The MLflow API's reads (`store/tracking.py`) over a real store: latest metric per key, histories in pages,
sampled steps, searches within one workspace."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from scheduler import mlflow_search as s
from scheduler.mlflow_api import sample_steps
from scheduler.store import Store
from tests.test_store import new_run, open_store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await open_store(tmp_path / "head")
    yield opened
    await opened.close()


async def test_latest_metrics_per_key_of_rank_zero(store: Store) -> None:
    one, _ = await store.create_run(new_run())
    two, _ = await store.create_run(new_run())
    await store.append_metrics(one, 1, [
        (0, 1, "loss", 0, 0.9, 1.0), (0, 2, "loss", 3, 0.5, 2.0), (0, 3, "loss", 3, 0.4, 3.0),   # same step: later
        (0, 4, "acc", 1, math.nan, 1.0), (1, 1, "loss", 9, 0.0, 9.0), (1, 2, "rank1only", 1, 1.0, 1.0),
    ], {"lr": "0.1"}, {})
    await store.append_metrics(two, 1, [(0, 1, "loss", 0, 2.0, 1.0)], {}, {})
    found = await store.latest_metrics([one, two, "missing"])
    assert [(p.key, p.value, p.step) for p in found[one] if p.key == "loss"] == [("loss", 0.4, 3)]
    assert [p.key for p in found[one]] == ["acc", "loss"] and math.isnan(found[one][0].value)
    assert [(p.key, p.value) for p in found[two]] == [("loss", 2.0)]
    assert "missing" not in found
    assert await store.params_of([one, two]) == {one: {"lr": "0.1"}}


async def test_history_pages_follow_steps(store: Store) -> None:
    run, _ = await store.create_run(new_run())
    await store.append_metrics(run, 1, [(0, seq, "loss", 10 - seq, float(seq), float(seq)) for seq in range(10)],
                               {}, {})
    await store.append_metrics(run, 2, [(0, 0, "loss", 0, 99.0, 50.0)], {}, {})
    steps: list[int] = []
    after = None
    while True:
        page = await store.metric_history(run, "loss", after=after, limit=3)
        steps += [p.step for p in page]
        if len(page) < 3:
            break
        after = [page[-1].step, page[-1].ts, page[-1].attempt, page[-1].seq]
    assert steps == list(range(11))
    assert await store.metric_steps(run, "loss", 3, 5) == [3, 4, 5]
    assert [p.step for p in await store.metric_points_at(run, "loss", [1, 10])] == [1, 10]


async def test_search_stays_in_the_workspace(store: Store) -> None:
    await store.ensure_workspace("other")
    mine, _ = await store.create_run(new_run())
    await store.create_run(new_run("other"))
    query = s.compile_runs(s.parse_filter("tags.team = 'vision'"), [])
    found = await store.search_runs("default", ["mnist"], query.where, query.args, query.order, query.order_args,
                                    limit=10, offset=0)
    assert [r.id for r in found] == [mine]
    assert [e.name for e in await store.search_experiments("default", "", [], limit=10, offset=0)] == ["mnist"]
    assert await store.experiment("other", "mnist") is not None and await store.experiment("third", "mnist") is None


@pytest.mark.parametrize("steps, most, expected", [
    ([], 3, []), ([1, 2], 3, [1, 2]), (list(range(10)), 2, [0, 9]), (list(range(10)), 4, [0, 3, 6, 9]),
    (list(range(10)), 1, [9]),
])
def test_sampled_steps_keep_both_ends(steps: list[int], most: int, expected: list[int]) -> None:
    assert sample_steps(steps, most) == expected
