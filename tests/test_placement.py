"""Placement: which queued run goes on which node, over fixtures of nodes x requests.

Every plan is also checked against the invariants a user relies on whatever the policy: nothing over-committed,
GPU indices real, free and disjoint, every run either placed once or given a reason.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import pytest

from scheduler.core.lifecycle import Pending, PendingKind
from scheduler.placement import NodeView, Plan, Request, Running, minor_versions, never_fits, place

GiB = 1024**3


def node(
    name: str,
    *,
    cluster: str = "c",
    cpus: float = 8,
    memory: int = 32 * GiB,
    gpus: int = 0,
    cpus_free: float | None = None,
    memory_free: int | None = None,
    gpus_free: Sequence[int] | None = None,
    schedulable: bool = True,
    labels: dict[str, str] | None = None,
    gpu_model: str = "A100",
    gpu_memory: int = 80 * GiB,
    pythons: Sequence[str] | None = None,
    builders: Sequence[str] | None = None,
    built: Sequence[str] = (),
) -> NodeView:
    return NodeView(
        id=f"id-{name}",
        name=name,
        cluster=cluster,
        cpus_free=cpus if cpus_free is None else cpus_free,
        memory_free=memory if memory_free is None else memory_free,
        gpus_free=tuple(range(gpus)) if gpus_free is None else tuple(gpus_free),
        cpus_total=cpus,
        memory_total=memory,
        gpus_total=gpus,
        schedulable=schedulable,
        labels=labels or {},
        gpu_specs=tuple((i, gpu_model, gpu_memory) for i in range(gpus)),
        pythons=None if pythons is None else frozenset(pythons),
        builders=None if builders is None else frozenset(builders),
        env_hashes=frozenset(built),
    )


def run(
    run_id: str, *, cluster: str = "c", cpus: float = 1, memory: int = GiB, gpus: int = 0, nodes: int = 1,
    workspace: str = "ws", gpu_model: str = "", gpu_memory: int = 0, labels: dict[str, str] | None = None,
    timeout: float = 0.0, env: str = "", python: str = "", conda: bool = False, image: bool = False,
) -> Request:
    return Request(
        run_id=run_id, cluster=cluster, cpus=cpus, memory_bytes=memory, gpus=gpus, nodes=nodes, workspace=workspace,
        gpu_model=gpu_model, gpu_memory_bytes=gpu_memory, labels=tuple(sorted((labels or {}).items())),
        timeout_s=timeout, env_hash=env, python=python, conda=conda, image=image,
    )


def checked_place(
    queue: Sequence[Request], nodes: Sequence[NodeView], *, running: Sequence[Running] = (), now: float = 0.0,
    quotas: dict[tuple[str, str], int] | None = None,
) -> Plan:
    """`place()`, plus the invariants every plan must hold."""
    plan = place(queue, nodes, running=running, now=now, quotas=quotas)
    by_id = {n.id: n for n in nodes}
    requests = {r.run_id: r for r in queue}
    placed = [p.run_id for p in plan.placements]
    for run_id in set(placed):
        on = [p.node_id for p in plan.placements if p.run_id == run_id]
        assert len(on) == len(set(on)) == requests[run_id].nodes, f"{run_id} not placed on exactly its nodes: {on}"
        ranks = sorted(p.rank for p in plan.placements if p.run_id == run_id)
        assert ranks == list(range(requests[run_id].nodes)), f"{run_id} ranks {ranks}"
    assert set(placed) | set(plan.pending) == set(requests), "a run was neither placed nor given a reason"
    assert not set(placed) & set(plan.pending), "a run was both placed and left pending"
    assert all(plan.pending[r] for r in plan.pending), "a pending run without a reason"
    cpus: dict[str, float] = defaultdict(float)
    memory: dict[str, int] = defaultdict(int)
    gpus: dict[str, list[int]] = defaultdict(list)
    for p in plan.placements:
        req, target = requests[p.run_id], by_id[p.node_id]
        assert target.schedulable, f"{p.run_id} placed on unschedulable {target.name}"
        assert target.cluster == req.cluster, f"{p.run_id} placed in another cluster"
        assert len(p.gpu_indices) == req.gpus, f"{p.run_id} got {p.gpu_indices} for {req.gpus} GPUs"
        cpus[p.node_id] += req.cpus
        memory[p.node_id] += req.memory_bytes
        gpus[p.node_id].extend(p.gpu_indices)
    for node_id, used in gpus.items():
        assert len(used) == len(set(used)), f"GPU indices {used} handed out twice on {node_id}"
        assert set(used) <= set(by_id[node_id].gpus_free), f"GPU indices {used} not free on {node_id}"
    for node_id in cpus:
        assert cpus[node_id] <= by_id[node_id].cpus_free + 1e-9, f"CPUs over-committed on {node_id}"
        assert memory[node_id] <= by_id[node_id].memory_free, f"memory over-committed on {node_id}"
    return plan


def where(plan: Plan) -> dict[str, str]:
    """run id -> node name (ids are `id-<name>`)."""
    return {p.run_id: p.node_id.removeprefix("id-") for p in plan.placements}


# --- who goes where ---------------------------------------------------------------------------------------------

CASES: dict[str, tuple[list[NodeView], list[Request], dict[str, str]]] = {
    "cpu run goes to the node it fits on": (
        [node("small", cpus=2), node("big", cpus=16)],
        [run("r1", cpus=4)],
        {"r1": "big"},
    ),
    "memory decides too": (
        [node("lowmem", cpus=16, memory=4 * GiB), node("highmem", cpus=4, memory=64 * GiB)],
        [run("r1", cpus=2, memory=16 * GiB)],
        {"r1": "highmem"},
    ),
    "gpu run goes to the only node with GPUs": (
        [node("cpu", cpus=64), node("gpu", cpus=8, gpus=2)],
        [run("r1", gpus=1)],
        {"r1": "gpu"},
    ),
    "gpu best fit keeps the whole node free": (
        [node("eight", gpus=8), node("two", gpus=2)],
        [run("small", gpus=2), run("whole", gpus=8)],
        {"small": "two", "whole": "eight"},
    ),
    "gpu best fit counts free GPUs, not total": (
        [node("a", gpus=8, gpus_free=(5, 6, 7)), node("b", gpus=4)],
        [run("r1", gpus=3)],
        {"r1": "a"},
    ),
    "gpu best fit skips nodes with too few free GPUs": (
        [node("one", gpus=1), node("four", gpus=4), node("eight", gpus=8)],
        [run("r1", gpus=2)],
        {"r1": "four"},
    ),
    "cpu run prefers a node without free GPUs": (
        [node("gpu", cpus=64, gpus=4), node("cpu", cpus=4)],
        [run("r1", cpus=2)],
        {"r1": "cpu"},
    ),
    "cpu run may use a GPU node whose GPUs are all taken": (
        [node("gpu-full", cpus=64, gpus=4, gpus_free=()), node("gpu-free", cpus=64, gpus=4)],
        [run("r1", cpus=2)],
        {"r1": "gpu-full"},
    ),
    "cpu run falls back to a GPU node when CPU nodes are full": (
        [node("gpu", cpus=64, gpus=4), node("cpu", cpus=4, cpus_free=1)],
        [run("r1", cpus=2)],
        {"r1": "gpu"},
    ),
    "cpu runs spread to the node with the most free CPUs": (
        [node("a", cpus=8), node("b", cpus=8, cpus_free=3)],
        [run("r1", cpus=2)],
        {"r1": "a"},
    ),
    "unschedulable node is skipped": (
        [node("cordoned", cpus=64, schedulable=False), node("open", cpus=4)],
        [run("r1", cpus=2)],
        {"r1": "open"},
    ),
    "node of another cluster is not used": (
        [node("other", cluster="x", cpus=64), node("mine", cluster="c", cpus=4)],
        [run("r1", cpus=2, cluster="c")],
        {"r1": "mine"},
    ),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_placement_picks_the_expected_node(case: str) -> None:
    nodes, queue, expected = CASES[case]
    plan = checked_place(queue, nodes)
    assert where(plan) == expected
    assert plan.pending == {}


# --- nothing is over-committed in one pass -----------------------------------------------------------------------

CAPACITY_CASES: dict[str, tuple[list[NodeView], list[Request], int]] = {
    "cpus": ([node("n", cpus=8)], [run(f"r{i}", cpus=2) for i in range(5)], 4),
    "fractional cpus": ([node("n", cpus=1)], [run(f"r{i}", cpus=0.3) for i in range(4)], 3),
    "memory": ([node("n", cpus=64, memory=16 * GiB)], [run(f"r{i}", memory=6 * GiB) for i in range(3)], 2),
    "gpus": ([node("n", cpus=64, gpus=4)], [run(f"r{i}", gpus=2) for i in range(3)], 2),
    "gpus across nodes": (
        [node("a", cpus=64, gpus=2), node("b", cpus=64, gpus=3)],
        [run(f"r{i}", gpus=1) for i in range(6)],
        5,
    ),
    "partly used node": (
        [node("n", cpus=8, cpus_free=3, memory=32 * GiB, memory_free=3 * GiB, gpus=4, gpus_free=(2,))],
        [run("r0", cpus=1, memory=GiB, gpus=1), run("r1", cpus=1, memory=GiB, gpus=1)],
        1,
    ),
    "several nodes of mixed size": (
        [node("a", cpus=4, memory=8 * GiB), node("b", cpus=6, memory=8 * GiB), node("c2", cpus=2, memory=2 * GiB)],
        [run(f"r{i}", cpus=2, memory=2 * GiB) for i in range(8)],
        6,
    ),
}


@pytest.mark.parametrize("case", list(CAPACITY_CASES), ids=list(CAPACITY_CASES))
def test_one_pass_never_over_commits(case: str) -> None:
    nodes, queue, fitting = CAPACITY_CASES[case]
    plan = checked_place(queue, nodes)
    assert [p.run_id for p in plan.placements] == [r.run_id for r in queue[:fitting]]
    assert set(plan.pending) == {r.run_id for r in queue[fitting:]}


def test_gpu_indices_are_disjoint_and_exactly_as_many_as_asked() -> None:
    nodes = [node("n", cpus=64, gpus=8, gpus_free=(0, 2, 3, 5, 6, 7))]
    queue = [run("a", gpus=1), run("b", gpus=3), run("c", gpus=2)]
    plan = checked_place(queue, nodes)
    indices = {p.run_id: p.gpu_indices for p in plan.placements}
    assert {k: len(v) for k, v in indices.items()} == {"a": 1, "b": 3, "c": 2}
    assert sorted(i for v in indices.values() for i in v) == [0, 2, 3, 5, 6, 7]


def test_cpu_run_gets_no_gpu_indices() -> None:
    plan = checked_place([run("r1")], [node("gpu", gpus=4)])
    assert plan.placements[0].gpu_indices == ()


def test_gpu_runs_fill_one_node_before_breaking_into_a_whole_one() -> None:
    nodes = [node("whole", gpus=8), node("half", gpus=8, gpus_free=(4, 5, 6, 7))]
    queue = [run(f"r{i}", gpus=1) for i in range(4)] + [run("big", gpus=8)]
    plan = checked_place(queue, nodes)
    assert where(plan) == {"r0": "half", "r1": "half", "r2": "half", "r3": "half", "big": "whole"}


# --- FIFO per cluster -------------------------------------------------------------------------------------------


def test_blocked_run_blocks_later_runs_of_its_cluster() -> None:
    nodes = [node("n", cpus=8, cpus_free=2)]
    queue = [run("big", cpus=4), run("small1", cpus=1), run("small2", cpus=1)]
    plan = checked_place(queue, nodes)
    assert plan.placements == ()
    assert plan.pending["small1"].text == "1 run ahead in cluster c; cannot backfill: it has no time limit"
    assert plan.pending["small2"].text == "2 runs ahead in cluster c; cannot backfill: it has no time limit"
    assert "big" in plan.pending and "ahead" not in plan.pending["big"].text
    assert [plan.pending[r].kind for r in ("big", "small1", "small2")] == [
        PendingKind.CAPACITY, PendingKind.BEHIND, PendingKind.BEHIND]


def test_runs_before_the_blocked_one_are_placed() -> None:
    nodes = [node("n", cpus=8, cpus_free=3)]
    queue = [run("first", cpus=2), run("big", cpus=4), run("small", cpus=1)]
    plan = checked_place(queue, nodes)
    assert where(plan) == {"first": "n"}
    assert plan.pending["small"].text.startswith("1 run ahead in cluster c")


def test_a_blocked_cluster_does_not_hold_up_another() -> None:
    nodes = [node("a1", cluster="a", cpus=8, cpus_free=1), node("b1", cluster="b", cpus=8)]
    queue = [run("a-big", cluster="a", cpus=4), run("b-run", cluster="b", cpus=4), run("a-small", cluster="a", cpus=1)]
    plan = checked_place(queue, nodes)
    assert where(plan) == {"b-run": "b1"}
    assert plan.pending["a-small"].text.startswith("1 run ahead in cluster a")


def test_runs_of_a_cluster_without_nodes_do_not_block_others() -> None:
    queue = [run("lost", cluster="nowhere"), run("ok", cluster="c")]
    plan = checked_place(queue, [node("n")])
    assert where(plan) == {"ok": "n"}
    assert plan.pending["lost"].text.startswith("no node in cluster nowhere is up")
    assert plan.pending["lost"].kind is PendingKind.NO_NODE


# --- pending reasons --------------------------------------------------------------------------------------------


def test_no_node_up_reason() -> None:
    plan = checked_place([run("r1", cluster="gpu-pool")], [])
    assert plan.pending["r1"].text.startswith("no node in cluster gpu-pool is up")


def test_only_unschedulable_nodes_is_no_node_up() -> None:
    plan = checked_place([run("r1")], [node("n", cpus=64, schedulable=False)])
    assert plan.placements == ()
    assert plan.pending["r1"].text.startswith("no node in cluster c is up")
    assert plan.pending["r1"].kind is PendingKind.NO_NODE


def test_can_hold_reason_names_the_largest_node() -> None:
    nodes = [node("small", cpus=4, memory=8 * GiB), node("large", cpus=16, memory=64 * GiB, gpus=2)]
    plan = checked_place([run("r1", cpus=64, memory=8 * GiB)], nodes)
    reason = plan.pending["r1"].text
    assert reason.startswith("no node in cluster c can hold 64 CPUs")
    assert "largest: large with 16 CPUs" in reason and "2 GPUs" in reason


def test_can_hold_reason_for_too_many_gpus() -> None:
    nodes = [node("g4", gpus=4), node("g8", gpus=8, gpus_free=())]
    plan = checked_place([run("r1", gpus=16)], nodes)
    reason = plan.pending["r1"].text
    assert "can hold" in reason and "16 GPUs" in reason and "largest: g8" in reason and "8 GPUs" in reason


def test_waiting_for_gpus_reason_names_the_node_with_most_free() -> None:
    nodes = [node("a", gpus=8, gpus_free=(0,)), node("b", gpus=8, gpus_free=(1, 2, 3))]
    plan = checked_place([run("r1", gpus=4)], nodes)
    reason = plan.pending["r1"].text
    assert reason.startswith("waiting for 4 GPUs on one node in cluster c")
    assert reason.endswith("largest free: 3 on b")


def test_waiting_for_cpus_reason() -> None:
    nodes = [node("a", cpus=8, cpus_free=1), node("b", cpus=8, cpus_free=2.5)]
    plan = checked_place([run("r1", cpus=4)], nodes)
    reason = plan.pending["r1"].text
    assert reason.startswith("waiting for 4 CPUs") and "largest free: 2.5 CPUs" in reason and reason.endswith("on b")


def test_unschedulable_nodes_are_not_named_in_reasons() -> None:
    nodes = [node("cordoned", gpus=8, schedulable=False), node("open", gpus=8, gpus_free=(0,))]
    plan = checked_place([run("r1", gpus=2)], nodes)
    assert plan.pending["r1"].text.endswith("largest free: 1 on open")


def test_gpu_run_short_of_cpus_is_not_told_it_waits_for_gpus() -> None:
    nodes = [node("n", cpus=8, cpus_free=1, gpus=4)]
    plan = checked_place([run("r1", cpus=4, gpus=1)], nodes)
    reason = plan.pending["r1"].text
    # All 4 GPUs are free: the run waits for CPUs, and the reason must say so instead of
    # "waiting for 1 GPUs on one node ...; largest free: 4 on n".
    assert "waiting for 1 GPUs" not in reason
    assert "CPUs" in reason


# --- GPU model, GPU memory and node labels ----------------------------------------------------------------------

FILTER_CASES: dict[str, tuple[list[NodeView], list[Request], dict[str, str]]] = {
    "gpu model picks the node with that model": (
        [node("v100", gpus=8, gpu_model="Tesla V100"), node("a100", gpus=8, gpu_model="NVIDIA A100-SXM4")],
        [run("r1", gpus=1, gpu_model="a100")],
        {"r1": "a100"},
    ),
    "gpu memory skips smaller GPUs": (
        [node("small", gpus=2, gpu_memory=16 * GiB), node("large", gpus=8, gpu_memory=80 * GiB)],
        [run("r1", gpus=1, gpu_memory=40 * GiB)],
        {"r1": "large"},
    ),
    "labels pick the node carrying all of them": (
        [node("plain", cpus=64), node("ib", cpus=8, labels={"net": "ib"}), node("both", cpus=4, labels={"net": "ib", "zone": "a"})],
        [run("r1", labels={"net": "ib", "zone": "a"}), run("r2", labels={"net": "ib"})],
        {"r1": "both", "r2": "ib"},
    ),
}


@pytest.mark.parametrize("case", list(FILTER_CASES), ids=list(FILTER_CASES))
def test_filters_pick_the_expected_node(case: str) -> None:
    nodes, queue, expected = FILTER_CASES[case]
    assert where(checked_place(queue, nodes)) == expected


def test_mixed_gpus_on_one_node_hand_out_only_matching_indices() -> None:
    mixed = NodeView("id-m", "m", "c", 64, 512 * GiB, (0, 1, 2, 3), 64, 512 * GiB, 4,
                     gpu_specs=((0, "T4", 16 * GiB), (1, "A100", 80 * GiB), (2, "T4", 16 * GiB), (3, "A100", 80 * GiB)))
    plan = checked_place([run("r1", gpus=2, gpu_model="A100"), run("r2", gpus=1, gpu_model="A100")], [mixed])
    assert plan.placements[0].gpu_indices == (1, 3)
    assert plan.pending["r2"].text.startswith("waiting for 1 A100 GPUs on one node in cluster c; largest free: 0 on m")


def test_no_node_with_the_labels_says_so() -> None:
    plan = checked_place([run("r1", labels={"zone": "b"})], [node("a", labels={"zone": "a"})])
    assert plan.pending["r1"].text == "no node in cluster c has the labels zone=b"


def test_no_node_with_the_gpu_model_says_what_there_is() -> None:
    plan = checked_place([run("r1", gpus=1, gpu_model="H100")], [node("a", gpus=8, gpu_model="A100")])
    assert plan.pending["r1"].text.startswith("no node in cluster c can hold 1 CPUs, 1.0G, 1 H100 GPUs")
    assert "(A100 80.0G)" in plan.pending["r1"].text


# --- gangs: all nodes at once or none ---------------------------------------------------------------------------


def test_gang_gets_distinct_nodes_with_ranks() -> None:
    nodes = [node("a", gpus=4), node("b", gpus=4), node("c1", gpus=4)]
    plan = checked_place([run("g", gpus=4, nodes=2)], nodes)
    assert sorted(p.node_id for p in plan.placements) == ["id-a", "id-b"]
    assert [p.rank for p in plan.placements] == [0, 1]


def test_gang_that_does_not_fit_whole_takes_nothing() -> None:
    nodes = [node("a", gpus=4), node("b", gpus=4, gpus_free=(0,))]
    plan = checked_place([run("g", gpus=4, nodes=2), run("later", gpus=1)], nodes)
    assert plan.placements == ()
    assert plan.pending["g"].text == "waiting for 2 nodes with 1 CPUs, 1.0G, 4 GPUs each in cluster c; 1 fit now"
    assert plan.pending["later"].text.startswith("1 run ahead in cluster c")


def test_gang_larger_than_the_cluster_never_fits() -> None:
    plan = checked_place([run("g", gpus=1, nodes=3)], [node("a", gpus=4), node("b", gpus=4)])
    assert plan.pending["g"].text.startswith("cluster c has only 2 nodes that can hold")
    assert plan.pending["g"].kind is PendingKind.UNFIT, "a gang that can never fit reserves nothing"


# --- quotas ------------------------------------------------------------------------------------------------------

QUOTA_CASES: dict[str, tuple[list[Running], list[Request], set[str], dict[str, str]]] = {
    "under quota starts": ([], [run("r1", gpus=2, workspace="team-b")], {"r1"}, {}),
    "over quota waits with the reason": (
        [Running("id-x", "team-b", "c", 1, GiB, (0, 1, 2, 3, 4, 5, 6, 7))],
        [run("r1", gpus=1, workspace="team-b")],
        set(),
        {"r1": "over quota: team-b uses 8 of 8 GPUs in c"},
    ),
    "runs placed in the same pass count": (
        [],
        [run("r1", gpus=6, workspace="team-b"), run("r2", gpus=4, workspace="team-b")],
        {"r1"},
        {"r2": "over quota: team-b uses 6 of 8 GPUs in c"},
    ),
    "a gang counts every node": ([], [run("g", gpus=4, nodes=3, workspace="team-b")], set(), {"g": "over quota: team-b uses 0 of 8 GPUs in c"}),
    "an over-quota run blocks nobody": (
        [Running("id-x", "team-b", "c", 1, GiB, tuple(range(8)))],
        [run("r1", gpus=1, workspace="team-b"), run("r2", gpus=1, workspace="team-a")],
        {"r2"},
        {"r1": "over quota: team-b uses 8 of 8 GPUs in c"},
    ),
    "cpu runs ignore the GPU quota": (
        [Running("id-x", "team-b", "c", 1, GiB, tuple(range(8)))], [run("r1", workspace="team-b")], {"r1"}, {},
    ),
    "another cluster's use does not count": (
        [Running("id-x", "team-b", "other", 1, GiB, tuple(range(8)))], [run("r1", gpus=1, workspace="team-b")], {"r1"}, {},
    ),
}


@pytest.mark.parametrize("case", list(QUOTA_CASES), ids=list(QUOTA_CASES))
def test_gpu_quota(case: str) -> None:
    running, queue, placed, pending = QUOTA_CASES[case]
    nodes = [node(f"n{i}", cpus=64, gpus=8) for i in range(4)]
    plan = checked_place(queue, nodes, running=running, quotas={("team-b", "c"): 8})
    assert {p.run_id for p in plan.placements} == placed
    assert {run_id: p.text for run_id, p in plan.pending.items()} == pending
    assert all(p.kind is PendingKind.QUOTA for p in plan.pending.values())
    assert not set(pending) & set(plan.waiting), "an over-quota run is no reason to add nodes"


# --- backfill ----------------------------------------------------------------------------------------------------
# One node with 8 GPUs, 6 of them held by a run whose time limit ends at t=100 (now is 0). A run asking for all 8
# is blocked and reserved to start at 100; the 2 free GPUs may be used only by runs that end before then.

BUSY = [Running("id-n", "ws", "c", 1, GiB, (0, 1, 2, 3, 4, 5), ends_at=100.0)]
BACKFILL_CASES: dict[str, tuple[list[Running], Request, str]] = {
    "ends before the reserved start: backfills": (BUSY, run("small", gpus=2, timeout=60), ""),
    "ends exactly at the reserved start: backfills": (BUSY, run("small", gpus=2, timeout=100), ""),
    "would end after the reserved start: waits": (
        BUSY, run("small", gpus=2, timeout=101),
        "1 run ahead in cluster c; cannot backfill: its time limit would delay run big, reserved to start in 100s",
    ),
    "no time limit: waits": (BUSY, run("small", gpus=2), "1 run ahead in cluster c; cannot backfill: it has no time limit"),
    "reservation waits on a run without a limit: nothing backfills": (
        [Running("id-n", "ws", "c", 1, GiB, (0, 1, 2, 3, 4, 5))], run("small", gpus=2, timeout=1),
        "1 run ahead in cluster c; cannot backfill: run big waits on runs without a time limit",
    ),
    "does not fit now either: its own reason and the runs ahead": (
        BUSY, run("small", gpus=3, timeout=10),
        "waiting for 3 GPUs on one node in cluster c; largest free: 2 on n; 1 run ahead",
    ),
}


@pytest.mark.parametrize("case", list(BACKFILL_CASES), ids=list(BACKFILL_CASES))
def test_backfill(case: str) -> None:
    running, small, reason = BACKFILL_CASES[case]
    nodes = [node("n", cpus=64, gpus=8, gpus_free=(6, 7))]
    plan = checked_place([run("big", gpus=8), small], nodes, running=running)
    assert plan.pending["big"].text.startswith("waiting for 8 GPUs")
    if reason:
        assert plan.pending["small"].text == reason
    else:
        assert where(plan) == {"small": "n"}


def test_backfilled_runs_count_toward_the_reservation() -> None:
    """Backfill only uses the reservation's slack: a run placed now is a release of its own."""
    nodes = [node("n", cpus=64, gpus=8, gpus_free=(6, 7))]
    queue = [run("big", gpus=8), run("s1", gpus=1, timeout=50), run("s2", gpus=1, timeout=99)]
    plan = checked_place(queue, nodes, running=BUSY, now=0.0)
    assert where(plan) == {"s1": "n", "s2": "n"}


