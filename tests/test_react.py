"""The reaction core: for each event in each relevant run and node state, the whole Plan `react()` decides.

Each row is a world (runs and nodes), an event, and the Plan expected, with the gang siblings it must expect
(`Plan.expects` is left out of Plan equality, so it is checked on its own). Runs run on node n1 ("gpu-1") at
attempt 1 unless a row says otherwise; the gang is a parent `p` of two children, `c0` (rank 0) on n1 and `c1`
(rank 1) on n2.
"""

from __future__ import annotations

import dataclasses

from collections.abc import Sequence
from typing import Any

import pytest

from scheduler.core.lifecycle import DesiredState, Reason, RunState, Trigger
from scheduler.core.nodes import InvalidNodeTransition, NodeFacts, NodeState, NodeTrigger, Schedule
from scheduler.core.plan import Expect, Fence, Move, NodeCount, NodeMove, Plan, StopRun
from scheduler.core.react import (
    Cancel, Event, Hello, NodeDown, NodeHeard, NodeLeft, NodeSilent, Phase, Policy, Report, StreamClosed, World, react,
)
from scheduler.model import ATTEMPT_PROPERTY, RANK_PROPERTY, TRACKED_PROPERTY, RunRecord, RunSpec

Q, P, R, F = RunState.QUEUED, RunState.PREPARING, RunState.RUNNING, RunState.FINALIZING
DONE, FAILED, CANCELED = RunState.COMPLETED, RunState.FAILED, RunState.CANCELED
RUN, STOP = DesiredState.RUN, DesiredState.STOP
START, FINALIZE, COMPLETE, FAIL = Trigger.START, Trigger.FINALIZE, Trigger.COMPLETE, Trigger.FAIL
CANCEL, REQUEUE = Trigger.CANCEL, Trigger.REQUEUE
JOINING, READY, DISCONNECTED, DOWN, LEFT = list(NodeState)

NOW = 5_000.0           # the world's clock
AT = 4_990.0            # when the agent says the change happened
SHA = "ab" * 32
EXITED, RUNNING, PREPARING, FINALIZING = Phase.EXITED, Phase.RUNNING, Phase.PREPARING, Phase.FINALIZING


# --- worlds --------------------------------------------------------------------------------------------------

def run(run_id: str = "r1", state: RunState = R, *, attempt: int = 1, node: str = "n1", desired: DesiredState = RUN,
        parent: str = "", rank: int | None = None, parent_attempt: int = 1, instances: int = 1, max_retries: int = -1,
        agent_error_node: str = "", tracked: bool = False) -> RunRecord:
    properties = {RANK_PROPERTY: str(rank), ATTEMPT_PROPERTY: str(parent_attempt)} if rank is not None else {}
    if tracked:
        properties, node = {TRACKED_PROPERTY: "1"}, ""
    return RunRecord(
        id=run_id, workspace="ws", experiment="exp", parent_id=parent, display_name=run_id, state=state,
        desired_state=desired, reason="", exit_code=None, pending_reason="", attempt=attempt,
        node_id="" if state is Q else node, gpu_indices=(), spec=RunSpec(("python", "train.py"),
        instance_count=instances, max_retries=max_retries), snapshot_sha256=SHA, outputs_sha256="", tags={},
        properties=properties, created_at=0.0, started_at=None, ended_at=None, agent_error_node=agent_error_node)


def node(node_id: str = "n1", state: NodeState = READY, *, schedule: Schedule = Schedule.ACTIVE,
         failures: int = 0) -> NodeFacts:
    return NodeFacts(node_id, "gpu-" + node_id[1:], state, schedule, failures)


def world(*runs: RunRecord, nodes: Sequence[NodeFacts] = (), policy: Policy = Policy()) -> World:
    nodes = nodes or (node("n1"), node("n2"))
    return World({r.id: r for r in runs}, {n.id: n for n in nodes}, NOW, policy)


def gang(parent: RunState = R, c0: RunState = R, c1: RunState = R, *, attempt: int = 1,
         desired: DesiredState = RUN, c0_desired: DesiredState = RUN, c1_desired: DesiredState = RUN,
         max_retries: int = -1, c1_node: str = "n2") -> list[RunRecord]:
    """A two-node run at the parent's `attempt`: its parent and its current children."""
    return [
        run("p", parent, attempt=attempt, node="", desired=desired, instances=2, max_retries=max_retries),
        run("c0", c0, node="n1", parent="p", rank=0, parent_attempt=attempt, desired=c0_desired),
        run("c1", c1, node=c1_node, parent="p", rank=1, parent_attempt=attempt, desired=c1_desired),
    ]


def report(phase: Phase, run_id: str = "r1", *, node_id: str = "n1", attempt: int = 1, **fields: Any) -> Report:
    return Report(node_id, run_id, attempt, phase, **fields)


def exited(run_id: str = "r1", exit_code: int = 0, reason: Reason | None = None, *, node_id: str = "n1",
           attempt: int = 1, at: float = AT) -> Report:
    """An end as the agent reports it."""
    detail = f"exit code {exit_code}" + (f" ({reason})" if reason else "")
    return Report(node_id, run_id, attempt, EXITED, exit_code=exit_code, reason=reason, detail=detail, at=at,
                  outputs_sha256=SHA if exit_code == 0 else "")


# --- expected pieces -----------------------------------------------------------------------------------------

def requeue(run_id: str, state: RunState, detail: str, *, attempt: int = 1, agent_error_node: str = "") -> Move:
    return Move(run_id, REQUEUE, state, attempt, detail=detail, agent_error_node=agent_error_node,
                pending_reason=f"requeued: attempt {attempt} was lost ({detail})")


def lost(run_id: str, state: RunState, detail: str, *, attempt: int = 1) -> Move:
    """Failed with node_lost, out of retries (or a gang member, which is never requeued alone)."""
    return Move(run_id, FAIL, state, attempt, detail=detail, reason=Reason.NODE_LOST, at=NOW)


def ended(run_id: str, trigger: Trigger, state: RunState, exit_code: int, reason: Reason | None = None,
          *, said: Reason | None = None, attempt: int = 1) -> Move:
    """A run ended by the agent's report `exited(run_id, exit_code, said)`."""
    return Move(run_id, trigger, state, attempt, detail=f"exit code {exit_code}" + (f" ({said})" if said else ""),
                reason=reason, exit_code=exit_code, at=AT, outputs_sha256=SHA if exit_code == 0 else "")


