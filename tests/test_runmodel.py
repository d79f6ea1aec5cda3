"""The agent's run model, table-driven: every event in every state gives the expected state and actions."""

from __future__ import annotations

import itertools

import pytest

from agent.runmodel import (
    ABORTS_UPLOAD, TABLE, AbortBuild, AbortFetch, AbortUpload, Accept, ArmGrace, ArmTimeLimit, BuildEnvironment,
    DrainOutput, EnvironmentFailed, EnvironmentReady, Extracted, ExtractSnapshot, Failed, Fetched, FetchSnapshot,
    GraceOver, InvalidTransition, KillTree, OutputDrained, Phase, ProcessExited, Reason, Report, RunModel, RunState,
    SnapshotRejected, StartFailed, Started, StartProcess, StopRequested, SystemLine, Terminate, TimeLimitReached,
    Uploaded, UploadOutputs, WatchProcess,
)
from agent.wire import reason_from_pb
from protos import runyard_pb2 as pb

S = RunState
GRACE_S = 3.0

# One sample of every event.
EVENTS = {
    "accept": Accept(), "fetched": Fetched(), "extracted": Extracted(), "rejected": SnapshotRejected("bad entry"),
    "env_ready": EnvironmentReady("/envs/abc"), "env_failed": EnvironmentFailed("No solution found"),
    "env_node_fault": EnvironmentFailed("No space left on device", node_fault=True),
    "started": Started(4242), "start_failed": StartFailed("cannot start 'nope'"), "exited": ProcessExited(3),
    "drained": OutputDrained(), "uploaded": Uploaded("abc"), "cancel": StopRequested(Reason.CANCELED_BY_USER),
    "time_limit": TimeLimitReached(), "grace_over": GraceOver(), "failed": Failed("boom"),
}
# How to bring a fresh model of a run with an environment to each state (with a time limit, so that Started arms
# it). A run without one skips building: `test_a_run_without_an_environment_starts_once_extracted`.
PATHS = {
    S.ASSIGNMENT: [],
    S.FETCHING: ["accept"],
    S.EXTRACTING: ["accept", "fetched"],
    S.BUILDING: ["accept", "fetched", "extracted"],
    S.STARTING: ["accept", "fetched", "extracted", "env_ready"],
    S.RUNNING: ["accept", "fetched", "extracted", "env_ready", "started"],
    S.EXITED: ["accept", "fetched", "extracted", "env_ready", "started", "exited"],
    S.UPLOADING: ["accept", "fetched", "extracted", "env_ready", "started", "exited", "drained"],
    S.REPORTED: ["accept", "fetched", "extracted", "env_ready", "started", "exited", "drained", "uploaded"],
}

AGENT_ERROR = Report(Phase.EXITED, exit_code=-1, reason=Reason.AGENT_ERROR, detail="agent error: boom")
STOP_LINE = SystemLine(f"stopping the run: canceled_by_user; SIGTERM, then SIGKILL after {GRACE_S:g}s")