def test_reservation_is_later_when_the_blocked_run_needs_several_releases() -> None:
    running = [Running("id-n", "ws", "c", 1, GiB, (0, 1, 2), ends_at=50.0),
               Running("id-n", "ws", "c", 1, GiB, (3, 4, 5), ends_at=200.0)]
    nodes = [node("n", cpus=64, gpus=8, gpus_free=(6, 7))]
    plan = checked_place([run("big", gpus=8), run("small", gpus=2, timeout=150)], nodes, running=running)
    assert where(plan) == {"small": "n"}, "reserved start is 200 (both releases), so 150 s cannot delay it"


# --- environments -----------------------------------------------------------------------------------------------

E1, E2 = "e1" * 32, "e2" * 32

# (nodes, queue, where each run goes, which placements found their environment built)
ENV_CASES: dict[str, tuple[list[NodeView], list[Request], dict[str, str], set[str]]] = {
    "among equal nodes the one with the environment built": (
        [node("a"), node("b", built=[E1]), node("c")],
        [run("r1", env=E1)],
        {"r1": "b"}, {"r1"},
    ),
    "built beats the spread by free CPUs": (
        [node("roomy", cpus=32), node("built", cpus=8, cpus_free=2, built=[E1])],
        [run("r1", cpus=2, env=E1)],
        {"r1": "built"}, {"r1"},
    ),
    "built does not beat GPU best fit: a whole node stays free": (
        [node("whole", gpus=8, built=[E1]), node("two", gpus=2)],
        [run("r1", gpus=2, env=E1)],
        {"r1": "two"}, set(),
    ),
    "built wins among nodes with the same free GPUs left over": (
        [node("a", gpus=4, cpus=32), node("b", gpus=4, cpus=8, built=[E1])],
        [run("r1", gpus=1, env=E1)],
        {"r1": "b"}, {"r1"},
    ),
    "a CPU run still prefers a node without free GPUs to a built GPU node": (
        [node("gpu", gpus=4, built=[E1]), node("cpu")],
        [run("r1", env=E1)],
        {"r1": "cpu"}, set(),
    ),
    "a built node that is full is passed over": (
        [node("built", cpus=8, cpus_free=1, built=[E1]), node("free")],
        [run("r1", cpus=2, env=E1)],
        {"r1": "free"}, set(),
    ),
    "another environment built counts for nothing": (
        [node("a", cpus=16), node("b", built=[E2])],
        [run("r1", env=E1)],
        {"r1": "a"}, set(),
    ),
    "the built node fills, then the next run goes elsewhere": (
        [node("built", cpus=4, built=[E1]), node("other", cpus=16)],
        [run("r1", cpus=4, env=E1), run("r2", cpus=4, env=E1)],
        {"r1": "built", "r2": "other"}, {"r1"},
    ),
    "a run without an environment spreads as before": (
        [node("a", cpus=4, built=[E1]), node("b", cpus=16)],
        [run("r1")],
        {"r1": "b"}, set(),
    ),
    "a gang takes the built nodes first": (
        [node("a", cpus=16), node("b", built=[E1]), node("c", cpus=16), node("d", built=[E1])],
        [run("g", nodes=2, env=E1)],
        {"g": "b,d"}, {"g"},
    ),
    "only nodes with the python asked for": (
        [node("py310", cpus=32, pythons=["3.10"]), node("py311", pythons=["3.10", "3.11"])],
        [run("r1", python="3.11")],
        {"r1": "py311"}, set(),
    ),
    "only nodes with a conda builder for conda packages": (
        [node("uv", cpus=32, builders=["uv"]), node("mamba", builders=["uv", "micromamba"])],
        [run("r1", conda=True)],
        {"r1": "mamba"}, set(),
    ),
    "only nodes with a container runtime for an image": (
        [node("plain", cpus=32, builders=["uv", "conda"]), node("podman", builders=["podman"])],
        [run("r1", image=True)],
        {"r1": "podman"}, set(),
    ),
    "a node that does not say what it has takes anything": (
        [node("unknown")],
        [run("r1", python="3.12", conda=True, image=True)],
        {"r1": "unknown"}, set(),
    ),
}


