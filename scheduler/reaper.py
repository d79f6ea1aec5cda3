"""The reaper loop: applies `heartbeats.judge()` every tick. Nodes silent past `down_after_s` are marked Down
and their live attempts lost (requeued or failed), unless so many went at once that the head suspects itself.

`run()` ends only by cancellation; an error in a tick is logged and the next tick tries again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from scheduler.attempts import lose_attempt
from scheduler.dispatch import Dispatcher
from scheduler.followers import Followers
from scheduler.heartbeats import Timers, judge
from scheduler.lifecycle import ACTIVE
from scheduler.sessions import Sessions
from scheduler.store import Store

log = logging.getLogger(__name__)


class Reaper:
    def __init__(self, *, store: Store, sessions: Sessions, followers: Followers, dispatcher: Dispatcher,
                 timers: Timers, max_retries: int, clock: Callable[[], float]) -> None:
        self._store = store
        self._sessions = sessions
        self._followers = followers
        self._dispatcher = dispatcher
        self._timers = timers
        self._max_retries = max_retries
        self._clock = clock
        self._down: frozenset[str] = frozenset()
        self._suspecting = False

    async def run(self, tick_s: float) -> None:
        """Judge node health every `tick_s` until cancelled."""
        while True:
            await asyncio.sleep(tick_s)
            try:
                await self.tick()
            except Exception:
                log.exception("reaper tick failed")

    async def tick(self) -> frozenset[str]:
        """One judgement; returns the nodes it declared Down."""
        heard = self._sessions.last_heard()
        self._down = frozenset(n for n in self._down if n in heard and not self._sessions.get(n))
        verdict = judge(self._clock(), heard, self._down, self._timers)
        if verdict.suspect_self != self._suspecting:
            self._suspecting = verdict.suspect_self
            if verdict.suspect_self:
                log.error("most nodes went silent at once; suspecting the head's own network, requeueing nothing",
                          extra={"silent": len(heard) - len(self._sessions.all()), "nodes": len(heard)})
        if not verdict.down:
            return frozenset()
        active = await self._store.runs_in(ACTIVE)
        for node_id in verdict.down:
            await self._store.set_node_state(node_id, "Down")
            log.warning("node down", extra={"node_id": node_id, "silent_s": self._timers.down_after_s})
            for run in (r for r in active if r.node_id == node_id):
                await lose_attempt(self._store, self._sessions, self._followers, run,
                                   detail=f"node {self._sessions.name(node_id)} went down", default_retries=self._max_retries)
        self._down |= verdict.down
        self._dispatcher.wake()
        return verdict.down
