"""Queue order and fair share: priority first, then the workspace that used the cluster least, then FIFO."""

from __future__ import annotations

import math

import pytest

from scheduler.fairshare import Queued, Usage, decayed_usage, queue_order

HOUR = 3600.0


def q(run_id: str, workspace: str = "a", *, priority: int = 200, at: float = 0.0, cluster: str = "c") -> Queued:
    return Queued(run_id, workspace, cluster, priority, at)


ORDER_CASES: dict[str, tuple[list[Queued], dict[tuple[str, str], float], list[str]]] = {
    "fifo within a workspace": ([q("r2", at=2), q("r1", at=1), q("r3", at=3)], {}, ["r1", "r2", "r3"]),
    "higher priority first": ([q("low", priority=100, at=1), q("high", priority=300, at=3), q("mid", at=2)], {},
                              ["high", "mid", "low"]),
    "admin integer priority sits between": ([q("high", priority=300), q("x", priority=250, at=1), q("mid", at=0)], {},
                                            ["high", "x", "mid"]),
    "least used workspace first": (
        [q("a1", "a", at=1), q("b1", "b", at=2), q("a2", "a", at=3)], {("a", "c"): 100.0, ("b", "c"): 5.0},
        ["b1", "a1", "a2"],
    ),
    "unused workspace beats a used one": ([q("a1", "a", at=1), q("new", "n", at=9)], {("a", "c"): 1.0}, ["new", "a1"]),
    "priority beats fair share": (
        [q("b1", "b", at=1), q("a1", "a", priority=300, at=2)], {("a", "c"): 1e9}, ["a1", "b1"],
    ),
    "use in another cluster does not count": (
        [q("a1", "a", at=1), q("b1", "b", at=2)], {("a", "other"): 1e9}, ["a1", "b1"],
    ),
    "equal use falls back to fifo": (
        [q("b1", "b", at=2), q("a1", "a", at=1)], {("a", "c"): 7.0, ("b", "c"): 7.0}, ["a1", "b1"],
    ),
}


@pytest.mark.parametrize("case", list(ORDER_CASES), ids=list(ORDER_CASES))
def test_queue_order(case: str) -> None:
    queued, usage, expected = ORDER_CASES[case]
    assert [r.run_id for r in queue_order(queued, usage)] == expected


NOW = 100 * HOUR
USAGE_CASES: dict[str, tuple[list[Usage], float]] = {
    "one GPU-hour just ended counts about 1 hour": ([Usage("a", "c", 1, NOW - HOUR, NOW)], HOUR * (1 - 2 ** (-1 / 24)) * 24 / math.log(2)),
    "a running attempt counts up to now": ([Usage("a", "c", 2, NOW - HOUR, None)], 2 * HOUR * (1 - 2 ** (-1 / 24)) * 24 / math.log(2)),
    "one half-life ago counts half": ([Usage("a", "c", 1, NOW - 24 * HOUR - 1, NOW - 24 * HOUR)], 0.5),
    "two half-lives ago counts a quarter": ([Usage("a", "c", 4, NOW - 48 * HOUR - 1, NOW - 48 * HOUR)], 1.0),
    "cpu-only runs cost nothing": ([Usage("a", "c", 0, NOW - HOUR, NOW)], 0.0),
    "usage adds up": ([Usage("a", "c", 1, NOW - 2, NOW - 1), Usage("a", "c", 1, NOW - 1, NOW)], 2.0),
}


@pytest.mark.parametrize("case", list(USAGE_CASES), ids=list(USAGE_CASES))
def test_decayed_usage(case: str) -> None:
    usages, expected = USAGE_CASES[case]
    got = decayed_usage(usages, NOW, half_life_s=24 * HOUR).get(("a", "c"), 0.0)
    assert got == pytest.approx(expected, rel=1e-3, abs=1e-6)


def test_recent_use_outweighs_older_heavier_use() -> None:
    usages = [Usage("old", "c", 8, NOW - 10 * 24 * HOUR - HOUR, NOW - 10 * 24 * HOUR),
              Usage("recent", "c", 1, NOW - HOUR, NOW)]
    usage = decayed_usage(usages, NOW, half_life_s=24 * HOUR)
    assert usage[("recent", "c")] > usage[("old", "c")]
    ordered = queue_order([q("r", "recent", at=1), q("o", "old", at=2)], usage)
    assert [r.run_id for r in ordered] == ["o", "r"]