def quarantined(node_id: str = "n1", limit: int = 3) -> NodeCount:
    name = "gpu-" + node_id[1:]
    return NodeCount(node_id, True, True, f"{name} quarantined: {limit} runs in a row failed on the node's side; "
                                          f"`runyard node uncordon {name}` once it is fixed")


def expects(**states: RunState) -> tuple[Expect, ...]:
    return tuple(Expect(run_id, state) for run_id, state in states.items())


def row(name: str, before: World, event: Event, plan: Plan, expected: tuple[Expect, ...] = ()) -> Any:
    return pytest.param(before, event, plan, expected, id=name)


def check(before: World, event: Event, plan: Plan, expected: tuple[Expect, ...]) -> None:
    decided = react(before, event)
    assert decided == plan
    assert decided.expects == expected
    before.with_plan(decided)   # the Plan is one the state tables allow, in order


CUT = "exit code -1 (cut_off)"
NOTHING = Plan()


def fence(run_id: str = "r1", attempt: int = 1, node_id: str = "n1", reason: Reason = Reason.STALE) -> Plan:
    return Plan(fences=(Fence(node_id, run_id, attempt, reason),))


def moves(*ms: Move, **rest: Any) -> Plan:
    return Plan(moves=ms, **rest)


# --- agent reports: one run ----------------------------------------------------------------------------------

REPORTS = [
    row("stale-attempt-fenced", world(run(attempt=2)), report(RUNNING, attempt=1), fence(attempt=1)),
    row("older-attempt-ending-fenced", world(run(attempt=3)), exited(attempt=2), fence(attempt=2)),
    row("wrong-node-fenced", world(run(node="n1")), report(RUNNING, node_id="n2"), fence(node_id="n2")),
    row("unknown-run-fenced", world(), exited("ghost"), fence("ghost")),
    row("requeued-run-reported-fenced", world(run(state=Q)), report(RUNNING), fence()),
    row("completed-run-exited-resent-nothing", world(run(state=DONE)), exited(), NOTHING),
    row("failed-run-exited-resent-nothing", world(run(state=FAILED)), exited(exit_code=3), NOTHING),
    row("canceled-run-exited-resent-nothing", world(run(state=CANCELED)), exited(exit_code=143), NOTHING),
    row("completed-run-reported-running-frozen-node-woke-fenced", world(run(state=DONE)), report(RUNNING), fence()),
    row("failed-run-reported-running-fenced", world(run(state=FAILED)), report(RUNNING), fence()),
    row("canceled-run-reported-finalizing-fenced", world(run(state=CANCELED)), report(FINALIZING), fence()),
    row("failed-run-reported-preparing-fenced", world(run(state=FAILED)), report(PREPARING), fence()),
    row("preparing-reported-nothing", world(run(state=P)), report(PREPARING), NOTHING),
    row("running-from-preparing-start-with-pid-and-started-at", world(run(state=P)),
        report(RUNNING, pid=4242, at=AT), moves(Move("r1", START, P, 1, detail="pid 4242", at=AT))),
    row("running-without-pid-start-with-agent-detail", world(run(state=P)),
        report(RUNNING, detail="started", at=AT), moves(Move("r1", START, P, 1, detail="started", at=AT))),
    row("running-resent-while-running-nothing", world(run(state=R)), report(RUNNING, pid=4242), NOTHING),
    row("running-resent-while-finalizing-nothing", world(run(state=F)), report(RUNNING, pid=4242), NOTHING),
    row("finalizing-from-running", world(run(state=R)), report(FINALIZING, detail="uploading outputs"),
        moves(Move("r1", FINALIZE, R, 1, detail="uploading outputs"))),
    row("finalizing-from-preparing-command-never-started", world(run(state=P)), report(FINALIZING),
        moves(Move("r1", FINALIZE, P, 1))),
    row("finalizing-resent-nothing", world(run(state=F)), report(FINALIZING), NOTHING),
    row("exit-0-from-running-complete", world(run(state=R)), exited(), moves(ended("r1", COMPLETE, R, 0))),
    row("exit-0-from-finalizing-complete", world(run(state=F)), exited(), moves(ended("r1", COMPLETE, F, 0))),
    row("exit-0-without-time-ends-now", world(run(state=F)), exited(at=0.0),
        moves(Move("r1", COMPLETE, F, 1, detail="exit code 0", exit_code=0, at=NOW, outputs_sha256=SHA))),
    row("exit-3-fail-exit-code", world(run(state=F)), exited(exit_code=3),
        moves(ended("r1", FAIL, F, 3, Reason.EXIT_CODE))),
    row("exit-0-while-preparing-finalize-then-complete", world(run(state=P)), exited(),
        moves(Move("r1", FINALIZE, P, 1), ended("r1", COMPLETE, F, 0))),
    row("exit-127-while-preparing-fail-directly", world(run(state=P)), exited(exit_code=127),
        moves(ended("r1", FAIL, P, 127, Reason.EXIT_CODE))),
    row("oom-killed-fail-oom", world(run(state=R)), exited(exit_code=137, reason=Reason.OOM_KILLED),
        moves(ended("r1", FAIL, R, 137, Reason.OOM_KILLED, said=Reason.OOM_KILLED))),
    row("timeout-fail-timeout", world(run(state=F)), exited(exit_code=143, reason=Reason.TIMEOUT),
        moves(ended("r1", FAIL, F, 143, Reason.TIMEOUT, said=Reason.TIMEOUT))),
    row("snapshot-invalid-fail-not-counted-against-node", world(run(state=P)),
        exited(exit_code=-1, reason=Reason.SNAPSHOT_INVALID),
        moves(ended("r1", FAIL, P, -1, Reason.SNAPSHOT_INVALID, said=Reason.SNAPSHOT_INVALID))),
    row("env-build-failed-fail-not-counted-against-node", world(run(state=F)),
        exited(exit_code=1, reason=Reason.ENV_BUILD_FAILED),
        moves(ended("r1", FAIL, F, 1, Reason.ENV_BUILD_FAILED, said=Reason.ENV_BUILD_FAILED))),
    # Asked to stop.
    row("stop-asked-exit-143-cancel-canceled-by-user", world(run(state=R, desired=STOP)), exited(exit_code=143),
        moves(ended("r1", CANCEL, R, 143, Reason.CANCELED_BY_USER))),
    row("stop-asked-stopped-while-preparing-cancel-from-preparing", world(run(state=P, desired=STOP)),
        exited(exit_code=-1, reason=Reason.CANCELED_BY_USER),
        moves(ended("r1", CANCEL, P, -1, Reason.CANCELED_BY_USER, said=Reason.CANCELED_BY_USER))),
    row("stop-asked-but-exit-0-complete", world(run(state=F, desired=STOP)), exited(),
        moves(ended("r1", COMPLETE, F, 0))),
]


