"""The reaction core: an event and the state it concerns go in, a `Plan` comes out. No I/O, no clock, no proto.

    event          what it means                                   the Plan
    Report         an agent observed an attempt change phase       run moves (start, finalize, end); a stop for a
                                                                   report that is not the run's live attempt; the
                                                                   node's failures in a row; the gang's cascade
    Hello          an agent (re)connected, naming its attempts     node Ready; attempts it does not know are lost;
                                                                   attempts the head has ended are stopped
    Cancel         a user canceled a run                           queued: Canceled; live: stop it (a gang: stop
                                                                   every child, the parent follows)
    NodeSilent     nothing heard for the Disconnected timer        node Disconnected; nothing new placed there
    NodeHeard      heard again before the Down timer               node Ready again
    NodeDown       nothing heard for the Down timer                node Down; each live attempt lost once
    StreamClosed   the agent's stream ended                        node Disconnected
    NodeLeft       the autoscaler stopped the node                 node Left; each live attempt lost once

Losing an attempt (`lose`) is the one place that chooses between requeue (attempt N+1, within the run's retry
budget) and `Failed`/`node_lost`; a child of a multi-node run is never requeued alone: its gang is.
Several changes in one event (a node with many runs, a gang's cascade) are folded over a `World` that each
partial Plan updates, so the later decisions see the earlier ones and the whole comes out as one Plan.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import partial
from typing import Any

from scheduler.core import gangs
from scheduler.core.lifecycle import (
    ACTIVE, LOST, NEITHER_SIDE, NODE_SIDE, STOP_REASONS, TABLE, TERMINAL, DesiredState, PendingKind, Reason, RunState,
    Trigger, next_state, outcome,
)
from scheduler.core.nodes import STATE_TABLE, NodeFacts, NodeState, NodeTrigger, Schedule, next_node_state
from scheduler.core.plan import Expect, Fence, Move, NodeCount, NodeMove, Plan, StopRun
from scheduler.model import RunRecord


class Phase(StrEnum):
    """What an agent reports of an attempt."""

    PREPARING = "preparing"
    RUNNING = "running"
    FINALIZING = "finalizing"
    EXITED = "exited"


@dataclass(frozen=True, slots=True)
class Policy:
    default_retries: int = 3        # attempts after a lost one, when the run does not say
    quarantine_after: int = 3       # node-side failures in a row that quarantine a node


# --- events --------------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Report:
    node_id: str
    run_id: str
    attempt: int
    phase: Phase
    exit_code: int = 0
    reason: Reason | None = None
    detail: str = ""
    at: float = 0.0
    pid: int = 0
    outputs_sha256: str = ""


@dataclass(frozen=True, slots=True)
class Hello:
    node_id: str
    attempts: frozenset[tuple[str, int]]


@dataclass(frozen=True, slots=True)
class Cancel:
    run_id: str


@dataclass(frozen=True, slots=True)
class NodeSilent:
    node_id: str


@dataclass(frozen=True, slots=True)
class NodeHeard:
    node_id: str


@dataclass(frozen=True, slots=True)
class NodeDown:
    node_id: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class StreamClosed:
    node_id: str


@dataclass(frozen=True, slots=True)
class NodeLeft:
    node_id: str
    detail: str = ""


Event = Report | Hello | Cancel | NodeSilent | NodeHeard | NodeDown | StreamClosed | NodeLeft


# --- the state a reaction reads ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class World:
    """The runs and nodes an event concerns (a run's gang included: its parent and the parent's children)."""

    runs: Mapping[str, RunRecord]
    nodes: Mapping[str, NodeFacts]
    now: float
    policy: Policy = Policy()

    def with_plan(self, plan: Plan) -> World:
        """The world as it will be once `plan` is applied."""
        runs = dict(self.runs)
        for m in plan.moves:
            run = runs[m.run_id]
            target = next_state(run.id, run.state, m.trigger)
            changes: dict[str, Any] = {"state": target}
            if m.reason is not None:
                changes["reason"] = m.reason
            if m.exit_code is not None:
                changes["exit_code"] = m.exit_code
            if m.trigger is Trigger.REQUEUE:
                changes.update(node_id="", gpu_indices=(), pending_reason=m.pending_reason,
                               pending_kind=PendingKind.REQUEUED)
            runs[m.run_id] = dataclasses.replace(run, **changes)
        for s in plan.stops:
            stopping = runs[s.run_id]
            if stopping.desired_state is not DesiredState.STOP:
                runs[s.run_id] = dataclasses.replace(stopping, desired_state=DesiredState.STOP, reason=s.reason)
        nodes = dict(self.nodes)
        for n in plan.node_moves:
            node = nodes[n.node_id]
            nodes[n.node_id] = dataclasses.replace(node, state=next_node_state(node.name, node.state, n.trigger))
        for c in plan.counts:
            node = nodes[c.node_id]
            nodes[c.node_id] = dataclasses.replace(
                node, failures_in_row=node.failures_in_row + 1 if c.node_side else 0,
                schedule=Schedule.QUARANTINED if c.quarantine else node.schedule)
        return World(runs, nodes, self.now, self.policy)


def fold(world: World, steps: Iterable[Callable[[World], Plan]]) -> Plan:
    """Apply each step to the world the steps before it leave; the sum of their Plans."""
    total = Plan()
    for step in steps:
        plan = step(world)
        world = world.with_plan(plan)
        total = total + plan
    return total


def react(world: World, event: Event) -> Plan:
    match event:
        case Report():
            return on_report(world, event)
        case Hello():
            return on_hello(world, event)
        case Cancel():
            return on_cancel(world, event.run_id)
        case NodeSilent():
            return _node_move(world, event.node_id, NodeTrigger.SILENT, "nothing heard within the heartbeat window")
        case NodeHeard():
            return _node_move(world, event.node_id, NodeTrigger.HEARD, "heard again")
        case StreamClosed():
            return _node_move(world, event.node_id, NodeTrigger.CLOSED, "its stream ended")
        case NodeDown():
            return on_node_down(world, event)
        case NodeLeft():
            return on_node_left(world, event)
    raise TypeError(f"not an event: {event!r}")


def _node_move(world: World, node_id: str, trigger: NodeTrigger, detail: str) -> Plan:
    node = world.nodes.get(node_id)
    if node is None or node.state not in _sources(trigger):
        return Plan()
    return Plan(node_moves=(NodeMove(node_id, trigger, node.state, detail),))


def _sources(trigger: NodeTrigger) -> frozenset[NodeState]:
    return STATE_TABLE[trigger][0]


# --- agent reports -------------------------------------------------------------------------------------------

def on_report(world: World, ev: Report) -> Plan:
    run = world.runs.get(ev.run_id)
    if run is None or run.attempt != ev.attempt or run.node_id != ev.node_id:
        return Plan(fences=(Fence(ev.node_id, ev.run_id, ev.attempt),))    # not the live attempt: stop it
    if run.state in TERMINAL:
        # An end resent after a reconnect is a duplicate; anything else means a process the head has given up on
        # is still alive (a frozen node woke up): it must stop.
        return Plan() if ev.phase is Phase.EXITED else Plan(fences=(Fence(ev.node_id, ev.run_id, ev.attempt),))
    if run.state is RunState.QUEUED:
        return Plan(fences=(Fence(ev.node_id, ev.run_id, ev.attempt),))
    match ev.phase:
        case Phase.PREPARING:
            return Plan()
        case Phase.RUNNING:
            if run.state is not RunState.PREPARING:
                return Plan()   # resent
            return _then_gang(world, Plan(moves=(Move(run.id, Trigger.START, run.state, run.attempt,
                                                      detail=f"pid {ev.pid}" if ev.pid else ev.detail, at=ev.at),)))
        case Phase.FINALIZING:
            if run.state not in TABLE[Trigger.FINALIZE].sources:
                return Plan()
            return _then_gang(world, Plan(moves=(Move(run.id, Trigger.FINALIZE, run.state, run.attempt,
                                                      detail=ev.detail),)))
    return _on_exited(world, run, ev)


def _on_exited(world: World, run: RunRecord, ev: Report) -> Plan:
    if ev.reason in LOST:
        return lose(world, run, detail=ev.detail or f"the agent stopped it ({ev.reason})")
    if ev.reason is Reason.AGENT_ERROR:
        return _count(world, ev.node_id, node_side=True) + _agent_error(world, run, ev)
    result = outcome(exit_code=ev.exit_code, agent_reason=ev.reason, desired=run.desired_state)
    moves = []
    state = run.state
    if state not in TABLE[result.trigger].sources:     # an end seen before a start: finalize first
        moves.append(Move(run.id, Trigger.FINALIZE, state, run.attempt))
        state = RunState.FINALIZING
    moves.append(Move(run.id, result.trigger, state, run.attempt, detail=ev.detail, reason=result.reason,
                      exit_code=ev.exit_code, at=ev.at or world.now, outputs_sha256=ev.outputs_sha256))
    plan = Plan(moves=tuple(moves))
    if result.trigger is not Trigger.CANCEL and result.reason not in NEITHER_SIDE:
        plan = plan + _count(world, ev.node_id, node_side=result.reason in NODE_SIDE)
    return _then_gang(world, plan)


def _agent_error(world: World, run: RunRecord, ev: Report) -> Plan:
    """An attempt the agent failed on its own side: requeued like a lost one, unless the previous attempt failed
    the same way on another node (then it is the run's snapshot, not the nodes: fail it rather than bounce it)."""
    detail = ev.detail or "agent error"
    if run.agent_error_node and run.agent_error_node != ev.node_id:
        move = Move(run.id, Trigger.FAIL, run.state, run.attempt, detail=f"{detail} (also on another node)",
                    reason=Reason.AGENT_ERROR, exit_code=ev.exit_code, at=world.now)
        return _then_gang(world, Plan(moves=(move,)))
    return lose(world, run, detail=detail, cause=Reason.AGENT_ERROR)


def _count(world: World, node_id: str, *, node_side: bool) -> Plan:
    node = world.nodes.get(node_id)
    if node is None or (not node_side and not node.failures_in_row):
        return Plan()
    quarantine = (node_side and node.failures_in_row + 1 >= world.policy.quarantine_after
                  and node.schedule is not Schedule.QUARANTINED)
    detail = (f"{node.name} quarantined: {world.policy.quarantine_after} runs in a row failed on the node's side; "
              f"`runyard node uncordon {node.name}` once it is fixed") if quarantine else ""
    return Plan(counts=(NodeCount(node_id, node_side, quarantine, detail),))


def _then_gang(world: World, plan: Plan) -> Plan:
    """`plan`, and what the parents of the runs it changes do about it."""
    after = world.with_plan(plan)
    parents = {after.runs[r].parent_id for r in plan.touched if after.runs[r].parent_id}
    details = {m.run_id: m.detail for m in plan.moves if m.detail}
    return plan + fold(after, [partial(follow_gang, parent_id=p, details=details)
                               for p in sorted(parents) if p in after.runs])


# --- losing attempts -----------------------------------------------------------------------------------------

def _stop_reason(run: RunRecord) -> Reason:
    """Why the head asked a run to stop: kept in its reason while it is live (`StopRun`)."""
    return Reason(run.reason) if run.reason in STOP_REASONS else Reason.CANCELED_BY_USER


def budget(run: RunRecord, default_retries: int) -> int:
    return run.spec.max_retries if run.spec.max_retries >= 0 else default_retries


def _lose_current(world: World, run_id: str, *, detail: str) -> Plan:
    """`lose()` the run as `world` has it: a step of `fold`, after the steps before it changed the world."""
    return lose(world, world.runs[run_id], detail=detail)


def lose(world: World, run: RunRecord, *, detail: str, cause: Reason = Reason.NODE_LOST) -> Plan:
    """The run's live attempt is gone with its node or agent: requeue it within its retry budget, else fail it."""
    if run.state not in ACTIVE:
        return Plan()
    parent = world.runs.get(run.parent_id) if run.parent_id else None
    failed_here = run.node_id if cause is Reason.AGENT_ERROR else ""
    failed_by = Move(run.id, Trigger.FAIL, run.state, run.attempt, detail=detail, reason=cause, at=world.now,
                     agent_error_node=failed_here)
    if run.desired_state is DesiredState.STOP:     # it was being stopped anyway: that stop is its end
        stopped = _stop_reason(run)
        # Only a gang stops its members; a run merely submitted under another one was stopped by its user.
        if not run.reason and parent is not None and gangs.is_gang_parent(parent):
            stopped = Reason.PARENT_CANCELED if parent.desired_state is DesiredState.STOP else Reason.SIBLING_FAILED
        return _then_gang(world, Plan(moves=(Move(run.id, Trigger.CANCEL, run.state, run.attempt, detail=detail,
                                                  reason=stopped, at=world.now),)))
    if parent is not None and gangs.is_gang_parent(parent):
        return _lose_gang_member(world, parent, run, failed_by, detail)
    if run.attempt <= budget(run, world.policy.default_retries):
        return Plan(moves=(Move(run.id, Trigger.REQUEUE, run.state, run.attempt, detail=detail,
                                pending_reason=f"requeued: attempt {run.attempt} was lost ({detail})",
                                agent_error_node=failed_here),))
    return Plan(moves=(failed_by,))


def _lose_gang_member(world: World, parent: RunRecord, child: RunRecord, failed_by: Move, detail: str) -> Plan:
    rank = gangs.node_rank(child)
    current = child in gangs.current_children(parent, world.runs.values())
    if (current and parent.state in ACTIVE and parent.desired_state is DesiredState.RUN
            and parent.attempt <= budget(parent, world.policy.default_retries)):
        why = f"rank {rank}: {detail}"
        requeue = Move(parent.id, Trigger.REQUEUE, parent.state, parent.attempt, detail=why,
                       pending_reason=f"requeued: attempt {parent.attempt} was lost ({why})")
        stops = tuple(StopRun(c.id, c.attempt, c.node_id, Reason.SIBLING_FAILED, f"the gang was requeued: {why}")
                      for c in gangs.current_children(parent, world.runs.values())
                      if c.id != child.id and c.state in ACTIVE and c.desired_state is DesiredState.RUN)
        return Plan(moves=(failed_by, requeue), stops=stops)
    return _then_gang(world, Plan(moves=(failed_by,)))


def follow_gang(world: World, parent_id: str, details: Mapping[str, str] | None = None) -> Plan:
    """What the parent of a multi-node run does after one of its children changed (`gangs.step`). `details` are
    the children's latest move details (`rank 3 exited with code 7`): a failed parent names its culprit's."""
    parent = world.runs[parent_id]
    if not gangs.is_gang_parent(parent):
        return Plan()
    children = gangs.current_children(parent, world.runs.values())
    decision = gangs.step(parent.state, parent.desired_state, [c.state for c in children])
    moves, state = [], parent.state
    culprit = next((c for c in children if c.state in (RunState.FAILED, RunState.CANCELED)), None)
    for trigger in decision.triggers:
        reason = decision.reason
        if trigger is Trigger.FAIL and culprit is not None and culprit.reason == Reason.NODE_LOST:
            reason = Reason.NODE_LOST
        exit_code = culprit.exit_code if trigger is Trigger.FAIL and culprit is not None else None
        detail = _culprit(culprit, (details or {}).get(culprit.id, "")) if trigger is Trigger.FAIL and culprit else ""
        moves.append(Move(parent.id, trigger, state, parent.attempt, detail=detail, reason=reason,
                          exit_code=exit_code, at=world.now))
        state = next_state(parent.id, state, trigger)
    stops: tuple[StopRun, ...] = ()
    if decision.stop_siblings:
        stops = tuple(StopRun(c.id, c.attempt, c.node_id, Reason.SIBLING_FAILED, "a sibling failed")
                      for c in children if c.state in ACTIVE and c.desired_state is DesiredState.RUN)
    # The decision rests on every child's state: a sibling that moved meanwhile makes it stale.
    return Plan(moves=tuple(moves), stops=stops, expects=tuple(Expect(c.id, c.state) for c in children))


def _culprit(child: RunRecord, detail: str) -> str:
    """`child R (node rank 1) ended Failed: rank 3 exited with code 7`: which child, node and process failed."""
    said = f"child {child.id} (node rank {gangs.node_rank(child)}) ended {child.state}"
    return f"{said}: {detail}" if detail else said


# --- connections and silence ---------------------------------------------------------------------------------

def on_hello(world: World, ev: Hello) -> Plan:
    """Reconcile what the node says it runs with what the head has placed there."""
    node = world.nodes[ev.node_id]
    steps: list[Callable[[World], Plan]] = [
        lambda w: Plan(node_moves=(NodeMove(node.id, NodeTrigger.HELLO, node.state, "connected"),))]
    for run in sorted(world.runs.values(), key=lambda r: r.id):
        if run.node_id == ev.node_id and run.state in ACTIVE and (run.id, run.attempt) not in ev.attempts:
            steps.append(partial(_lose_current, run_id=run.id, detail=f"{node.name} does not know this attempt"))
    plan = fold(world, steps)
    fences = []
    for run_id, attempt in sorted(ev.attempts):
        held = world.runs.get(run_id)
        if held is None or held.attempt != attempt or held.node_id != ev.node_id or held.state not in ACTIVE:
            fences.append(Fence(ev.node_id, run_id, attempt))
        elif held.desired_state is DesiredState.STOP:
            fences.append(Fence(ev.node_id, run_id, attempt, _stop_reason(held)))   # the stop, again
    return plan + Plan(fences=tuple(fences))


def on_node_down(world: World, ev: NodeDown) -> Plan:
    node = world.nodes.get(ev.node_id)
    if node is None or node.state not in (NodeState.READY, NodeState.DISCONNECTED):
        return Plan()
    detail = ev.detail or f"node {node.name} went down"
    moves: list[tuple[NodeTrigger, str]] = [(NodeTrigger.DOWN, detail)]
    if node.state is NodeState.READY:
        moves.insert(0, (NodeTrigger.SILENT, "nothing heard within the heartbeat window"))
    return _gone(world, node.id, moves, detail)


def on_node_left(world: World, ev: NodeLeft) -> Plan:
    node = world.nodes.get(ev.node_id)
    if node is None or node.state is NodeState.LEFT:
        return Plan()
    detail = ev.detail or f"node {node.name} left the cluster"
    return _gone(world, node.id, [(NodeTrigger.LEAVE, detail)], detail)


def _gone(world: World, node_id: str, moves: list[tuple[NodeTrigger, str]], detail: str) -> Plan:
    """The node's `moves`, then each of its live attempts lost once."""
    steps: list[Callable[[World], Plan]] = [partial(_node_move, node_id=node_id, trigger=trigger, detail=why)
                                            for trigger, why in moves]
    steps += [partial(_lose_current, run_id=run.id, detail=detail)
              for run in sorted(world.runs.values(), key=lambda r: r.id)
              if run.node_id == node_id and run.state in ACTIVE]
    return fold(world, steps)


# --- users ---------------------------------------------------------------------------------------------------

def on_cancel(world: World, run_id: str) -> Plan:
    run = world.runs[run_id]
    if run.state is RunState.QUEUED:
        return Plan(moves=(Move(run.id, Trigger.CANCEL, run.state, run.attempt, detail="canceled while queued",
                                reason=Reason.CANCELED_BY_USER, at=world.now),))
    if run.state not in ACTIVE:
        return Plan()
    if run.tracked:     # no process to stop: it ends now (its own tracked runs with it, `store.tracked`)
        return Plan(moves=(Move(run.id, Trigger.CANCEL, run.state, run.attempt, detail="canceled by user",
                                reason=Reason.CANCELED_BY_USER, at=world.now),))
    if gangs.is_gang_parent(run):
        stops = [StopRun(run.id, run.attempt, "", Reason.CANCELED_BY_USER, "canceled by user")]
        stops += [StopRun(c.id, c.attempt, c.node_id, Reason.PARENT_CANCELED, "its parent was canceled")
                  for c in gangs.current_children(run, world.runs.values()) if c.state in ACTIVE]
        plan = Plan(stops=tuple(stops))
        return plan + follow_gang(world.with_plan(plan), run.id)
    return Plan(stops=(StopRun(run.id, run.attempt, run.node_id, Reason.CANCELED_BY_USER, "canceled by user"),))
