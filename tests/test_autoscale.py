"""Autoscaling: the pure policy over tables of (policy, nodes, demand), the config it is read from, and the loop
that applies it through a provider (a fake one: it stands in for remote machines) under a manual clock.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from scheduler.autoscale import (
    ClusterPolicy,
    Demand,
    ManagedNode,
    NodeStatus,
    decide,
    nodes_needed,
    policies_from_config,
)
from scheduler.autoscaler import Autoscaler, ConnectedNode, Observation
from scheduler.providers import ProviderError, ProviderNode, ProviderStatus

GiB = 1024**3
NOW = 10_000.0


def policy(cluster: str = "c", **overrides: object) -> ClusterPolicy:
    values: dict[str, object] = dict(max_nodes=4, idle_time_before_scale_down=120.0, node_cpus=4.0,
                                     node_memory_bytes=16 * GiB, node_gpus=0)
    values.update(overrides)
    return ClusterPolicy(cluster=cluster, **values)  # type: ignore[arg-type]


def ready(name: str, *, busy: bool = False, idle_s: float = 0.0, cluster: str = "c") -> ManagedNode:
    return ManagedNode(name, cluster, NodeStatus.READY, busy, None if busy else NOW - idle_s, launched_at=NOW - 1000)


def starting(name: str, *, for_s: float = 10.0, cluster: str = "c") -> ManagedNode:
    return ManagedNode(name, cluster, NodeStatus.STARTING, False, None, launched_at=NOW - for_s)


def want(cpus: float = 1, memory: int = GiB, gpus: int = 0, nodes: int = 1, cluster: str = "c") -> Demand:
    return Demand(cluster, cpus, memory, gpus, nodes)


@dataclass(frozen=True)
class Case:
    id: str
    policy: ClusterPolicy
    nodes: Sequence[ManagedNode] = ()
    demand: Sequence[Demand] = ()
    launches: int = 0                       # number of launches expected
    terminated: tuple[str, ...] = ()
    starting: int = 0
    launched_so_far: int = 0
    events: tuple[str, ...] = field(default=())   # substrings expected in the events, in order


CASES = [
    Case("idle cluster stays empty", policy()),
    Case("scale up from zero", policy(), demand=[want()], launches=1, starting=1,
         events=("1 queued run cannot be placed and need 1 new node; starting 1 (1 of max 4)",)),
    Case("gang needs a node per member", policy(), demand=[want(nodes=3)], launches=3, starting=3),
    Case("gang members never share a node", policy(), demand=[want(cpus=1, nodes=2)], launches=2, starting=2),
    Case("small runs are packed onto one node shape", policy(), demand=[want(cpus=1)] * 4, launches=1, starting=1),
    Case("packing counts CPUs", policy(), demand=[want(cpus=2)] * 5, launches=3, starting=3),
    Case("packing counts memory", policy(), demand=[want(cpus=1, memory=8 * GiB)] * 3, launches=2, starting=2),
    Case("packing counts GPUs", policy(node_gpus=2), demand=[want(cpus=1, gpus=1)] * 3, launches=2, starting=2),
    Case("largest first packs tightly", policy(), demand=[want(cpus=1), want(cpus=3), want(cpus=1), want(cpus=3)],
         launches=2, starting=2),
    Case("unknown shape: one node per demanded node", policy(node_cpus=0.0, node_memory_bytes=0),
         demand=[want(cpus=1), want(cpus=1, nodes=2)], launches=3, starting=3),
    Case("never above max", policy(), nodes=[ready("a", busy=True)], demand=[want(cpus=4)] * 10,
         launches=3, starting=3, events=("starting 3 (4 of max 4)",)),
    Case("at max: nothing, and it says so", policy(max_nodes=2), nodes=[ready("a", busy=True), ready("b", busy=True)],
         demand=[want()], events=("at max_nodes (2)",)),
    Case("starting nodes absorb demand", policy(), nodes=[starting("a")], demand=[want(cpus=4)] * 2,
         launches=1, starting=2, events=("need 2 new nodes, 1 already starting; starting 1 (2 of max 4)",)),
    Case("starting nodes absorb all of it", policy(), nodes=[starting("a"), starting("b")], demand=[want(cpus=4)] * 2,
         starting=2),
    Case("a run no node holds starts nothing", policy(), demand=[want(cpus=8)],
         events=("needs more than one node of this cluster holds (4 CPUs, 16.0G, 0 GPUs per node)",)),
    Case("a GPU run on a CPU shape starts nothing", policy(), demand=[want(gpus=1)]),
    Case("reach min with no demand", policy(min_nodes=2), launches=2, starting=2,
         events=("0 nodes up, below min_nodes 2; starting 2 (2 of max 4)",)),
    Case("min counts starting nodes", policy(min_nodes=2), nodes=[starting("a")], launches=1, starting=2),
    Case("min counts ready nodes", policy(min_nodes=2), nodes=[ready("a", busy=True), ready("b", busy=True)]),
    Case("keys continue from the launches answered", policy(), demand=[want(cpus=4)] * 2, launches=2, starting=2,
         launched_so_far=7),
    Case("scale down after the idle time", policy(), nodes=[ready("a", idle_s=120)], terminated=("a",),
         events=("a idle for 120s; stopping it (0 left, min 0)",)),
    Case("not before the idle time", policy(), nodes=[ready("a", idle_s=119)]),
    Case("not below min", policy(min_nodes=1), nodes=[ready("a", idle_s=500), ready("b", idle_s=500)],
         terminated=("a",), events=("a idle for 500s; stopping it (1 left, min 1)",)),
    Case("min counts starting nodes when scaling down", policy(min_nodes=2),
         nodes=[ready("a", idle_s=500), ready("b", idle_s=500), starting("c")], terminated=("a",), starting=1),
    Case("not while the cluster has demand", policy(), nodes=[ready("a", idle_s=500), starting("b")],
         demand=[want()], starting=1),
    Case("demand no node holds does not keep idle nodes", policy(), nodes=[ready("a", idle_s=500)],
         demand=[want(cpus=64)], terminated=("a",)),
    Case("never a busy node", policy(), nodes=[ready("a", busy=True), ready("b", idle_s=500)], terminated=("b",)),
    Case("a node that never connected is stopped", policy(launch_timeout_s=300.0), nodes=[starting("a", for_s=300)],
         terminated=("a",), events=("a did not connect within 300s of its launch; stopping it",)),
    Case("a timed-out node is replaced while demand remains", policy(launch_timeout_s=300.0),
         nodes=[starting("a", for_s=301)], demand=[want()], launches=1, terminated=("a",), starting=1),
    Case("a cluster with max 0 is left alone", policy(max_nodes=0), nodes=[ready("a", idle_s=999)], demand=[want()]),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_decide(case: Case) -> None:
    decision = decide(NOW, {case.policy.cluster: case.policy}, case.nodes, case.demand,
                      {case.policy.cluster: case.launched_so_far})
    first = case.launched_so_far + 1
    assert [launch.key for launch in decision.launches] == [f"c-{n}" for n in range(first, first + case.launches)]
    assert all(launch.cluster == "c" for launch in decision.launches)
    assert tuple(t.name for t in decision.terminations) == case.terminated
    assert decision.starting == ({"c": case.starting} if case.starting else {})
    busy = {n.name for n in case.nodes if n.busy}
    assert not busy & {t.name for t in decision.terminations}, "a busy node was terminated"
    lines = [str(e) for e in decision.events]
    position = 0
    for expected in case.events:
        found = next((i for i, line in enumerate(lines[position:], position) if expected in line), None)
        assert found is not None, f"no event with {expected!r} in {lines}"
        position = found + 1
    if decision.launches or decision.terminations:
        assert lines, "a decision without an event"


def test_decide_keeps_clusters_apart() -> None:
    policies = {"cpu": policy("cpu"), "gpu": policy("gpu", node_gpus=4, min_nodes=1), "off": policy("off", max_nodes=0)}
    nodes = [ready("c1", cluster="cpu", idle_s=500), ready("g1", cluster="gpu", idle_s=500)]
    demand = [want(gpus=2, cluster="gpu", nodes=2), want(cluster="off")]
    decision = decide(NOW, policies, nodes, demand, {"gpu": 2})
    assert [(launch.cluster, launch.key) for launch in decision.launches] == [("gpu", "gpu-3"), ("gpu", "gpu-4")]
    assert [t.name for t in decision.terminations] == ["c1"]
    assert decision.starting == {"gpu": 2}
    assert {e.cluster for e in decision.events} == {"cpu", "gpu"}


def test_decide_is_deterministic_and_stops_in_name_order() -> None:
    nodes = [ready(name, idle_s=500) for name in ("d", "b", "a", "c")]
    decision, reversed_order = (decide(NOW, {"c": policy(min_nodes=2)}, order, (), {}) for order in (nodes, nodes[::-1]))
    assert decision == reversed_order
    assert [t.name for t in decision.terminations] == ["a", "b"]


def test_nodes_needed_stops_counting_at_the_limit() -> None:
    assert nodes_needed(policy(), [want(cpus=4)] * 100_000, limit=4) == 4
    assert nodes_needed(policy(node_cpus=0.0, node_memory_bytes=0), [want()] * 100_000, limit=4) == 4


def test_policy_holds() -> None:
    p = policy(node_gpus=2)
    assert p.holds(cpus=4, memory_bytes=16 * GiB, gpus=2)
    assert not p.holds(cpus=4.5, memory_bytes=GiB, gpus=0)
    assert not p.holds(cpus=1, memory_bytes=17 * GiB, gpus=0)
    assert not p.holds(cpus=1, memory_bytes=GiB, gpus=3)
    assert ClusterPolicy("c").holds(cpus=512, memory_bytes=1 << 50, gpus=64)


# --- config --------------------------------------------------------------------------------------------------------


def test_policies_from_config() -> None:
    policies = policies_from_config({
        "default": {"min_nodes": 0, "max_nodes": 4, "idle_time_before_scale_down": 120, "node_cpus": 2,
                    "node_memory_bytes": "8G"},
        "metal": {"max_nodes": 2, "provider": "command", "nodes": ["gpu-1", "gpu-2"],
                  "power_on": "ipmitool -H {node}-bmc power on", "power_off": "ipmitool -H {node}-bmc power off",
                  "command_timeout_s": 30, "node_cpus": 64, "node_memory_bytes": 512 * GiB, "node_gpus": 8},
    })
    assert policies["default"] == ClusterPolicy("default", max_nodes=4, idle_time_before_scale_down=120.0,
                                                node_cpus=2.0, node_memory_bytes=8 * GiB)
    metal = policies["metal"]
    assert metal.nodes == ("gpu-1", "gpu-2") and metal.command_timeout_s == 30.0 and metal.provider == "command"
    assert policies_from_config({}) == {}


@pytest.mark.parametrize(("table", "message"), [
    ({"max_nodes": 2, "min_node": 1}, "clusters.c.min_node: unknown key"),
    ({"max_nodes": "4"}, "clusters.c.max_nodes: must be int, not str"),
    ({"max_nodes": True}, "clusters.c.max_nodes: must be int, not bool"),
    ({"max_nodes": 2, "idle_time_before_scale_down": "2m"}, "clusters.c.idle_time_before_scale_down: must be a number"),
    ({"max_nodes": -1}, "clusters.c.max_nodes: must not be negative"),
    ({"min_nodes": 3, "max_nodes": 2}, "clusters.c.min_nodes: 3 is above max_nodes (2)"),
    ({"min_nodes": 1}, "clusters.c.min_nodes: 1 is above max_nodes (0)"),
    ({"max_nodes": 2, "provider": "aws"}, "clusters.c.provider: 'aws' is not a provider; use one of: local, command"),
    ({"max_nodes": 2, "node_cpus": 4}, "clusters.c.node_cpus: node_cpus and node_memory_bytes describe a node"),
    ({"max_nodes": 2, "node_memory_bytes": "lots"}, "clusters.c.node_memory_bytes: 'lots' is not a size"),
    ({"max_nodes": 2, "command_timeout_s": 0}, "clusters.c.command_timeout_s: must be > 0"),
    ({"max_nodes": 2, "power_on": "wakeonlan {node}"}, "clusters.c.power_on: only for provider = \"command\""),
    ({"max_nodes": 1, "provider": "command", "power_on": "on {node}", "power_off": "off {node}"},
     "clusters.c.nodes: provider = \"command\" needs the names of the nodes"),
    ({"max_nodes": 1, "provider": "command", "nodes": ["n1"], "power_off": "off {node}"},
     "clusters.c.power_on: provider = \"command\" needs it"),
    ({"max_nodes": 1, "provider": "command", "nodes": ["n1"], "power_on": "on {node}"},
     "clusters.c.power_off: provider = \"command\" needs it"),
    ({"max_nodes": 2, "provider": "command", "nodes": ["n1", "n2"], "power_on": "on", "power_off": "off {node}"},
     "clusters.c.power_on: must contain {node}"),
    ({"max_nodes": 3, "provider": "command", "nodes": ["n1", "n2"], "power_on": "on {node}", "power_off": "off {node}"},
     "clusters.c.max_nodes: 3 is more than the 2 nodes listed"),
    ({"max_nodes": 1, "provider": "command", "nodes": "n1", "power_on": "on", "power_off": "off"},
     "clusters.c.nodes: must be a list of node names"),
    ({"max_nodes": 2, "provider": "command", "nodes": ["n1", "n1"], "power_on": "on {node}", "power_off": "off {node}"},
     "clusters.c.nodes: names a node twice"),
])
def test_policies_from_config_refuses(table: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        policies_from_config({"c": table})
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_policies_from_config_refuses_bad_cluster_names_and_tables() -> None:
    with pytest.raises(ValueError, match=re.escape("clusters..../x: a cluster name is")):
        policies_from_config({".../x": {}})
    with pytest.raises(ValueError, match=r"^clusters\.c: must be a table, not int"):
        policies_from_config({"c": 3})


# --- the loop ------------------------------------------------------------------------------------------------------


class FakeProvider:
    """Stands in for machines the test does not have: launches are names, nothing runs."""

    def __init__(self, cluster: str = "c") -> None:
        self.cluster = cluster
        self.nodes: dict[str, ProviderStatus] = {}
        self.by_key: dict[str, str] = {}
        self.launch_calls: list[str] = []
        self.terminate_calls: list[str] = []
        self.fail_launch: ProviderError | None = None
        self.fail_terminate: ProviderError | None = None
        self.raise_on_launch = False

    async def list(self) -> list[ProviderNode] | ProviderError:
        return [ProviderNode(name, self.cluster, status) for name, status in sorted(self.nodes.items())]

    async def launch(self, cluster: str, key: str) -> ProviderNode | ProviderError:
        self.launch_calls.append(key)
        if key not in self.by_key:
            if self.fail_launch:
                return self.fail_launch
            name = f"n{len(self.by_key) + 1}"
            self.by_key[key] = name
            self.nodes[name] = ProviderStatus.RUNNING
        if self.raise_on_launch:
            self.raise_on_launch = False
            raise ConnectionError("the answer was lost")
        return ProviderNode(self.by_key[key], cluster, self.nodes.get(self.by_key[key], ProviderStatus.STOPPED))

    async def terminate(self, name: str) -> None | ProviderError:
        self.terminate_calls.append(name)
        if self.fail_terminate:
            return self.fail_terminate
        self.nodes.pop(name, None)
        return None

    async def close(self) -> None:
        return None


class HeadClock:
    """A manual clock: the time is the test's `head.now`; a sleep only yields."""

    def __init__(self, head: Head) -> None:
        self._head = head

    def now(self) -> float:
        return self._head.now

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(0)