# Attempts lost with their node or agent: requeued within the retry budget (attempt <= budget), else node_lost.
LOSSES = [
    row(f"{why}-within-budget-requeued", world(run(state=R)), exited(exit_code=-1, reason=why),
        moves(requeue("r1", R, f"exit code -1 ({why})")))
    for why in (Reason.CUT_OFF, Reason.AGENT_STOPPED, Reason.NODE_LOST)
] + [
    row("lost-without-detail-says-the-agent-stopped-it", world(run(state=R)),
        report(EXITED, exit_code=-1, reason=Reason.CUT_OFF), moves(requeue("r1", R, "the agent stopped it (cut_off)"))),
    row("lost-while-preparing-requeued", world(run(state=P)), exited(exit_code=-1, reason=Reason.AGENT_STOPPED),
        moves(requeue("r1", P, "exit code -1 (agent_stopped)"))),
    row("lost-while-finalizing-requeued", world(run(state=F)), exited(exit_code=-1, reason=Reason.CUT_OFF),
        moves(requeue("r1", F, CUT))),
    row("attempt-3-default-budget-3-requeued", world(run(attempt=3)),
        exited(exit_code=-1, reason=Reason.CUT_OFF, attempt=3), moves(requeue("r1", R, CUT, attempt=3))),
    row("attempt-4-default-budget-3-fail-node-lost", world(run(attempt=4)),
        exited(exit_code=-1, reason=Reason.CUT_OFF, attempt=4), moves(lost("r1", R, CUT, attempt=4))),
    row("agent-stopped-beyond-budget-fail-node-lost", world(run(attempt=4)),
        exited(exit_code=-1, reason=Reason.AGENT_STOPPED, attempt=4),
        moves(lost("r1", R, "exit code -1 (agent_stopped)", attempt=4))),
    row("max-retries-0-first-loss-fails", world(run(max_retries=0)), exited(exit_code=-1, reason=Reason.CUT_OFF),
        moves(lost("r1", R, CUT))),
    row("max-retries-1-attempt-1-requeued", world(run(max_retries=1)),
        exited(exit_code=-1, reason=Reason.CUT_OFF), moves(requeue("r1", R, CUT))),
    row("max-retries-1-attempt-2-fails", world(run(max_retries=1, attempt=2)),
        exited(exit_code=-1, reason=Reason.CUT_OFF, attempt=2), moves(lost("r1", R, CUT, attempt=2))),
    row("max-retries-5-beats-default-3-attempt-5-requeued", world(run(max_retries=5, attempt=5)),
        exited(exit_code=-1, reason=Reason.CUT_OFF, attempt=5), moves(requeue("r1", R, CUT, attempt=5))),
    row("policy-default-retries-0-first-loss-fails", world(run(), policy=Policy(default_retries=0)),
        exited(exit_code=-1, reason=Reason.CUT_OFF), moves(lost("r1", R, CUT))),
    row("policy-default-retries-0-but-max-retries-2-requeued",
        world(run(max_retries=2), policy=Policy(default_retries=0)),
        exited(exit_code=-1, reason=Reason.CUT_OFF), moves(requeue("r1", R, CUT))),
    row("lost-while-being-stopped-cancel-canceled-by-user", world(run(desired=STOP)),
        exited(exit_code=-1, reason=Reason.CUT_OFF),
        moves(Move("r1", CANCEL, R, 1, detail=CUT, reason=Reason.CANCELED_BY_USER, at=NOW))),
    # A run submitted under another run that is not a multi-node run: it is requeued and canceled on its own.
    row("nested-run-lost-requeued-alone", world(run("sweep", node="n2"), run(parent="sweep")),
        exited(exit_code=-1, reason=Reason.CUT_OFF), moves(requeue("r1", R, CUT))),
    row("nested-run-ends-its-parent-untouched", world(run("sweep", node="n2"), run(state=F, parent="sweep")),
        exited(), moves(ended("r1", COMPLETE, F, 0))),
    row("nested-run-canceled-by-user-then-lost-canceled-by-user",
        world(run("sweep", node="n2"), run(parent="sweep", desired=STOP)),
        exited(exit_code=-1, reason=Reason.CUT_OFF),
        moves(Move("r1", CANCEL, R, 1, detail=CUT, reason=Reason.CANCELED_BY_USER, at=NOW))),
    row("nested-run-canceled-with-its-parent-then-lost-canceled-by-user",
        world(run("sweep", node="n2", desired=STOP), run(parent="sweep", desired=STOP)),
        exited(exit_code=-1, reason=Reason.CUT_OFF),
        moves(Move("r1", CANCEL, R, 1, detail=CUT, reason=Reason.CANCELED_BY_USER, at=NOW))),
]


# Failures on the agent's side and the node's failures in a row.
BOOM = "agent error: boom"


def agent_error(run_id: str = "r1", *, attempt: int = 1, detail: str = BOOM) -> Report:
    return report(EXITED, run_id, exit_code=-1, reason=Reason.AGENT_ERROR, detail=detail, attempt=attempt, at=AT)


