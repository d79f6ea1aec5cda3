"""Autoscaling policy: how many nodes each compute cluster should add or stop, as a pure function. No I/O.

`decide()` takes the time, the policy of every cluster, the nodes the autoscaler manages (as the head sees them)
and the queued demand the last scheduling pass could not place, and returns what to launch, what to terminate and
one event line per decision. It must not call a provider, read a clock or keep state: the `autoscaler.Autoscaler`
loop does that and feeds it observations.

Per cluster with `max_nodes > 0`:
- Scale up: the new nodes the demand needs are counted by first-fit bin packing (largest first) onto empty nodes
  of the cluster's node shape; a gang of N needs N distinct nodes; with an unknown shape every demanded node
  counts as one. Nodes already starting absorb that need. Launches never take ready + starting nodes above
  `max_nodes`, and always bring them up to `min_nodes`. A demand no node of the shape could hold starts nothing.
- Scale down: a ready node that has been idle for `idle_time_before_scale_down` is terminated, never below
  `min_nodes` (ready + starting), never a busy node, and not while the cluster has demand it could serve.
- A node still starting `launch_timeout_s` after its launch is terminated (it never connected).
Clusters with `max_nodes == 0` are left alone. Nodes are considered in name order, so decisions are stable.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any

from runyard.units import format_size, parse_size


class ProviderKind(StrEnum):
    LOCAL = "local"         # agent processes on the head's machine (`runyard up`)
    COMMAND = "command"     # admin commands that power named bare-metal nodes on and off


class NodeStatus(StrEnum):
    STARTING = "starting"   # launched, not connected yet (or lost its connection and may come back)
    READY = "ready"         # connected to the head
    STOPPING = "stopping"   # being terminated


@dataclass(frozen=True, slots=True)
class ClusterPolicy:
    cluster: str
    min_nodes: int = 0
    max_nodes: int = 0                          # 0: the autoscaler leaves this cluster alone
    idle_time_before_scale_down: float = 300.0
    launch_timeout_s: float = 300.0             # launched but not connected this long: terminated
    provider: str = ProviderKind.LOCAL
    node_cpus: float = 0.0                      # shape of a node the provider adds; all zero: unknown
    node_memory_bytes: int = 0
    node_gpus: int = 0
    nodes: tuple[str, ...] = ()                 # command provider: the nodes it may power on, in order
    power_on: str = ""                          # command provider: argv template, `{node}` substituted per argument
    power_off: str = ""
    command_timeout_s: float = 60.0

    @property
    def shape_known(self) -> bool:
        return bool(self.node_cpus or self.node_memory_bytes or self.node_gpus)

    def holds(self, *, cpus: float, memory_bytes: int, gpus: int) -> bool:
        """Whether an empty node of this cluster's shape holds one instance of that size (unknown shape: yes)."""
        if not self.shape_known:
            return True
        return cpus <= self.node_cpus + 1e-9 and memory_bytes <= self.node_memory_bytes and gpus <= self.node_gpus

    def describe_shape(self) -> str:
        return f"{self.node_cpus:g} CPUs, {format_size(self.node_memory_bytes)}, {self.node_gpus} GPUs per node"


@dataclass(frozen=True, slots=True)
class Demand:
    """One queued run the last scheduling pass could not place for lack of capacity; sizes are per node."""

    cluster: str
    cpus: float
    memory_bytes: int
    gpus: int
    nodes: int = 1                              # gang size (instance_count): this many distinct nodes at once


@dataclass(frozen=True, slots=True)
class ManagedNode:
    """A node the autoscaler manages, as the head sees it."""

    name: str
    cluster: str
    status: NodeStatus
    busy: bool                                  # runs live attempts
    idle_since: float | None                    # when it last became idle; None when busy or not ready
    launched_at: float = 0.0                    # launched, or lost its connection: the launch timeout runs from here


@dataclass(frozen=True, slots=True)
class Launch:
    cluster: str
    key: str                                    # idempotency key: a repeated decision never launches twice


@dataclass(frozen=True, slots=True)
class Terminate:
    cluster: str
    name: str


@dataclass(frozen=True, slots=True)
class Event:
    """One decision, for the cluster's event log. `standing` marks a condition that holds until something changes
    (at max, a run no node can hold): the loop records it when it begins, not on every tick."""

    cluster: str
    node: str                                   # the node the decision is about, or ''
    detail: str
    standing: bool = False

    def __str__(self) -> str:
        return f"cluster {self.cluster}: {self.detail}"


@dataclass(frozen=True, slots=True)
class Decision:
    launches: tuple[Launch, ...]
    terminations: tuple[Terminate, ...]
    events: tuple[Event, ...]
    starting: dict[str, int]                    # cluster -> nodes starting now (still starting + launched now)


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_KINDS: dict[str, type] = {f.name: {"int": int, "float": float, "str": str}.get(str(f.type), tuple)
                           for f in fields(ClusterPolicy) if f.name != "cluster"}


