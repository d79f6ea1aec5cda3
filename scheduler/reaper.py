"""The reaper loop: every tick, `heartbeats.judge()` over the nodes' states and when each was last heard; its
verdicts become `NodeSilent` and `NodeDown` events for the reactor (a Down node's live attempts are lost once).

`run()` ends only by cancellation; an error in a tick is logged and the next tick tries again.
"""

from __future__ import annotations

import logging

from runyard.clock import Clock
from scheduler.core.heartbeats import UP, Timers, judge
from scheduler.core.react import NodeDown, NodeSilent
from scheduler.reactor import Reactor
from scheduler.sessions import Sessions

log = logging.getLogger(__name__)


class Reaper:
    def __init__(self, *, sessions: Sessions, reactor: Reactor, timers: Timers, clock: Clock) -> None:
        self._sessions = sessions
        self._reactor = reactor
        self._timers = timers
        self._clock = clock
        self._suspecting = False

    async def run(self, tick_s: float) -> None:
        """Judge node health every `tick_s` until cancelled."""
        while True:
            await self._clock.sleep(tick_s)
            try:
                await self.tick()
            except Exception:
                log.exception("reaper tick failed")

    async def tick(self) -> frozenset[str]:
        """One judgement; returns the nodes it declared Down."""
        now = self._clock.now()
        # Only the nodes not heard from within the Disconnected timer can move; on a healthy cluster, none.
        quiet_since = now - self._timers.disconnected_after_s
        quiet = {node_id: at for node_id, at in self._sessions.last_heard().items() if at <= quiet_since}
        if not quiet and not self._suspecting:
            return frozenset()
        facts = self._sessions.all_facts()
        nodes = {node_id: (facts[node_id].state, at) for node_id, at in quiet.items() if node_id in facts}
        up_total = sum(1 for f in facts.values() if f.state in UP)
        verdict = judge(now, nodes, self._timers, up_total=up_total)
        if verdict.suspect_self != self._suspecting:
            self._suspecting = verdict.suspect_self
            if verdict.suspect_self:
                log.error("most nodes went silent at once; suspecting the head's own network, requeueing nothing",
                          extra={"silent": len(nodes), "up": up_total})
        for node_id in sorted(verdict.silent - verdict.down):
            await self._reactor.handle(NodeSilent(node_id))
        for node_id in sorted(verdict.down):
            log.warning("node down", extra={"node": self._sessions.name(node_id), "silent_s": self._timers.down_after_s})
            await self._reactor.handle(NodeDown(node_id))
        return verdict.down