COUNTS = [
    row("agent-error-requeued-remembering-the-node-and-counted", world(run()), agent_error(),
        moves(requeue("r1", R, BOOM, agent_error_node="n1"), counts=(NodeCount("n1", True),))),
    row("agent-error-without-detail", world(run()), agent_error(detail=""),
        moves(requeue("r1", R, "agent error", agent_error_node="n1"), counts=(NodeCount("n1", True),))),
    row("agent-error-one-short-of-quarantine-counted", world(run(), nodes=[node(failures=1)]), agent_error(),
        moves(requeue("r1", R, BOOM, agent_error_node="n1"), counts=(NodeCount("n1", True),))),
    row("agent-error-reaching-quarantine-after-quarantines", world(run(), nodes=[node(failures=2)]), agent_error(),
        moves(requeue("r1", R, BOOM, agent_error_node="n1"), counts=(quarantined(),))),
    row("agent-error-on-cordoned-node-reaching-the-limit-quarantines",
        world(run(), nodes=[node(failures=2, schedule=Schedule.CORDONED)]), agent_error(),
        moves(requeue("r1", R, BOOM, agent_error_node="n1"), counts=(quarantined(),))),
    row("agent-error-on-quarantined-node-counted-not-quarantined-again",
        world(run(), nodes=[node(failures=5, schedule=Schedule.QUARANTINED)]), agent_error(),
        moves(requeue("r1", R, BOOM, agent_error_node="n1"), counts=(NodeCount("n1", True),))),
    row("policy-quarantine-after-1-first-agent-error-quarantines",
        world(run(), policy=Policy(quarantine_after=1)), agent_error(),
        moves(requeue("r1", R, BOOM, agent_error_node="n1"), counts=(quarantined(limit=1),))),
    # A spec the build refused is the run's fault: it neither counts towards quarantine nor clears the count.
    row("env-build-failed-one-short-of-quarantine-neither-counted-nor-reset",
        world(run(state=F), nodes=[node(failures=2)]), exited(exit_code=1, reason=Reason.ENV_BUILD_FAILED),
        moves(ended("r1", FAIL, F, 1, Reason.ENV_BUILD_FAILED, said=Reason.ENV_BUILD_FAILED))),
    row("env-build-failed-while-preparing-fails-the-run-alone", world(run(state=P), nodes=[node(failures=1)]),
        exited(exit_code=-1, reason=Reason.ENV_BUILD_FAILED),
        moves(ended("r1", FAIL, P, -1, Reason.ENV_BUILD_FAILED, said=Reason.ENV_BUILD_FAILED))),
    row("agent-error-after-one-on-another-node-fail-agent-error", world(run(agent_error_node="n2", attempt=2)),
        agent_error(attempt=2),
        moves(Move("r1", FAIL, R, 2, detail=f"{BOOM} (also on another node)", reason=Reason.AGENT_ERROR,
                   exit_code=-1, at=NOW), counts=(NodeCount("n1", True),))),
    row("agent-error-again-on-the-same-node-requeued-again", world(run(agent_error_node="n1", attempt=2)),
        agent_error(attempt=2),
        moves(requeue("r1", R, BOOM, attempt=2, agent_error_node="n1"), counts=(NodeCount("n1", True),))),
    row("agent-error-beyond-budget-fail-agent-error", world(run(attempt=4)), agent_error(attempt=4),
        moves(Move("r1", FAIL, R, 4, detail=BOOM, reason=Reason.AGENT_ERROR, at=NOW, agent_error_node="n1"),
              counts=(NodeCount("n1", True),))),
    row("clean-run-after-failures-resets-the-count", world(run(state=F), nodes=[node(failures=2)]), exited(),
        moves(ended("r1", COMPLETE, F, 0), counts=(NodeCount("n1", False),))),
    row("exit-3-after-failures-resets-the-count-the-run-not-the-node", world(run(state=F), nodes=[node(failures=2)]),
        exited(exit_code=3), moves(ended("r1", FAIL, F, 3, Reason.EXIT_CODE), counts=(NodeCount("n1", False),))),
    row("clean-run-without-failures-no-count", world(run(state=F)), exited(), moves(ended("r1", COMPLETE, F, 0))),
    row("canceled-run-after-failures-no-count", world(run(desired=STOP), nodes=[node(failures=2)]),
        exited(exit_code=143), moves(ended("r1", CANCEL, R, 143, Reason.CANCELED_BY_USER))),
    row("lost-run-after-failures-no-count", world(run(), nodes=[node(failures=2)]),
        exited(exit_code=-1, reason=Reason.CUT_OFF), moves(requeue("r1", R, CUT))),
    row("end-on-a-node-outside-the-world-no-count", world(run(state=F), nodes=[node("n2")]),
        exited(exit_code=1, reason=Reason.ENV_BUILD_FAILED),
        moves(ended("r1", FAIL, F, 1, Reason.ENV_BUILD_FAILED, said=Reason.ENV_BUILD_FAILED))),
]


@pytest.mark.parametrize(("before", "event", "plan", "expected"), REPORTS + LOSSES + COUNTS)
def test_report(before: World, event: Event, plan: Plan, expected: tuple[Expect, ...]) -> None:
    check(before, event, plan, expected)


# --- agent reports: gangs ------------------------------------------------------------------------------------

RANK0_CUT = "rank 0: exit code -1 (cut_off)"