def policies_from_config(clusters: Mapping[str, object]) -> dict[str, ClusterPolicy]:
    """The `[clusters.<name>]` tables of head.toml as policies. Raises ValueError with one line naming the key."""
    if not isinstance(clusters, Mapping):
        raise ValueError(f"clusters: must be a table of [clusters.<name>] tables, not {type(clusters).__name__}")
    return {name: _policy(name, table) for name, table in sorted(clusters.items())}


def _policy(name: str, table: object) -> ClusterPolicy:
    where = f"clusters.{name}"
    if not _NAME.match(name):
        raise ValueError(f"{where}: a cluster name is letters, digits, '.', '_' and '-'")
    if not isinstance(table, Mapping):
        raise ValueError(f"{where}: must be a table, not {type(table).__name__}")
    unknown = sorted(set(table) - set(_KINDS))
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: unknown key; known keys: {', '.join(sorted(_KINDS))}")
    # Each value is checked against its field's kind by `_value`; the field, not the dict, carries its type.
    values: dict[str, Any] = {key: _value(f"{where}.{key}", key, value) for key, value in table.items()}
    policy = ClusterPolicy(cluster=name, **values)
    _check(where, policy)
    return policy


def _value(where: str, key: str, value: object) -> object:
    if key == "node_memory_bytes" and isinstance(value, str):
        try:
            return parse_size(value)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
    if key == "nodes":
        if not isinstance(value, list) or not all(isinstance(v, str) and _NAME.match(v) for v in value):
            raise ValueError(f"{where}: must be a list of node names, e.g. [\"gpu-1\", \"gpu-2\"]")
        if len(set(value)) != len(value):
            raise ValueError(f"{where}: names a node twice")
        return tuple(value)
    kind = _KINDS[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ValueError(f"{where}: must be {'a number' if kind is float else kind.__name__}, not {type(value).__name__}")
    if isinstance(value, int | float) and value < 0:
        raise ValueError(f"{where}: must not be negative")
    return value


def _check(where: str, p: ClusterPolicy) -> None:
    if p.provider not in set(ProviderKind):
        raise ValueError(f"{where}.provider: {p.provider!r} is not a provider; use one of: {', '.join(ProviderKind)}")
    if p.min_nodes > p.max_nodes:
        raise ValueError(f"{where}.min_nodes: {p.min_nodes} is above max_nodes ({p.max_nodes})")
    if p.shape_known and not (p.node_cpus > 0 and p.node_memory_bytes > 0):
        raise ValueError(f"{where}.node_cpus: node_cpus and node_memory_bytes describe a node together; set both")
    if p.command_timeout_s <= 0 or p.launch_timeout_s <= 0:
        key = "command_timeout_s" if p.command_timeout_s <= 0 else "launch_timeout_s"
        raise ValueError(f"{where}.{key}: must be > 0")
    if p.provider == ProviderKind.LOCAL:
        for key in ("nodes", "power_on", "power_off"):
            if getattr(p, key):
                raise ValueError(f"{where}.{key}: only for provider = \"command\"")
        return
    if not p.nodes:
        raise ValueError(f"{where}.nodes: provider = \"command\" needs the names of the nodes it may power on")
    for key in ("power_on", "power_off"):
        template = getattr(p, key)
        if not template.strip():
            raise ValueError(f"{where}.{key}: provider = \"command\" needs it, e.g. \"ipmitool -H {{node}}-bmc -U admin "
                             f"-f /etc/runyard/ipmi.pass power {key.removeprefix('power_')}\"")
        if len(p.nodes) > 1 and "{node}" not in template:
            raise ValueError(f"{where}.{key}: must contain {{node}}, or every node would get the same command")
    if p.max_nodes > len(p.nodes):
        raise ValueError(f"{where}.max_nodes: {p.max_nodes} is more than the {len(p.nodes)} nodes listed in nodes")


def nodes_needed(policy: ClusterPolicy, demand: Sequence[Demand], limit: int) -> int:
    """How many empty nodes of the policy's shape `demand` needs (runs no such node holds do not count), at most
    `limit`. First fit, largest first (gangs, then GPUs, CPUs, memory); the members of a gang go on distinct nodes.
    """
    fitting = [d for d in demand if policy.holds(cpus=d.cpus, memory_bytes=d.memory_bytes, gpus=d.gpus)]
    if not policy.shape_known:
        return min(limit, sum(d.nodes for d in fitting))
    free: list[tuple[float, int, int]] = []     # (cpus, memory, gpus) left on each new node
    for d in sorted(fitting, key=lambda d: (-d.nodes, -d.gpus, -d.cpus, -d.memory_bytes)):
        used: set[int] = set()
        for _ in range(d.nodes):
            index = next((i for i, (c, m, g) in enumerate(free)
                          if i not in used and d.cpus <= c + 1e-9 and d.memory_bytes <= m and d.gpus <= g), None)
            if index is None:
                if len(free) == limit:
                    return limit
                free.append((policy.node_cpus, policy.node_memory_bytes, policy.node_gpus))
                index = len(free) - 1
            c, m, g = free[index]
            free[index] = (c - d.cpus, m - d.memory_bytes, g - d.gpus)
            used.add(index)
    return len(free)


def decide(
    now: float,
    policies: Mapping[str, ClusterPolicy],
    nodes: Sequence[ManagedNode],
    demand: Sequence[Demand],
    launched_so_far: Mapping[str, int],
) -> Decision:
    """What to launch and terminate in every autoscaled cluster now.

    `launched_so_far[cluster]` counts the launches the caller has had an answer for; the keys of this decision's
    launches continue from it (`<cluster>-<n>`), so a decision repeated before the caller has its answers
    reuses the same keys and the provider launches nothing twice.
    """
    launches: list[Launch] = []
    terminations: list[Terminate] = []
    events: list[Event] = []
    starting: dict[str, int] = {}
    for name, policy in sorted(policies.items()):
        if policy.max_nodes <= 0:
            continue
        mine = sorted((n for n in nodes if n.cluster == name), key=lambda n: n.name)
        wanted = [d for d in demand if d.cluster == name]
        plan = _decide_cluster(now, policy, mine, wanted, launched_so_far.get(name, 0))
        launches += plan.launches
        terminations += plan.terminations
        events += plan.events
        if plan.starting:
            starting[name] = plan.starting[name]
    return Decision(tuple(launches), tuple(terminations), tuple(events), starting)


def _decide_cluster(now: float, p: ClusterPolicy, nodes: list[ManagedNode], demand: list[Demand],
                    launched_so_far: int) -> Decision:
    events: list[Event] = []
    terminations: list[Terminate] = []
    starting: list[ManagedNode] = []
    for node in (n for n in nodes if n.status == NodeStatus.STARTING):
        if now - node.launched_at >= p.launch_timeout_s:
            terminations.append(Terminate(p.cluster, node.name))
            events.append(Event(p.cluster, node.name,
                                f"{node.name} did not connect within {p.launch_timeout_s:.0f}s of its launch; stopping it"))
        else:
            starting.append(node)
    ready = [n for n in nodes if n.status == NodeStatus.READY]
    alive = len(ready) + len(starting)
    servable = [d for d in demand if p.holds(cpus=d.cpus, memory_bytes=d.memory_bytes, gpus=d.gpus)]
    if len(servable) < len(demand):
        events.append(Event(p.cluster, "", f"a queued run needs more than one node of this cluster holds "
                                           f"({p.describe_shape()}); no node is started for it", standing=True))
    room = max(0, p.max_nodes - alive)
    needed = nodes_needed(p, servable, p.max_nodes)
    for_demand = max(0, needed - len(starting))
    count = min(room, max(for_demand, p.min_nodes - alive))
    if count:
        if for_demand:
            runs = f"{len(servable)} queued run{'s' if len(servable) != 1 else ''}"
            absorbed = f", {len(starting)} already starting" if starting else ""
            why = f"{runs} cannot be placed and need {needed} new node{'s' if needed != 1 else ''}{absorbed}"
        else:
            why = f"{alive} node{'s' if alive != 1 else ''} up, below min_nodes {p.min_nodes}"
        events.append(Event(p.cluster, "", f"{why}; starting {count} ({alive + count} of max {p.max_nodes})"))
    elif for_demand:
        events.append(Event(p.cluster, "", f"queued runs need more nodes but the cluster is at max_nodes "
                                           f"({p.max_nodes})", standing=True))
    launches = tuple(Launch(p.cluster, f"{p.cluster}-{launched_so_far + i}") for i in range(1, count + 1))
    if not servable:
        left = alive
        for node in ready:
            if left <= p.min_nodes:
                break
            if node.busy or node.idle_since is None or now - node.idle_since < p.idle_time_before_scale_down:
                continue
            left -= 1
            terminations.append(Terminate(p.cluster, node.name))
            events.append(Event(p.cluster, node.name, f"{node.name} idle for {now - node.idle_since:.0f}s; "
                                                      f"stopping it ({left} left, min {p.min_nodes})"))
    total_starting = len(starting) + count
    return Decision(launches, tuple(terminations), tuple(events), {p.cluster: total_starting} if total_starting else {})