@pytest.mark.parametrize("case", list(ENV_CASES), ids=list(ENV_CASES))
def test_placement_prefers_nodes_with_the_environment_built(case: str) -> None:
    nodes, queue, expected, built = ENV_CASES[case]

    plan = checked_place(queue, nodes)

    placed: dict[str, list[str]] = defaultdict(list)
    for p in plan.placements:
        placed[p.run_id].append(p.node_id.removeprefix("id-"))
    assert {run_id: ",".join(sorted(names)) for run_id, names in placed.items()} == expected
    assert {p.run_id for p in plan.placements if p.env_built} == built
    assert plan.pending == {}


@pytest.mark.parametrize(("nodes", "request_", "reason"), [
    ([node("a", pythons=["3.10", "3.11"]), node("b", pythons=[])], run("r1", python="3.12"),
     "no node in cluster c has python 3.12 (they have 3.10, 3.11)"),
    ([node("a", pythons=[])], run("r1", python="3.12"), "no node in cluster c has python 3.12 (none reports a python)"),
    ([node("a", builders=["uv"])], run("r1", conda=True),
     "no node in cluster c has a conda builder (micromamba or conda) for its conda packages"),
    ([node("a", builders=["uv"])], run("r1", image=True),
     "no node in cluster c has a container runtime (podman, docker or apptainer) for its image"),
    ([node("a", pythons=["3.11"], builders=["uv"])], run("r1", python="3.12", image=True),
     "no node in cluster c has python 3.12 (they have 3.11); nor a container runtime (podman, docker or apptainer) "
     "for its image"),
    ([node("a", pythons=["3.12"], builders=[]), node("b", pythons=["3.11"], builders=["conda"])],
     run("r1", python="3.12", conda=True),
     "no node in cluster c has all of python 3.12, a conda builder (micromamba or conda) for its conda packages"),
])
def test_a_run_no_node_can_build_says_what_is_missing(nodes: list[NodeView], request_: Request, reason: str) -> None:
    plan = checked_place([request_], nodes)

    assert plan.pending["r1"] == Pending(PendingKind.UNFIT, reason)
    assert never_fits(request_, nodes) == reason


def test_a_node_that_can_build_but_is_too_small_gets_the_usual_reason() -> None:
    nodes = [node("big", cpus=64, pythons=["3.10"]), node("small", cpus=2, pythons=["3.11"])]

    reason = never_fits(run("r1", cpus=8, python="3.11"), nodes)

    assert reason.startswith("no node in cluster c can hold 8 CPUs") and "largest: small" in reason


def test_nodes_that_cannot_build_are_left_out_of_waiting_reasons() -> None:
    nodes = [node("wrong", cpus=64, pythons=["3.10"]), node("right", cpus=8, cpus_free=1, pythons=["3.11"])]

    plan = checked_place([run("r1", cpus=4, python="3.11")], nodes)

    assert plan.pending["r1"].kind is PendingKind.CAPACITY
    assert plan.pending["r1"].text.endswith("on right")


@pytest.mark.parametrize(("interpreters", "minor"), [
    (["3.11.7", "3.10.12"], {"3.11", "3.10"}), (["3.12"], {"3.12"}), (["3.11.0rc1"], {"3.11"}),
    (["3", "python3", ""], set()),
])
def test_interpreters_count_by_major_minor(interpreters: list[str], minor: set[str]) -> None:
    assert minor_versions(interpreters) == minor