GANGS = [
    row("first-child-running-parent-waits", world(*gang(P, P, P)), report(RUNNING, "c0", pid=7, at=AT),
        moves(Move("c0", START, P, 1, detail="pid 7", at=AT)), expects(c0=R, c1=P)),
    row("last-child-running-parent-starts", world(*gang(P, R, P)),
        report(RUNNING, "c1", node_id="n2", pid=8, at=AT),
        moves(Move("c1", START, P, 1, detail="pid 8", at=AT), Move("p", START, P, 1, at=NOW)), expects(c0=R, c1=R)),
    row("last-child-finalizing-without-running-parent-starts", world(*gang(P, R, P)),
        report(FINALIZING, "c1", node_id="n2"),
        moves(Move("c1", FINALIZE, P, 1), Move("p", START, P, 1, at=NOW)), expects(c0=R, c1=F)),
    row("child-fails-parent-fails-sibling-failed-with-exit-code-sibling-stopped", world(*gang(R, R, R)),
        exited("c0", exit_code=3),
        moves(ended("c0", FAIL, R, 3, Reason.EXIT_CODE),
              Move("p", FAIL, R, 1, detail="child c0 (node rank 0) ended Failed: exit code 3", reason=Reason.SIBLING_FAILED, exit_code=3, at=NOW),
              stops=(StopRun("c1", 1, "n2", Reason.SIBLING_FAILED, "a sibling failed"),)),
        expects(c0=FAILED, c1=R)),
    row("child-fails-while-parent-preparing", world(*gang(P, P, R)), exited("c1", exit_code=2, node_id="n2"),
        moves(ended("c1", FAIL, R, 2, Reason.EXIT_CODE),
              Move("p", FAIL, P, 1, detail="child c1 (node rank 1) ended Failed: exit code 2", reason=Reason.SIBLING_FAILED, exit_code=2, at=NOW),
              stops=(StopRun("c0", 1, "n1", Reason.SIBLING_FAILED, "a sibling failed"),)),
        expects(c0=P, c1=FAILED)),
    row("child-fails-sibling-already-stopping-not-stopped-again", world(*gang(R, R, R, c1_desired=STOP)),
        exited("c0", exit_code=3),
        moves(ended("c0", FAIL, R, 3, Reason.EXIT_CODE),
              Move("p", FAIL, R, 1, detail="child c0 (node rank 0) ended Failed: exit code 3", reason=Reason.SIBLING_FAILED, exit_code=3,
                   at=NOW)),
        expects(c0=FAILED, c1=R)),
    row("child-fails-sibling-done-nothing-to-stop", world(*gang(R, R, DONE)), exited("c0", exit_code=3),
        moves(ended("c0", FAIL, R, 3, Reason.EXIT_CODE),
              Move("p", FAIL, R, 1, detail="child c0 (node rank 0) ended Failed: exit code 3", reason=Reason.SIBLING_FAILED, exit_code=3,
                   at=NOW)),
        expects(c0=FAILED, c1=DONE)),
    row("stopped-sibling-ends-canceled-sibling-failed-parent-already-failed",
        world(*gang(FAILED, FAILED, R, c1_desired=STOP)),
        exited("c1", exit_code=143, reason=Reason.SIBLING_FAILED, node_id="n2"),
        moves(ended("c1", CANCEL, R, 143, Reason.SIBLING_FAILED, said=Reason.SIBLING_FAILED)),
        expects(c0=FAILED, c1=CANCELED)),
    row("one-child-completes-sibling-running-parent-waits", world(*gang(R, R, R)), exited("c0"),
        moves(ended("c0", COMPLETE, R, 0)), expects(c0=DONE, c1=R)),
    row("last-child-completes-parent-completes", world(*gang(R, DONE, F)), exited("c1", node_id="n2"),
        moves(ended("c1", COMPLETE, F, 0), Move("p", COMPLETE, R, 1, at=NOW)), expects(c0=DONE, c1=DONE)),
    row("last-child-completes-parent-preparing-starts-then-completes", world(*gang(P, DONE, P)),
        exited("c1", node_id="n2"),
        moves(Move("c1", FINALIZE, P, 1), ended("c1", COMPLETE, F, 0), Move("p", START, P, 1, at=NOW),
              Move("p", COMPLETE, R, 1, at=NOW)),
        expects(c0=DONE, c1=DONE)),
    row("child-lost-within-parent-budget-child-node-lost-gang-requeued-sibling-stopped", world(*gang(R, R, R)),
        exited("c0", exit_code=-1, reason=Reason.CUT_OFF),
        moves(lost("c0", R, CUT), requeue("p", R, RANK0_CUT),
              stops=(StopRun("c1", 1, "n2", Reason.SIBLING_FAILED, f"the gang was requeued: {RANK0_CUT}"),))),
    row("child-lost-while-parent-preparing-gang-requeued", world(*gang(P, P, R)),
        exited("c0", exit_code=-1, reason=Reason.CUT_OFF),
        moves(lost("c0", P, CUT), requeue("p", P, RANK0_CUT),
              stops=(StopRun("c1", 1, "n2", Reason.SIBLING_FAILED, f"the gang was requeued: {RANK0_CUT}"),))),
    row("child-lost-sibling-already-done-gang-requeued-nothing-to-stop", world(*gang(R, R, DONE)),
        exited("c0", exit_code=-1, reason=Reason.CUT_OFF), moves(lost("c0", R, CUT), requeue("p", R, RANK0_CUT))),
    row("child-lost-sibling-already-stopping-gang-requeued-not-stopped-again",
        world(*gang(R, R, R, c1_desired=STOP)), exited("c0", exit_code=-1, reason=Reason.CUT_OFF),
        moves(lost("c0", R, CUT), requeue("p", R, RANK0_CUT))),
    row("child-lost-before-the-gangs-cancel-reached-it-gang-not-requeued", world(*gang(R, R, R, desired=STOP)),
        exited("c0", exit_code=-1, reason=Reason.CUT_OFF), moves(lost("c0", R, CUT)), expects(c0=FAILED, c1=R)),
    row("child-lost-at-parent-attempt-3-of-3-gang-requeued", world(*gang(R, R, R, attempt=3)),
        exited("c0", exit_code=-1, reason=Reason.CUT_OFF),
        moves(lost("c0", R, CUT), requeue("p", R, RANK0_CUT, attempt=3),
              stops=(StopRun("c1", 1, "n2", Reason.SIBLING_FAILED, f"the gang was requeued: {RANK0_CUT}"),))),
    row("child-lost-beyond-parent-budget-parent-fails-node-lost", world(*gang(R, R, R, attempt=4)),
        exited("c0", exit_code=-1, reason=Reason.CUT_OFF),
        moves(lost("c0", R, CUT),
              Move("p", FAIL, R, 4, detail=f"child c0 (node rank 0) ended Failed: {CUT}", reason=Reason.NODE_LOST, at=NOW),
              stops=(StopRun("c1", 1, "n2", Reason.SIBLING_FAILED, "a sibling failed"),)),
        expects(c0=FAILED, c1=R)),
    row("parent-max-retries-0-first-loss-fails-the-gang", world(*gang(R, R, R, max_retries=0)),
        exited("c0", exit_code=-1, reason=Reason.AGENT_STOPPED),
        moves(lost("c0", R, "exit code -1 (agent_stopped)"),
              Move("p", FAIL, R, 1, detail="child c0 (node rank 0) ended Failed: exit code -1 (agent_stopped)", reason=Reason.NODE_LOST, at=NOW),
              stops=(StopRun("c1", 1, "n2", Reason.SIBLING_FAILED, "a sibling failed"),)),
        expects(c0=FAILED, c1=R)),
    row("child-of-an-older-parent-attempt-lost-no-requeue-of-the-parent",
        world(*gang(R, R, R, attempt=2), run("old0", R, node="n3", parent="p", rank=0, parent_attempt=1)),
        exited("old0", exit_code=-1, reason=Reason.CUT_OFF, node_id="n3"),
        moves(lost("old0", R, CUT)), expects(c0=R, c1=R)),
    row("child-agent-error-child-fails-agent-error-gang-requeued-node-counted", world(*gang(R, R, R)),
        agent_error("c0"),
        moves(Move("c0", FAIL, R, 1, detail=BOOM, reason=Reason.AGENT_ERROR, at=NOW, agent_error_node="n1"),
              requeue("p", R, f"rank 0: {BOOM}"),
              stops=(StopRun("c1", 1, "n2", Reason.SIBLING_FAILED, f"the gang was requeued: rank 0: {BOOM}"),),
              counts=(NodeCount("n1", True),))),
    row("child-lost-while-gang-canceled-child-parent-canceled-parent-canceled",
        world(*gang(R, R, CANCELED, desired=STOP, c0_desired=STOP, c1_desired=STOP)),
        exited("c0", exit_code=-1, reason=Reason.CUT_OFF),
        moves(Move("c0", CANCEL, R, 1, detail=CUT, reason=Reason.PARENT_CANCELED, at=NOW),
              Move("p", CANCEL, R, 1, reason=Reason.CANCELED_BY_USER, at=NOW)),
        expects(c0=CANCELED, c1=CANCELED)),
    row("child-lost-while-stopped-for-a-failed-sibling-canceled-sibling-failed",
        world(*gang(FAILED, R, FAILED, c0_desired=STOP)), exited("c0", exit_code=-1, reason=Reason.CUT_OFF),
        moves(Move("c0", CANCEL, R, 1, detail=CUT, reason=Reason.SIBLING_FAILED, at=NOW)),
        expects(c0=CANCELED, c1=FAILED)),
    row("canceled-children-all-ended-parent-canceled",
        world(*gang(R, CANCELED, R, desired=STOP, c0_desired=STOP, c1_desired=STOP)),
        exited("c1", exit_code=143, reason=Reason.PARENT_CANCELED, node_id="n2"),
        moves(ended("c1", CANCEL, R, 143, Reason.PARENT_CANCELED, said=Reason.PARENT_CANCELED),
              Move("p", CANCEL, R, 1, reason=Reason.CANCELED_BY_USER, at=NOW)),
        expects(c0=CANCELED, c1=CANCELED)),
    row("canceled-child-ends-sibling-still-stopping-parent-waits",
        world(*gang(R, R, R, desired=STOP, c0_desired=STOP, c1_desired=STOP)),
        exited("c0", exit_code=143, reason=Reason.PARENT_CANCELED),
        moves(ended("c0", CANCEL, R, 143, Reason.PARENT_CANCELED, said=Reason.PARENT_CANCELED)),
        expects(c0=CANCELED, c1=R)),
]