# (state, event) -> (next state, actions). Every pair not listed must raise InvalidTransition.
EXPECTED = {
    (S.ASSIGNMENT, "accept"): (S.FETCHING, [Report(Phase.PREPARING), FetchSnapshot()]),
    (S.ASSIGNMENT, "cancel"): (S.REPORTED, [Report(Phase.EXITED, exit_code=-1, reason=Reason.CANCELED_BY_USER,
                                                   detail="stopped before it started")]),
    (S.ASSIGNMENT, "failed"): (S.REPORTED, [AGENT_ERROR]),
    (S.FETCHING, "fetched"): (S.EXTRACTING, [ExtractSnapshot()]),
    (S.FETCHING, "cancel"): (S.REPORTED, [AbortFetch(), Report(Phase.EXITED, exit_code=-1, reason=Reason.CANCELED_BY_USER,
                                                               detail="stopped while preparing")]),
    (S.FETCHING, "failed"): (S.REPORTED, [AbortFetch(), AGENT_ERROR]),
    (S.EXTRACTING, "extracted"): (S.BUILDING, [BuildEnvironment()]),
    (S.EXTRACTING, "rejected"): (S.REPORTED, [Report(Phase.EXITED, exit_code=-1, reason=Reason.SNAPSHOT_INVALID,
                                                     detail="bad entry")]),
    (S.EXTRACTING, "cancel"): (S.EXTRACTING, []),
    (S.EXTRACTING, "failed"): (S.REPORTED, [AGENT_ERROR]),
    (S.BUILDING, "env_ready"): (S.STARTING, [StartProcess()]),
    (S.BUILDING, "env_failed"): (S.REPORTED, [Report(Phase.EXITED, exit_code=-1, reason=Reason.ENV_BUILD_FAILED,
                                                     detail="No solution found")]),
    (S.BUILDING, "env_node_fault"): (S.REPORTED, [Report(
        Phase.EXITED, exit_code=-1, reason=Reason.AGENT_ERROR,
        detail="agent error: environment build failed on this node: No space left on device")]),
    (S.BUILDING, "cancel"): (S.REPORTED, [AbortBuild(), Report(Phase.EXITED, exit_code=-1,
                                                               reason=Reason.CANCELED_BY_USER,
                                                               detail="stopped while preparing")]),
    (S.BUILDING, "failed"): (S.REPORTED, [AbortBuild(), AGENT_ERROR]),
    (S.STARTING, "started"): (S.RUNNING, [Report(Phase.RUNNING, pid=4242), WatchProcess(), ArmTimeLimit(60.0)]),
    (S.STARTING, "start_failed"): (S.UPLOADING, [SystemLine("cannot start 'nope'"), Report(Phase.FINALIZING),
                                                 UploadOutputs()]),
    (S.STARTING, "cancel"): (S.STARTING, []),
    (S.STARTING, "failed"): (S.REPORTED, [KillTree(), AGENT_ERROR]),
    (S.RUNNING, "cancel"): (S.RUNNING, [STOP_LINE, Terminate(), ArmGrace(GRACE_S)]),
    (S.RUNNING, "time_limit"): (S.RUNNING, [SystemLine(f"stopping the run: timeout; SIGTERM, then SIGKILL after {GRACE_S:g}s"),
                                            Terminate(), ArmGrace(GRACE_S)]),
    (S.RUNNING, "grace_over"): (S.RUNNING, [KillTree()]),
    (S.RUNNING, "exited"): (S.EXITED, [KillTree(), DrainOutput()]),
    (S.RUNNING, "failed"): (S.REPORTED, [KillTree(), AGENT_ERROR]),
    (S.EXITED, "drained"): (S.UPLOADING, [Report(Phase.FINALIZING), UploadOutputs()]),
    (S.EXITED, "cancel"): (S.EXITED, []),
    (S.EXITED, "time_limit"): (S.EXITED, []),
    (S.EXITED, "grace_over"): (S.EXITED, []),
    (S.EXITED, "failed"): (S.REPORTED, [KillTree(), Report(Phase.EXITED, exit_code=3, reason=Reason.AGENT_ERROR,
                                                           detail="agent error: boom")]),
    (S.UPLOADING, "uploaded"): (S.REPORTED, [Report(Phase.EXITED, exit_code=3, detail="exit code 3", outputs_sha256="abc")]),
    (S.UPLOADING, "cancel"): (S.UPLOADING, []),   # a user's cancel lets the upload of an ended run finish
    (S.UPLOADING, "time_limit"): (S.UPLOADING, []),
    (S.UPLOADING, "grace_over"): (S.UPLOADING, []),
    (S.UPLOADING, "failed"): (S.REPORTED, [AbortUpload(), Report(Phase.EXITED, exit_code=3, reason=Reason.AGENT_ERROR,
                                                                 detail="agent error: boom")]),
    (S.REPORTED, "cancel"): (S.REPORTED, []),
    (S.REPORTED, "time_limit"): (S.REPORTED, []),
    (S.REPORTED, "grace_over"): (S.REPORTED, []),
}


def model_in(state: RunState) -> RunModel:
    model = RunModel(timeout_s=60.0, grace_s=GRACE_S, has_environment=True)
    for name in PATHS[state]:
        model.handle(EVENTS[name])
    assert model.state is state
    return model


@pytest.mark.parametrize(("state", "event"), list(itertools.product(RunState, EVENTS)))
def test_every_event_in_every_state(state: RunState, event: str) -> None:
    model = model_in(state)
    if (state, event) not in EXPECTED:
        with pytest.raises(InvalidTransition):
            model.handle(EVENTS[event])
        assert model.state is state, "a refused event leaves the state as it was"
        return
    target, actions = EXPECTED[(state, event)]
    assert list(model.handle(EVENTS[event])) == actions
    assert model.state is target


def test_the_table_lists_exactly_the_expected_pairs() -> None:
    named: dict[type, list[str]] = {}
    for name, event in EVENTS.items():
        named.setdefault(type(event), []).append(name)
    assert {(s, n) for s, t in TABLE for n in named[t]} == set(EXPECTED)
    for (state, kind), targets in TABLE.items():
        for name in named[kind]:
            assert EXPECTED[(state, name)][0] in targets


