"""The shell around the reaction core: read the state an event concerns, `react()`, commit the Plan in one
transaction, then send its messages and wake whoever waits.

Handlers (agent reports, Hello, cancel, the reaper's verdicts) only convert their input into a `core.react` event
and call `handle()`. A Plan whose guard no longer holds when it is committed (a report and a cancel crossing) is
thrown away whole, and the event is reacted to again on what is there now.
Must not: decide anything itself. Every decision is in `scheduler/core/`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from scheduler.core import gangs
from scheduler.core.lifecycle import Trigger
from scheduler.core.plan import Plan
from scheduler.core.react import (
    Cancel, Event, Hello, NodeDown, NodeHeard, NodeLeft, NodeSilent, Policy, Report, StreamClosed, World, react,
)
from scheduler.errors import NotFound
from scheduler.followers import Followers
from scheduler.model import RunRecord
from scheduler.sessions import Sessions, StopAttempt
from scheduler.store import Conflict, Store

log = logging.getLogger(__name__)

ATTEMPTS = 5        # reactions to one event before giving up on a run that keeps moving under it
_WAKES = frozenset({Trigger.COMPLETE, Trigger.FAIL, Trigger.CANCEL, Trigger.REQUEUE})


class Reactor:
    def __init__(self, *, store: Store, sessions: Sessions, followers: Followers, wake: Callable[[], None],
                 policy: Policy, now: Callable[[], float]) -> None:
        self._store = store
        self._sessions = sessions
        self._followers = followers
        self._wake = wake
        self._policy = policy
        self._now = now

    async def handle(self, event: Event) -> Plan:
        """React to `event` and carry the Plan out; returns what was done. Store errors (a full disk) propagate."""
        for _ in range(ATTEMPTS):
            world = await self._world(event)
            plan = react(world, event)
            if not plan:
                return plan
            try:
                committed = await self._store.apply_plan(plan) if _writes(plan) else []
            except Conflict as err:
                log.debug("plan conflict; reacting again", extra={"event": type(event).__name__, "why": str(err)})
                await self._reread_nodes(plan)
                continue
            self._carry_out(world, plan, committed)
            return plan
        log.error("gave up reacting to an event: its runs kept changing", extra={"event": repr(event)})
        return Plan()

    async def _world(self, event: Event) -> World:
        runs: dict[str, RunRecord] = {}
        node_id = ""
        match event:
            case Report(node_id=node_id, run_id=run_id):
                await self._gather(runs, [run_id])
            case Cancel(run_id=run_id):
                await self._gather(runs, [run_id])
            case Hello(node_id=node_id, attempts=attempts):
                await self._gather(runs, [r.id for r in await self._store.live_runs_on(node_id)])
                await self._gather(runs, [run_id for run_id, _ in attempts])
            case NodeDown(node_id=node_id) | NodeLeft(node_id=node_id):
                await self._gather(runs, [r.id for r in await self._store.live_runs_on(node_id)])
            case NodeSilent(node_id=node_id) | NodeHeard(node_id=node_id) | StreamClosed(node_id=node_id):
                pass
        facts = self._sessions.facts(node_id) if node_id else None
        return World(runs, {node_id: facts} if facts is not None else {}, self._now(), self._policy)

    async def _reread_nodes(self, plan: Plan) -> None:
        """Take the facts of the nodes `plan` guarded on from the database again. The runs of a World are read
        from the store on every try, but its nodes come from the sessions, which record a commit only once its
        caller goes on: a caller cancelled while its Plan committed (a StreamClosed handled as its RPC is torn
        down) leaves them behind the database, and every later Plan for that node would conflict."""
        for node_id in {m.node_id for m in plan.node_moves} | {c.node_id for c in plan.counts}:
            try:
                node = await self._store.get_node(node_id)
            except NotFound:
                continue
            self._sessions.remember(node)

    async def _gather(self, runs: dict[str, RunRecord], run_ids: Iterable[str]) -> None:
        """Read the runs and, for each, the gang it belongs to: its parent and the parent's children."""
        gangs_read: set[str] = set()
        for run_id in run_ids:
            if run_id in runs:
                continue
            try:
                run = await self._store.get_run(run_id)
            except NotFound:
                continue
            runs[run.id] = run
            parent_id = run.id if gangs.is_gang_parent(run) else run.parent_id
            if not parent_id or parent_id in gangs_read:
                continue
            gangs_read.add(parent_id)
            if parent_id not in runs:
                runs[parent_id] = await self._store.get_run(parent_id)
            for child in await self._store.children(parent_id):
                runs.setdefault(child.id, child)

    def _carry_out(self, world: World, plan: Plan, committed: list[RunRecord]) -> None:
        after = world.with_plan(plan)
        for node_id in {m.node_id for m in plan.node_moves} | {c.node_id for c in plan.counts}:
            facts = after.nodes[node_id]
            self._sessions.known(facts)
            if any(m.node_id == node_id for m in plan.node_moves):
                log.info("node moved", extra={"node": facts.name, "state": facts.state})
            if any(c.node_id == node_id and c.quarantine for c in plan.counts):
                log.warning("node quarantined", extra={"node": facts.name, "failures_in_row": facts.failures_in_row})
        for stop in plan.stops:
            if stop.node_id:
                self._sessions.send(stop.node_id, StopAttempt(stop.run_id, stop.attempt, stop.reason))
        for fence in plan.fences:
            log.info("stopping an attempt that is not live", extra={"run_id": fence.run_id, "attempt": fence.attempt,
                                                                    "node": self._sessions.name(fence.node_id)})
            self._sessions.send(fence.node_id, StopAttempt(fence.run_id, fence.attempt, fence.reason))
        for move in plan.moves:
            extra = {"run_id": move.run_id, "attempt": move.attempt, "trigger": move.trigger, "reason": move.reason,
                     "detail": move.detail}
            if move.trigger is Trigger.REQUEUE:
                log.warning("attempt lost; requeued", extra=extra)
            elif move.trigger in _WAKES:
                log.info("run ended", extra=extra)
        for run in committed:
            self._followers.notify(run.id)
            if run.parent_id:
                self._followers.notify(run.parent_id)   # `logs -f` of a multi-node run follows its children
        if plan.node_moves or plan.counts or any(m.trigger in _WAKES for m in plan.moves):
            self._wake()


def _writes(plan: Plan) -> bool:
    return bool(plan.moves or plan.stops or plan.node_moves or plan.counts or plan.schedules)


__all__ = ["Reactor"]