@pytest.mark.parametrize(("before", "event", "plan", "expected"), GANGS)
def test_gang_report(before: World, event: Event, plan: Plan, expected: tuple[Expect, ...]) -> None:
    check(before, event, plan, expected)


# --- Hello ---------------------------------------------------------------------------------------------------

def hello(*attempts: tuple[str, int], node_id: str = "n1") -> Hello:
    return Hello(node_id, frozenset(attempts))


def ready(state: NodeState = READY, node_id: str = "n1") -> Plan:
    return Plan(node_moves=(NodeMove(node_id, NodeTrigger.HELLO, state, "connected"),))


UNKNOWN = "gpu-1 does not know this attempt"

HELLOS = [
    row(f"hello-from-{state.lower()}-ready", world(nodes=[node(state=state)]), hello(), ready(state))
    for state in (JOINING, READY, DISCONNECTED, DOWN)
] + [
    row("current-attempt-reported-nothing-but-ready", world(run(), run("r2", node="n2")), hello(("r1", 1)), ready()),
    row("live-attempt-missing-lost-requeued", world(run(), nodes=[node(state=DISCONNECTED)]), hello(),
        ready(DISCONNECTED) + moves(requeue("r1", R, UNKNOWN))),
    row("preparing-attempt-never-delivered-requeued", world(run(state=P), nodes=[node(state=DOWN)]), hello(),
        ready(DOWN) + moves(requeue("r1", P, UNKNOWN))),
    row("missing-attempt-beyond-budget-fail-node-lost", world(run(attempt=4)), hello(),
        ready() + moves(lost("r1", R, UNKNOWN, attempt=4))),
    row("missing-attempt-of-a-run-being-stopped-canceled", world(run(desired=STOP)), hello(),
        ready() + moves(Move("r1", CANCEL, R, 1, detail=UNKNOWN, reason=Reason.CANCELED_BY_USER, at=NOW))),
    row("missing-attempts-each-lost-in-run-order", world(run("r2", F), run("r1", P)), hello(),
        ready() + moves(requeue("r1", P, UNKNOWN), requeue("r2", F, UNKNOWN))),
    row("queued-and-ended-runs-not-lost", world(run(state=Q), run("r2", DONE), run("r3", FAILED)), hello(), ready()),
    row("unknown-run-reported-fenced-stale", world(), hello(("ghost", 1)), ready() + fence("ghost")),
    row("old-attempt-reported-fenced-stale", world(run(attempt=2)), hello(("r1", 1), ("r1", 2)),
        ready() + fence(attempt=1)),
    row("ended-run-reported-fenced-stale", world(run(state=DONE)), hello(("r1", 1)), ready() + fence()),
    row("requeued-run-reported-fenced-stale", world(run(state=Q)), hello(("r1", 1)), ready() + fence()),
    row("run-now-on-another-node-reported-fenced-stale", world(run(node="n2")), hello(("r1", 1)),
        ready() + fence()),
    row("attempt-being-stopped-reported-stop-again", world(run(desired=STOP)), hello(("r1", 1)),
        ready() + fence(reason=Reason.CANCELED_BY_USER)),
    row("attempt-being-stopped-for-a-sibling-stopped-again-for-that-reason",
        world(dataclasses.replace(run(desired=STOP), reason=Reason.SIBLING_FAILED)), hello(("r1", 1)),
        ready() + fence(reason=Reason.SIBLING_FAILED)),
    row("missing-attempt-stopped-for-its-parent-canceled-with-that-reason",
        world(dataclasses.replace(run(desired=STOP), reason=Reason.PARENT_CANCELED)), hello(),
        ready() + moves(Move("r1", CANCEL, R, 1, detail=UNKNOWN, reason=Reason.PARENT_CANCELED, at=NOW))),
    row("gang-child-missing-gang-requeued-sibling-stopped", world(*gang(R, R, R)), hello(),
        ready() + moves(lost("c0", R, UNKNOWN), requeue("p", R, f"rank 0: {UNKNOWN}"),
                        stops=(StopRun("c1", 1, "n2", Reason.SIBLING_FAILED,
                                       f"the gang was requeued: rank 0: {UNKNOWN}"),))),
]


@pytest.mark.parametrize(("before", "event", "plan", "expected"), HELLOS)
def test_hello(before: World, event: Event, plan: Plan, expected: tuple[Expect, ...]) -> None:
    check(before, event, plan, expected)