class Head:
    """What the head would supply: connected nodes, demand, and an event log; plus a manual clock."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.connected: list[ConnectedNode] = []
        self.demand: list[Demand] = []
        self.events: list[tuple[str, str, str]] = []

    @property
    def clock(self) -> HeadClock:
        return HeadClock(self)

    async def observe(self) -> Observation:
        return Observation(list(self.connected), list(self.demand))

    async def record(self, cluster: str, node: str, detail: str) -> None:
        self.events.append((cluster, node, detail))

    def details(self) -> list[str]:
        return [detail for _, _, detail in self.events]


def autoscaler(head: Head, fake: FakeProvider, **overrides: object) -> Autoscaler:
    return Autoscaler(policies={"c": policy(**overrides)}, providers={"c": fake}, clock=head.clock,
                      observe=head.observe, record=head.record)


async def test_scales_up_for_demand_then_down_when_idle() -> None:
    head, provider = Head(), FakeProvider()
    scaler = autoscaler(head, provider)
    head.demand = [want(cpus=4)]
    decision = await scaler.tick()
    assert [launch.key for launch in decision.launches] == ["c-1"]
    assert provider.launch_calls == ["c-1"]
    assert scaler.starting() == {"c": 1}
    assert head.events[-1] == ("c", "n1", "n1 launched; waiting for it to connect")

    head.now += 5                               # still starting: it absorbs the same demand
    assert not (await scaler.tick()).launches
    assert provider.launch_calls == ["c-1"]

    head.now += 5                               # connected and running the run
    head.connected, head.demand = [ConnectedNode("n1", "c", busy=True)], []
    await scaler.tick()
    assert scaler.starting() == {}

    head.now += 1000                            # idle from here
    head.connected = [ConnectedNode("n1", "c", busy=False)]
    assert not (await scaler.tick()).terminations
    head.now += 119
    assert not (await scaler.tick()).terminations
    head.now += 1
    decision = await scaler.tick()
    assert [t.name for t in decision.terminations] == ["n1"]
    assert provider.terminate_calls == ["n1"] and not provider.nodes
    assert head.events[-1] == ("c", "n1", "n1 idle for 120s; stopping it (0 left, min 0)")


async def test_busy_again_resets_the_idle_time() -> None:
    head, provider = Head(), FakeProvider()
    scaler = autoscaler(head, provider, min_nodes=1)
    await scaler.tick()                         # launches n1 to reach min
    head.connected = [ConnectedNode("n1", "c", busy=False)]
    await scaler.tick()
    head.now += 100
    head.connected = [ConnectedNode("n1", "c", busy=True)]
    await scaler.tick()
    head.now += 100
    head.connected = [ConnectedNode("n1", "c", busy=False)]
    await scaler.tick()
    head.now += 100
    assert not (await scaler.tick()).terminations, "idle for 100 s only since it was last busy"


async def test_a_node_that_never_connects_is_stopped_and_replaced() -> None:
    head, provider = Head(), FakeProvider()
    scaler = autoscaler(head, provider, launch_timeout_s=60.0)
    head.demand = [want()]
    await scaler.tick()
    head.now += 60
    decision = await scaler.tick()
    assert [t.name for t in decision.terminations] == ["n1"]
    assert [launch.key for launch in decision.launches] == ["c-2"]
    assert "n1 did not connect within 60s of its launch; stopping it" in head.details()
    assert provider.terminate_calls == ["n1"] and list(provider.nodes) == ["n2"]


async def test_provider_errors_become_events_once_and_never_raise() -> None:
    head, provider = Head(), FakeProvider()
    provider.fail_launch = ProviderError("power on of node n1 failed: `ipmitool` exited with code 1: no route")
    scaler = autoscaler(head, provider)
    head.demand = [want()]
    for _ in range(3):
        await scaler.tick()
        head.now += 10
    failures = [d for d in head.details() if d.startswith("could not start a node")]
    assert failures == ["could not start a node: power on of node n1 failed: `ipmitool` exited with code 1: no route"]
    assert len(provider.launch_calls) == 3, "it keeps trying"
    provider.fail_launch = None
    await scaler.tick()
    assert scaler.starting() == {"c": 1}


async def test_a_failed_stop_is_recorded_and_retried() -> None:
    head, provider = Head(), FakeProvider()
    scaler = autoscaler(head, provider)
    head.demand = [want()]
    await scaler.tick()
    head.demand, head.connected = [], [ConnectedNode("n1", "c", busy=False)]
    await scaler.tick()
    provider.fail_terminate = ProviderError("power off of node n1 failed: timeout")
    head.now += 500
    await scaler.tick()
    assert "could not stop n1: power off of node n1 failed: timeout" in head.details()
    provider.fail_terminate = None
    head.now += 10
    await scaler.tick()
    assert provider.terminate_calls == ["n1", "n1"] and not provider.nodes


async def test_a_lost_answer_reuses_the_key_and_launches_nothing_twice() -> None:
    head, provider = Head(), FakeProvider()
    provider.raise_on_launch = True
    scaler = autoscaler(head, provider)
    head.demand = [want()]
    with pytest.raises(ExceptionGroup):
        await scaler.tick()
    decision = await scaler.tick()
    assert [launch.key for launch in decision.launches] == ["c-1"]
    assert provider.launch_calls == ["c-1", "c-1"]
    assert provider.by_key == {"c-1": "n1"}, "one node for one decision"
    assert scaler.starting() == {"c": 1}
    head.now += 10
    assert not (await scaler.tick()).launches


async def test_a_node_the_provider_has_but_nobody_asked_for_is_adopted_and_stopped() -> None:
    head, provider = Head(), FakeProvider()
    provider.nodes["n9"] = ProviderStatus.RUNNING
    scaler = autoscaler(head, provider)
    head.connected = [ConnectedNode("n9", "c", busy=False)]
    assert not (await scaler.tick()).terminations   # adopted at the end of this tick
    assert not (await scaler.tick()).terminations   # idle from now
    head.now += 120
    decision = await scaler.tick()
    assert [t.name for t in decision.terminations] == ["n9"]


async def test_a_node_that_stopped_by_itself_is_forgotten_and_replaced() -> None:
    head, provider = Head(), FakeProvider()
    scaler = autoscaler(head, provider, min_nodes=1)
    await scaler.tick()
    head.connected = [ConnectedNode("n1", "c", busy=False)]
    await scaler.tick()
    provider.nodes["n1"] = ProviderStatus.STOPPED
    head.connected = []
    decision = await scaler.tick()
    assert "n1 stopped by itself; see its log" in head.details()
    assert provider.terminate_calls == ["n1"]
    assert [launch.key for launch in decision.launches] == ["c-2"]


async def test_standing_conditions_are_recorded_when_they_begin() -> None:
    head, provider = Head(), FakeProvider()
    scaler = autoscaler(head, provider, max_nodes=1)
    head.demand = [want(cpus=64)]
    for _ in range(3):
        await scaler.tick()
    assert len([d for d in head.details() if "needs more than one node" in d]) == 1
    head.demand = []
    await scaler.tick()
    head.demand = [want(cpus=64)]
    await scaler.tick()
    assert len([d for d in head.details() if "needs more than one node" in d]) == 2


async def test_connected_command_nodes_are_adopted() -> None:
    head, provider = Head(), FakeProvider()
    scaler = autoscaler(head, provider, provider="command", nodes=("gpu-1", "gpu-2"), power_on="on {node}",
                        power_off="off {node}", max_nodes=2)
    head.connected = [ConnectedNode("gpu-1", "c", busy=False), ConnectedNode("static", "c", busy=False)]
    await scaler.tick()
    head.now += 120
    decision = await scaler.tick()
    assert [t.name for t in decision.terminations] == ["gpu-1"], "a node not in nodes is not the autoscaler's"


def test_every_autoscaled_cluster_needs_a_provider() -> None:
    head = Head()
    with pytest.raises(ValueError, match="cluster c is autoscaled but has no node provider"):
        Autoscaler(policies={"c": policy(), "off": policy("off", max_nodes=0)}, providers={}, clock=head.clock,
                   observe=head.observe, record=head.record)


async def test_run_ticks_when_woken_and_survives_errors() -> None:
    head, provider = Head(), FakeProvider()
    calls = 0

    async def observe() -> Observation:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("the store is busy")
        return Observation([], [want()])

    scaler = Autoscaler(policies={"c": policy()}, providers={"c": provider}, clock=head.clock, observe=observe,
                        record=head.record)
    task = asyncio.create_task(scaler.run(tick_s=3600))
    try:
        for _ in range(200):
            scaler.wake()
            await asyncio.sleep(0)
            if provider.launch_calls:
                break
        assert provider.launch_calls == ["c-1"]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
