"""The autoscaler loop: observes the head, applies `autoscale.decide()` and carries the decision out through the
node providers. Every decision and every provider failure is written as an event through `record`.

It keeps what the policy needs and the head does not know: which nodes it launched (name, cluster, key, when),
since when each connected node has been idle, and how many launches it has had answers for (the idempotency keys).
A launched node is `starting` until the head reports it connected; a node that loses its connection is `starting`
again, with the launch timeout counted from then. A node a provider lists but the autoscaler does not know (a
launch whose answer was lost and whose key was not reused) is adopted, and so is a connected node named in a
command cluster's `nodes` (e.g. powered on before a head restart): both are scaled down like the others.

Must not: decide anything itself (that is `autoscale.py`), raise a provider's failure, or touch the store.
`run()` ends only by cancellation; an error in a tick is logged and the next tick tries again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from scheduler.autoscale import (
    ClusterPolicy,
    Decision,
    Demand,
    Event,
    Launch,
    ManagedNode,
    NodeStatus,
    ProviderKind,
    Terminate,
    decide,
)
from runyard.clock import Clock, wait_event
from scheduler.providers import NodeProvider, ProviderError, ProviderNode, ProviderStatus

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ConnectedNode:
    """An agent connected to the head now."""

    name: str
    cluster: str
    busy: bool                                  # runs live attempts


@dataclass(frozen=True, slots=True)
class Observation:
    connected: Sequence[ConnectedNode]
    demand: Sequence[Demand]                    # queued runs the last scheduling pass could not place


@dataclass(slots=True)
class _Tracked:
    name: str
    cluster: str
    key: str                                    # '' for an adopted node
    since: float                                # launched, or lost its connection: the launch timeout runs from here
    connected: bool = False


class Autoscaler:
    def __init__(self, *, policies: Mapping[str, ClusterPolicy], providers: Mapping[str, NodeProvider],
                 clock: Clock, observe: Callable[[], Awaitable[Observation]],
                 record: Callable[[str, str, str], Awaitable[None]],
                 left: Callable[[str], Awaitable[None]] | None = None) -> None:
        """`providers` by cluster (one may serve several); `observe()` tells what the head knows now;
        `record(cluster, node or '', detail)` writes one event; `left(node)` is told of a node it stopped."""
        self._policies = {name: p for name, p in policies.items() if p.max_nodes > 0}
        missing = sorted(set(self._policies) - set(providers))
        if missing:
            raise ValueError(f"cluster {missing[0]} is autoscaled but has no node provider")
        self._providers = dict(providers)
        self._clock = clock
        self._observe = observe
        self._record = record
        self._left = left
        self._tracked: dict[str, _Tracked] = {}
        self._idle_since: dict[str, float] = {}
        self._launched: dict[str, int] = {}     # cluster -> launches answered (keys continue from here)
        self._standing: set[tuple[str, str, str]] = set()   # standing events recorded and still holding
        self._standing_now: set[tuple[str, str, str]] = set()
        self._starting: dict[str, int] = {}
        self._woken = asyncio.Event()
        self.on_action: Callable[[str, str, bool], None] = lambda cluster, action, ok: None  # the metrics' counter

    def starting(self) -> dict[str, int]:
        """Cluster -> nodes being started now, for the pending reasons of queued runs."""
        return dict(self._starting)

    def wake(self) -> None:
        """Tick now rather than at the next period (e.g. after a scheduling pass left runs unplaced)."""
        self._woken.set()

    async def run(self, tick_s: float) -> None:
        """Tick every `tick_s`, or sooner when woken, until cancelled."""
        while True:
            await wait_event(self._clock, self._woken, tick_s)
            self._woken.clear()
            try:
                await self.tick()
            except Exception:
                log.exception("autoscaler tick failed")

    async def tick(self) -> Decision:
        """One observation, decision and execution; returns the decision."""
        self._standing_now = set()
        try:
            observation = await self._observe()
            now = self._clock.now()
            unknown = await self._reconcile()
            nodes = self._managed(now, observation.connected)
            decision = decide(now, self._policies, nodes, observation.demand, self._launched)
            for event in decision.events:
                await self._note(event)
            async with asyncio.TaskGroup() as tasks:
                for stop in decision.terminations:
                    tasks.create_task(self._terminate(stop), name=f"terminate-{stop.name}")
                tasks.create_task(self._launch_all(decision.launches, now), name="launch")
            for node in (n for n in unknown if n.name not in self._tracked):
                log.info("autoscaler adopted a node it did not know", extra={"node": node.name, "cluster": node.cluster})
                self._tracked[node.name] = _Tracked(node.name, node.cluster, "", now)
            self._starting = decision.starting
            return decision
        finally:
            self._standing = self._standing_now

    async def _reconcile(self) -> list[ProviderNode]:
        """Take in what the providers report: nodes that stopped by themselves are forgotten; returns the nodes
        not known here, to adopt once this tick's launches are answered (a lost answer's key is reused first)."""
        unknown: list[ProviderNode] = []
        for provider in {id(p): p for c, p in self._providers.items() if c in self._policies}.values():
            clusters = sorted(c for c, p in self._providers.items() if p is provider and c in self._policies)
            listed = await provider.list()
            if isinstance(listed, ProviderError):
                for cluster in clusters:
                    await self._note(Event(cluster, "", f"cannot list nodes: {listed.message}", standing=True))
                continue
            for node in (n for n in listed if n.cluster in clusters):
                if node.status == ProviderStatus.STOPPED:
                    await self._note(Event(node.cluster, node.name, f"{node.name} stopped by itself; see its log",
                                           standing=True))
                    await self._terminate(Terminate(node.cluster, node.name))
                    self._forget(node.name)
                elif node.name not in self._tracked:
                    unknown.append(node)
        return unknown

    def _managed(self, now: float, connected: Sequence[ConnectedNode]) -> list[ManagedNode]:
        """The tracked nodes as the policy sees them; keeps idle times and adopts listed command nodes."""
        for node in connected:
            policy = self._policies.get(node.cluster)
            if (policy and policy.provider == ProviderKind.COMMAND and node.name in policy.nodes
                    and node.name not in self._tracked):
                self._tracked[node.name] = _Tracked(node.name, node.cluster, "", now)
        by_name = {node.name: node for node in connected}
        managed: list[ManagedNode] = []
        for t in sorted(self._tracked.values(), key=lambda t: t.name):
            seen = by_name.get(t.name)
            if seen is not None and seen.cluster == t.cluster:
                t.connected = True
                idle = None if seen.busy else self._idle_since.setdefault(t.name, now)
                if seen.busy:
                    self._idle_since.pop(t.name, None)
                managed.append(ManagedNode(t.name, t.cluster, NodeStatus.READY, seen.busy, idle, t.since))
                continue
            if t.connected:
                log.info("autoscaled node lost its connection", extra={"node": t.name, "cluster": t.cluster})
                t.connected, t.since = False, now
            self._idle_since.pop(t.name, None)
            managed.append(ManagedNode(t.name, t.cluster, NodeStatus.STARTING, False, None, t.since))
        return managed

    async def _launch_all(self, launches: Sequence[Launch], now: float) -> None:
        """In key order: a key counts as used once its answer is in, so an unanswered one is reused next tick."""
        for launch in launches:
            result = await self._providers[launch.cluster].launch(launch.cluster, launch.key)
            self._launched[launch.cluster] = self._launched.get(launch.cluster, 0) + 1
            self.on_action(launch.cluster, "launch", not isinstance(result, ProviderError))
            if isinstance(result, ProviderError):
                await self._note(Event(launch.cluster, "", f"could not start a node: {result.message}", standing=True))
            elif result.name not in self._tracked:
                self._tracked[result.name] = _Tracked(result.name, launch.cluster, launch.key, now)
                await self._note(Event(launch.cluster, result.name, f"{result.name} launched; waiting for it to connect"))

    async def _terminate(self, stop: Terminate) -> bool:
        """Terminate through the provider; True when it is gone (and forgotten here)."""
        result = await self._providers[stop.cluster].terminate(stop.name)
        self.on_action(stop.cluster, "terminate", not isinstance(result, ProviderError))
        if isinstance(result, ProviderError):
            await self._note(Event(stop.cluster, stop.name, f"could not stop {stop.name}: {result.message}", standing=True))
            return False
        self._forget(stop.name)
        if self._left is not None:
            await self._left(stop.name)
        return True

    def _forget(self, name: str) -> None:
        self._tracked.pop(name, None)
        self._idle_since.pop(name, None)

    async def _note(self, event: Event) -> None:
        """Record the event; a standing one only when it was not holding at the previous tick."""
        if event.standing:
            key = (event.cluster, event.node, event.detail)
            self._standing_now.add(key)
            if key in self._standing:
                log.debug("autoscaler condition holds", extra={"cluster": event.cluster, "detail": event.detail})
                return
        log.info("autoscaler event", extra={"cluster": event.cluster, "node": event.node, "detail": event.detail})
        await self._record(event.cluster, event.node, event.detail)