def test_an_agent_restarted_on_a_node_that_left_is_ready_again() -> None:
    plan = react(world(nodes=[node(state=LEFT)]), hello())
    assert plan.node_moves == (NodeMove("n1", NodeTrigger.HELLO, LEFT, "connected"),)


# --- silence, loss, closed streams ---------------------------------------------------------------------------

GONE = "node gpu-1 went down"
SILENT_MOVE = NodeMove("n1", NodeTrigger.SILENT, READY, "nothing heard within the heartbeat window")
DOWN_MOVE = NodeMove("n1", NodeTrigger.DOWN, DISCONNECTED, GONE)


def node_moves(*ms: NodeMove, **rest: Any) -> Plan:
    return Plan(node_moves=ms, **rest)


NODE_DOWN = [
    row("ready-node-down-silent-then-down-its-run-requeued", world(run()), NodeDown("n1"),
        node_moves(SILENT_MOVE, DOWN_MOVE, moves=(requeue("r1", R, GONE),))),
    row("disconnected-node-down-its-run-requeued", world(run(), nodes=[node(state=DISCONNECTED)]), NodeDown("n1"),
        node_moves(DOWN_MOVE, moves=(requeue("r1", R, GONE),))),
    row("down-with-the-reapers-detail", world(run(), nodes=[node(state=DISCONNECTED)]),
        NodeDown("n1", detail="silent for 300s"),
        node_moves(NodeMove("n1", NodeTrigger.DOWN, DISCONNECTED, "silent for 300s"),
                   moves=(requeue("r1", R, "silent for 300s"),))),
    row("empty-node-down-node-moves-only", world(run(node="n2"), nodes=[node(state=DISCONNECTED), node("n2")]),
        NodeDown("n1"), node_moves(DOWN_MOVE)),
    row("each-live-run-lost-once-others-untouched",
        world(run("r1", R), run("r2", P), run("r3", F, attempt=4), run("r4", DONE), run("r5", FAILED),
              run("r6", R, node="n2"), run("r7", Q), run("r8", R, desired=STOP), nodes=[node(state=DISCONNECTED)]),
        NodeDown("n1"),
        node_moves(DOWN_MOVE, moves=(requeue("r1", R, GONE), requeue("r2", P, GONE), lost("r3", F, GONE, attempt=4),
                                     Move("r8", CANCEL, R, 1, detail=GONE, reason=Reason.CANCELED_BY_USER,
                                          at=NOW)))),
    row("down-node-down-again-nothing", world(run(), nodes=[node(state=DOWN)]), NodeDown("n1"), NOTHING),
    row("joining-node-down-nothing", world(nodes=[node(state=JOINING)]), NodeDown("n1"), NOTHING),
    row("left-node-down-nothing", world(run(), nodes=[node(state=LEFT)]), NodeDown("n1"), NOTHING),
    row("unknown-node-down-nothing", world(run(), nodes=[node("n2")]), NodeDown("n1"), NOTHING),
    row("gang-child-on-the-node-gang-requeued-sibling-elsewhere-stopped", world(*gang(R, R, R)), NodeDown("n1"),
        node_moves(SILENT_MOVE, DOWN_MOVE, moves=(lost("c0", R, GONE), requeue("p", R, f"rank 0: {GONE}")),
                   stops=(StopRun("c1", 1, "n2", Reason.SIBLING_FAILED, f"the gang was requeued: rank 0: {GONE}"),))),
    row("gang-with-both-children-on-the-node-requeued-once-sibling-canceled", world(*gang(R, R, R, c1_node="n1")),
        NodeDown("n1"),
        node_moves(SILENT_MOVE, DOWN_MOVE,
                   moves=(lost("c0", R, GONE), requeue("p", R, f"rank 0: {GONE}"),
                          Move("c1", CANCEL, R, 1, detail=GONE, reason=Reason.SIBLING_FAILED, at=NOW)),
                   stops=(StopRun("c1", 1, "n1", Reason.SIBLING_FAILED, f"the gang was requeued: rank 0: {GONE}"),)),
        expects(c0=FAILED, c1=CANCELED)),
    row("gang-child-on-the-node-beyond-budget-gang-fails-node-lost", world(*gang(R, R, R, attempt=4)),
        NodeDown("n1"),
        node_moves(SILENT_MOVE, DOWN_MOVE,
                   moves=(lost("c0", R, GONE),
                          Move("p", FAIL, R, 4, detail=f"child c0 (node rank 0) ended Failed: {GONE}", reason=Reason.NODE_LOST, at=NOW)),
                   stops=(StopRun("c1", 1, "n2", Reason.SIBLING_FAILED, "a sibling failed"),)),
        expects(c0=FAILED, c1=R)),
]

LEFT_DETAIL = "the autoscaler stopped gpu-1"
NODE_LEFT = [
    row(f"left-from-{state.lower()}-its-run-requeued", world(run(), nodes=[node(state=state)]),
        NodeLeft("n1", LEFT_DETAIL),
        node_moves(NodeMove("n1", NodeTrigger.LEAVE, state, LEFT_DETAIL), moves=(requeue("r1", R, LEFT_DETAIL),)))
    for state in (JOINING, READY, DISCONNECTED, DOWN)
] + [
    row("left-again-nothing", world(run(), nodes=[node(state=LEFT)]), NodeLeft("n1"), NOTHING),
    row("left-unknown-node-nothing", world(run(), nodes=[node("n2")]), NodeLeft("n1"), NOTHING),
]

HEARD, CLOSED = "heard again", "its stream ended"
QUIET = "nothing heard within the heartbeat window"

NODE_SIGNALS = [
    row(f"{name}-from-{state.lower()}", world(run(), nodes=[node(state=state)]), event,
        node_moves(NodeMove("n1", trigger, state, detail)) if state in sources else NOTHING)
    for name, event, trigger, detail, sources in (
        ("silent", NodeSilent("n1"), NodeTrigger.SILENT, QUIET, {READY}),
        ("heard", NodeHeard("n1"), NodeTrigger.HEARD, HEARD, {DISCONNECTED}),
        ("stream-closed", StreamClosed("n1"), NodeTrigger.CLOSED, CLOSED, {JOINING, READY}),
    )
    for state in NodeState
] + [
    row(f"{type(event).__name__.lower()}-unknown-node-nothing", world(run(), nodes=[node("n2")]), event, NOTHING)
    for event in (NodeSilent("n1"), NodeHeard("n1"), StreamClosed("n1"))
]