def test_a_run_without_an_environment_starts_once_extracted() -> None:
    model = RunModel(timeout_s=60.0, grace_s=GRACE_S)
    for name in PATHS[S.EXTRACTING]:
        model.handle(EVENTS[name])
    assert list(model.handle(Extracted())) == [StartProcess()]
    assert model.state is S.STARTING
    with pytest.raises(InvalidTransition):
        model.handle(EnvironmentReady("/envs/abc"))


def test_a_stop_while_extracting_a_run_with_an_environment_never_builds_it() -> None:
    model = model_in(S.EXTRACTING)
    model.handle(StopRequested(Reason.CANCELED_BY_USER))
    assert list(model.handle(Extracted())) == [
        Report(Phase.EXITED, exit_code=-1, reason=Reason.CANCELED_BY_USER, detail="stopped while preparing")]


def test_a_stop_while_extracting_ends_the_attempt_once_extracted() -> None:
    model = model_in(S.EXTRACTING)
    assert model.handle(StopRequested(Reason.AGENT_STOPPED)) == ()
    assert list(model.handle(Extracted())) == [
        Report(Phase.EXITED, exit_code=-1, reason=Reason.AGENT_STOPPED, detail="stopped while preparing")]
    assert model.done


def test_a_stop_while_starting_stops_the_process_once_it_runs() -> None:
    model = model_in(S.STARTING)
    model.handle(StopRequested(Reason.STALE))
    actions = list(model.handle(Started(7)))
    assert actions[:2] == [Report(Phase.RUNNING, pid=7), WatchProcess()]
    assert actions[-2:] == [Terminate(), ArmGrace(GRACE_S)]
    assert model.state is S.RUNNING


def test_only_the_first_stop_terminates_and_its_reason_is_reported() -> None:
    model = model_in(S.RUNNING)
    model.handle(StopRequested(Reason.CUT_OFF, "cut off from the head for 240.0s"))
    assert model.handle(StopRequested(Reason.AGENT_STOPPED)) == ()
    assert model.handle(TimeLimitReached()) == ()
    model.handle(ProcessExited(143))
    model.handle(OutputDrained())
    (report,) = model.handle(Uploaded(""))
    assert report == Report(Phase.EXITED, exit_code=143, reason=Reason.CUT_OFF,
                            detail="exit code 143 (cut_off): cut off from the head for 240.0s")


def test_a_run_its_memory_ended_is_reported_oom_killed_with_its_peak() -> None:
    model = model_in(S.RUNNING)
    model.handle(ProcessExited(137, oom_detail="used 1.2G at its peak, over its 256.0M memory request"))
    model.handle(OutputDrained())
    (report,) = model.handle(Uploaded(""))
    assert report == Report(Phase.EXITED, exit_code=137, reason=Reason.OOM_KILLED,
                            detail="exit code 137 (oom_killed): used 1.2G at its peak, over its 256.0M memory request")


def test_the_failing_rank_of_a_distributed_run_is_named() -> None:
    model = model_in(S.RUNNING)
    model.handle(ProcessExited(7, rank=3))
    model.handle(OutputDrained())
    (report,) = model.handle(Uploaded(""))
    assert report == Report(Phase.EXITED, exit_code=7, detail="rank 3 exited with code 7")


@pytest.mark.parametrize("reason", sorted(ABORTS_UPLOAD))
def test_stops_that_abort_an_upload(reason: Reason) -> None:
    model = model_in(S.UPLOADING)
    actions = list(model.handle(StopRequested(reason)))
    assert actions == [AbortUpload(), Report(Phase.EXITED, exit_code=3, reason=reason,
                                             detail=f"exit code 3 ({reason}); outputs not uploaded: stopped ({reason})")]
    assert model.done


def test_a_command_that_cannot_start_exits_127() -> None:
    model = model_in(S.STARTING)
    model.handle(StartFailed("cannot start 'nope': No such file or directory"))
    (report,) = model.handle(Uploaded(""))
    assert (report.exit_code, report.reason) == (127, None)


def test_no_time_limit_arms_no_timer() -> None:
    model = RunModel(timeout_s=0, grace_s=1, has_environment=True)
    for name in PATHS[S.STARTING]:
        model.handle(EVENTS[name])
    assert not any(isinstance(a, ArmTimeLimit) for a in model.handle(Started(1)))


@pytest.mark.parametrize(("value", "reason"), [
    (pb.REASON_UNSPECIFIED, Reason.CANCELED_BY_USER), (pb.REASON_STALE, Reason.STALE),
    (pb.REASON_SIBLING_FAILED, Reason.SIBLING_FAILED), (pb.REASON_PARENT_CANCELED, Reason.PARENT_CANCELED),
    (pb.REASON_UNSCHEDULABLE, None), (999, None),
])
def test_stop_reasons_from_the_head(value: int, reason: Reason | None) -> None:
    assert reason_from_pb(value) == reason