@pytest.mark.parametrize(("before", "event", "plan", "expected"), NODE_DOWN + NODE_LEFT + NODE_SIGNALS)
def test_node_events(before: World, event: Event, plan: Plan, expected: tuple[Expect, ...]) -> None:
    check(before, event, plan, expected)


# --- Cancel --------------------------------------------------------------------------------------------------

def stop(run_id: str = "r1", node_id: str = "n1", reason: Reason = Reason.CANCELED_BY_USER,
         detail: str = "canceled by user", attempt: int = 1) -> StopRun:
    return StopRun(run_id, attempt, node_id, reason, detail)


BY_PARENT = dict(reason=Reason.PARENT_CANCELED, detail="its parent was canceled")

CANCELS = [
    row("queued-canceled", world(run(state=Q, attempt=2)), Cancel("r1"),
        moves(Move("r1", CANCEL, Q, 2, detail="canceled while queued", reason=Reason.CANCELED_BY_USER, at=NOW))),
] + [
    row(f"{state.lower()}-stop-asked-on-its-node", world(run(state=state, node="n2")), Cancel("r1"),
        Plan(stops=(stop(node_id="n2"),)))
    for state in (P, R, F)
] + [
    row(f"{state.lower()}-nothing", world(run(state=state)), Cancel("r1"), NOTHING)
    for state in (DONE, FAILED, CANCELED)
] + [
    row("gang-parent-stop-parent-and-children", world(*gang(R, R, R)), Cancel("p"),
        Plan(stops=(stop("p", ""), stop("c0", "n1", **BY_PARENT), stop("c1", "n2", **BY_PARENT))),
        expects(c0=R, c1=R)),
    row("preparing-gang-parent-stop-parent-and-children", world(*gang(P, P, R)), Cancel("p"),
        Plan(stops=(stop("p", ""), stop("c0", "n1", **BY_PARENT), stop("c1", "n2", **BY_PARENT))),
        expects(c0=P, c1=R)),
    row("gang-parent-one-child-done-only-the-live-one-stopped", world(*gang(R, DONE, R)), Cancel("p"),
        Plan(stops=(stop("p", ""), stop("c1", "n2", **BY_PARENT))), expects(c0=DONE, c1=R)),
    row("gang-parent-children-of-an-older-attempt-not-stopped",
        world(*gang(R, R, R, attempt=2), run("old0", R, node="n3", parent="p", rank=0, parent_attempt=1)),
        Cancel("p"),
        Plan(stops=(stop("p", "", attempt=2), stop("c0", "n1", **BY_PARENT), stop("c1", "n2", **BY_PARENT))),
        expects(c0=R, c1=R)),
    row("queued-gang-parent-canceled", world(run("p", Q, instances=2, attempt=1)), Cancel("p"),
        moves(Move("p", CANCEL, Q, 1, detail="canceled while queued", reason=Reason.CANCELED_BY_USER, at=NOW))),
    row("ended-gang-parent-nothing", world(*gang(FAILED, FAILED, CANCELED)), Cancel("p"), NOTHING),
    row("gang-child-canceled-alone-stopped-as-canceled-by-user", world(*gang(R, R, R)), Cancel("c1"),
        Plan(stops=(stop("c1", "n2"),))),
    row("tracked-run-has-no-process-canceled-at-once", world(run("r1"), run("t1", parent="r1", tracked=True)),
        Cancel("t1"),
        moves(Move("t1", CANCEL, R, 1, detail="canceled by user", reason=Reason.CANCELED_BY_USER, at=NOW))),
]


@pytest.mark.parametrize(("before", "event", "plan", "expected"), CANCELS)
def test_cancel(before: World, event: Event, plan: Plan, expected: tuple[Expect, ...]) -> None:
    check(before, event, plan, expected)


# --- reacting again on the world a Plan leaves ---------------------------------------------------------------

AGAIN = [
    pytest.param(world(run()), NodeDown("n1"), NOTHING, id="node-down-twice"),
    pytest.param(world(*gang(R, R, R, c1_node="n1")), NodeDown("n1"), NOTHING, id="gang-node-down-twice"),
    pytest.param(world(run()), NodeSilent("n1"), NOTHING, id="node-silent-twice"),
    pytest.param(world(nodes=[node(state=DISCONNECTED)]), NodeHeard("n1"), NOTHING, id="node-heard-twice"),
    pytest.param(world(run()), StreamClosed("n1"), NOTHING, id="stream-closed-twice"),
    pytest.param(world(run(state=P)), report(RUNNING, pid=1), NOTHING, id="running-twice"),
    pytest.param(world(run()), report(FINALIZING), NOTHING, id="finalizing-twice"),
    pytest.param(world(run(state=F)), exited(), NOTHING, id="exit-0-twice"),
    pytest.param(world(run(state=P)), exited(), NOTHING, id="exit-0-while-preparing-twice"),
    pytest.param(world(run()), exited(exit_code=3), NOTHING, id="exit-3-twice"),
    pytest.param(world(run(desired=STOP)), exited(exit_code=143), NOTHING, id="canceled-exit-twice"),
    pytest.param(world(*gang(R, R, R)), exited("c0", exit_code=3), NOTHING, id="gang-child-fails-twice"),
    pytest.param(world(*gang(R, DONE, R)), exited("c1", node_id="n2"), NOTHING, id="gang-completes-twice"),
    pytest.param(world(run(state=Q)), Cancel("r1"), NOTHING, id="cancel-queued-twice"),
    # A requeued run no longer names the node: a resent end of the lost attempt is only told to stop.
    pytest.param(world(run()), exited(exit_code=-1, reason=Reason.CUT_OFF), fence(), id="lost-report-twice"),
    pytest.param(world(run(), nodes=[node(failures=2)]), agent_error(), fence(),
                 id="agent-error-twice-not-counted-again"),
    pytest.param(world(*gang(R, R, R)), exited("c0", exit_code=-1, reason=Reason.CUT_OFF), NOTHING,
                 id="gang-child-lost-twice-gang-requeued-once"),
    # Hello again: the node is Ready already and its lost attempts are requeued: nothing is lost twice.
    pytest.param(world(run(), nodes=[node(state=DOWN)]), hello(), ready(READY), id="hello-twice"),
]


@pytest.mark.parametrize(("before", "event", "again"), AGAIN)
def test_reacting_again_on_the_world_the_plan_leaves(before: World, event: Event, again: Plan) -> None:
    first = react(before, event)
    assert first, "the first reaction must decide something"
    assert react(before.with_plan(first), event) == again
