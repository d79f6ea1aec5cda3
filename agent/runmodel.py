"""The life of one attempt on this node as a state machine: events in, actions out, one transition table.

    state        event               next                    actions
    assignment   Accept              fetching                Report(preparing), FetchSnapshot
    fetching     Fetched             extracting              ExtractSnapshot
    extracting   Extracted           starting | building     StartProcess | BuildEnvironment when the run has an
                                     | reported              environment | Report(exited) if a stop came meanwhile
    extracting   SnapshotRejected    reported                Report(exited, snapshot_invalid)
    building     EnvironmentReady    starting                StartProcess
    building     EnvironmentFailed   reported                Report(exited, env_build_failed, or agent_error when
                                                             the node is at fault)
    building     StopRequested       reported                AbortBuild, Report(exited, reason)
    starting     Started             running                 Report(running, pid), WatchProcess, ArmTimeLimit
                                                             (+ the stop below if a stop came meanwhile)
    starting     StartFailed         uploading               SystemLine, Report(finalizing), UploadOutputs (exit 127)
    running      StopRequested       running                 SystemLine, Terminate, ArmGrace (the first stop only)
    running      TimeLimitReached    running                 the same, reason timeout
    running      GraceOver           running                 KillTree
    running      ProcessExited       exited                  KillTree (what the run left), DrainOutput
    exited       OutputDrained       uploading               Report(finalizing), UploadOutputs
    uploading    Uploaded            reported                Report(exited, exit code, reason, outputs)
    assignment, fetching  StopRequested   reported           (AbortFetch), Report(exited, reason)
    uploading    StopRequested       reported | uploading    AbortUpload, Report(exited) for the reasons in
                                                             `ABORTS_UPLOAD`; a user's cancel lets the upload end
    any but reported      Failed     reported                (an abort, KillTree), Report(exited, agent_error, detail)

A stop in extracting or starting is remembered and acted on at the next step (extraction runs in a thread and a
spawn cannot be interrupted). A stop while building ends the attempt at once: only its wait is aborted, the build
itself goes on for the other runs that need it and for the node's cache. Late stops and timers (after the process
ended) are accepted and do nothing; any other event a state does not list raises `InvalidTransition`.

The agent's reasons for ending an attempt are the one `Reason` enum here; the head maps them to run outcomes.
Must not: do I/O, import asyncio, os or grpc, or read the clock. `supervisor.py` is the shell that performs the
actions and feeds back what happened.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from agent.errors import InvalidTransition


class RunState(StrEnum):
    ASSIGNMENT = "assignment"   # accepted from the head, nothing done yet
    FETCHING = "fetching"       # getting the snapshot (cache or head)
    EXTRACTING = "extracting"   # unpacking it into the run directory
    BUILDING = "building"       # getting the run's environment (built once per node, shared by every run)
    STARTING = "starting"       # spawning the command
    RUNNING = "running"         # the command's main process is alive
    EXITED = "exited"           # it ended: killing what it left, reading the rest of its output
    UPLOADING = "uploading"     # zipping and uploading ./outputs
    REPORTED = "reported"       # EXITED is in the outbox; nothing more happens


class Reason(StrEnum):
    """Why this agent ended an attempt (reported with EXITED), or why the head asked it to stop one."""

    CANCELED_BY_USER = "canceled_by_user"
    PARENT_CANCELED = "parent_canceled"
    SIBLING_FAILED = "sibling_failed"
    NODE_LOST = "node_lost"
    STALE = "stale"                     # the head says this is not the run's current attempt on this node
    TIMEOUT = "timeout"                 # the run's time limit passed
    SNAPSHOT_INVALID = "snapshot_invalid"
    ENV_BUILD_FAILED = "env_build_failed"   # the run's environment could not be built from its spec
    AGENT_ERROR = "agent_error"         # this agent failed at something; `detail` says what
    CUT_OFF = "cut_off"                 # no word from the head for `stop_runs_after_s`
    AGENT_STOPPED = "agent_stopped"     # the agent was asked to exit
    OOM_KILLED = "oom_killed"           # its memory ended it: the kernel's OOM killer, or over its request


# Stops after which the head will not take an upload, or nobody can wait for one.
ABORTS_UPLOAD = frozenset({Reason.STALE, Reason.CUT_OFF, Reason.AGENT_STOPPED})


class Phase(StrEnum):
    PREPARING = "preparing"
    RUNNING = "running"
    FINALIZING = "finalizing"
    EXITED = "exited"


# --- events: what the shell observed --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Accept:
    """The attempt was taken on; begin."""


@dataclass(frozen=True, slots=True)
class Fetched:
    """The snapshot is on disk and its sha256 is right."""


@dataclass(frozen=True, slots=True)
class Extracted:
    """The snapshot is unpacked into the run directory."""


@dataclass(frozen=True, slots=True)
class SnapshotRejected:
    """The snapshot must not be extracted; `detail` names the entry."""

    detail: str


@dataclass(frozen=True, slots=True)
class EnvironmentReady:
    """The run's environment is built and published at `path`, and held for this attempt."""

    path: str


@dataclass(frozen=True, slots=True)
class EnvironmentFailed:
    """The run's environment could not be had. `node_fault`: the node failed under the build (its disk, a missing
    builder or interpreter), not the spec; `detail` ends with the last lines of the builder's error."""

    detail: str
    node_fault: bool = False


@dataclass(frozen=True, slots=True)
class Started:
    pid: int


@dataclass(frozen=True, slots=True)
class StartFailed:
    """The command could not be started (not found, not executable)."""

    detail: str


@dataclass(frozen=True, slots=True)
class ProcessExited:
    exit_code: int  # 128 + N when killed by signal N
    rank: int | None = None  # of a distributed run: the global rank whose exit code this is
    oom_detail: str = ""     # its memory ended it (the kernel's OOM killer, or the agent over its request): its peak


@dataclass(frozen=True, slots=True)
class OutputDrained:
    """Every line the run wrote is in the outbox."""


@dataclass(frozen=True, slots=True)
class Uploaded:
    outputs_sha256: str  # '' when there was nothing to upload


@dataclass(frozen=True, slots=True)
class StopRequested:
    reason: Reason
    detail: str = ""


@dataclass(frozen=True, slots=True)
class TimeLimitReached:
    """The run's `timeout_s` passed since it started."""


@dataclass(frozen=True, slots=True)
class GraceOver:
    """`grace_s` passed since the run was asked to stop."""


@dataclass(frozen=True, slots=True)
class Failed:
    """Something the agent did for this attempt failed; `detail` says what."""

    detail: str


Event = (Accept | Fetched | Extracted | SnapshotRejected | EnvironmentReady | EnvironmentFailed | Started | StartFailed
         | ProcessExited | OutputDrained | Uploaded | StopRequested | TimeLimitReached | GraceOver | Failed)


# --- actions: what the shell must do -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Report:
    phase: Phase
    exit_code: int = 0
    reason: Reason | None = None
    detail: str = ""
    pid: int = 0
    outputs_sha256: str = ""


@dataclass(frozen=True, slots=True)
class FetchSnapshot:
    """Get the snapshot into the cache; then feed Fetched (or Failed)."""


@dataclass(frozen=True, slots=True)
class AbortFetch:
    """Stop the fetch in flight, if any; no event follows."""


@dataclass(frozen=True, slots=True)
class ExtractSnapshot:
    """Unpack the snapshot safely; then feed Extracted, SnapshotRejected or Failed."""


@dataclass(frozen=True, slots=True)
class BuildEnvironment:
    """Get the run's environment (build it, join a build in progress, or take it from the cache) and hold it for
    this attempt; then feed EnvironmentReady, EnvironmentFailed or Failed."""


@dataclass(frozen=True, slots=True)
class AbortBuild:
    """Stop waiting for the environment; the build itself goes on. No event follows."""


@dataclass(frozen=True, slots=True)
class StartProcess:
    """Spawn the command in its own contained tree; then feed Started or StartFailed."""


@dataclass(frozen=True, slots=True)
class WatchProcess:
    """Wait for the main process to end; then feed ProcessExited."""


@dataclass(frozen=True, slots=True)
class ArmTimeLimit:
    """Feed TimeLimitReached after `seconds`."""

    seconds: float


@dataclass(frozen=True, slots=True)
class SystemLine:
    """A line of the agent's own in the run's log."""

    text: str


@dataclass(frozen=True, slots=True)
class Terminate:
    """SIGTERM to every process of the run."""


@dataclass(frozen=True, slots=True)
class ArmGrace:
    """Feed GraceOver after `seconds`."""

    seconds: float


@dataclass(frozen=True, slots=True)
class KillTree:
    """SIGKILL every process of the run that is left."""


@dataclass(frozen=True, slots=True)
class DrainOutput:
    """Read the run's output to its end and ship it; then feed OutputDrained."""


@dataclass(frozen=True, slots=True)
class UploadOutputs:
    """Zip and upload ./outputs; then feed Uploaded (or Failed)."""


@dataclass(frozen=True, slots=True)
class AbortUpload:
    """Stop the upload in flight; no event follows."""


Action = (Report | FetchSnapshot | AbortFetch | ExtractSnapshot | BuildEnvironment | AbortBuild | StartProcess
          | WatchProcess | ArmTimeLimit | SystemLine | Terminate | ArmGrace | KillTree | DrainOutput | UploadOutputs
          | AbortUpload)

S = RunState
_LATE = (StopRequested, TimeLimitReached, GraceOver)  # may arrive after they stopped mattering

# (state, event type) -> the states it may lead to. A pair not listed is an InvalidTransition.
TABLE: dict[tuple[RunState, type], frozenset[RunState]] = {
    (S.ASSIGNMENT, Accept): frozenset({S.FETCHING}),
    (S.ASSIGNMENT, StopRequested): frozenset({S.REPORTED}),
    (S.FETCHING, Fetched): frozenset({S.EXTRACTING}),
    (S.FETCHING, StopRequested): frozenset({S.REPORTED}),
    (S.EXTRACTING, Extracted): frozenset({S.STARTING, S.BUILDING, S.REPORTED}),
    (S.EXTRACTING, SnapshotRejected): frozenset({S.REPORTED}),
    (S.EXTRACTING, StopRequested): frozenset({S.EXTRACTING}),
    (S.BUILDING, EnvironmentReady): frozenset({S.STARTING}),
    (S.BUILDING, EnvironmentFailed): frozenset({S.REPORTED}),
    (S.BUILDING, StopRequested): frozenset({S.REPORTED}),
    (S.STARTING, Started): frozenset({S.RUNNING}),
    (S.STARTING, StartFailed): frozenset({S.UPLOADING}),
    (S.STARTING, StopRequested): frozenset({S.STARTING}),
    (S.RUNNING, StopRequested): frozenset({S.RUNNING}),
    (S.RUNNING, TimeLimitReached): frozenset({S.RUNNING}),
    (S.RUNNING, GraceOver): frozenset({S.RUNNING}),
    (S.RUNNING, ProcessExited): frozenset({S.EXITED}),
    (S.EXITED, OutputDrained): frozenset({S.UPLOADING}),
    (S.UPLOADING, Uploaded): frozenset({S.REPORTED}),
    (S.UPLOADING, StopRequested): frozenset({S.UPLOADING, S.REPORTED}),
    **{(state, Failed): frozenset({S.REPORTED}) for state in S if state is not S.REPORTED},
    **{(state, late): frozenset({state}) for state in (S.EXITED, S.UPLOADING, S.REPORTED) for late in _LATE
       if (state, late) != (S.UPLOADING, StopRequested)},
}

# States in which the run's processes may exist.
PROCESS_MAY_LIVE = frozenset({S.STARTING, S.RUNNING, S.EXITED})


class RunModel:
    """One attempt. `handle(event)` moves the state and returns the actions, in the order to perform them."""

    def __init__(self, *, timeout_s: float = 0.0, grace_s: float = 10.0, has_environment: bool = False) -> None:
        self.state = RunState.ASSIGNMENT
        self.timeout_s = timeout_s
        self.grace_s = grace_s
        self.has_environment = has_environment    # the run declares its software: build it before the start
        self.stop_reason: Reason | None = None
        self.stop_detail = ""
        self.exit_code: int | None = None
        self.exit_rank: int | None = None
        self.terminated = False

    @property
    def done(self) -> bool:
        return self.state is RunState.REPORTED

    def handle(self, event: Event) -> tuple[Action, ...]:
        targets = TABLE.get((self.state, type(event)))
        if targets is None:
            raise InvalidTransition(self.state, type(event).__name__)
        handler = _HANDLERS.get((self.state, type(event)), _stay)
        target, actions = handler(self, event)
        if target not in targets:
            raise InvalidTransition(self.state, f"{type(event).__name__} -> {target}")
        self.state = target
        return actions

    # --- helpers shared by the handlers ------------------------------------------------------------------

    def _remember_stop(self, event: StopRequested) -> None:
        if self.stop_reason is None:
            self.stop_reason, self.stop_detail = event.reason, event.detail

    def _stopped_early(self, where: str) -> tuple[RunState, tuple[Action, ...]]:
        detail = f"stopped {where}" + (f": {self.stop_detail}" if self.stop_detail else "")
        return S.REPORTED, (Report(Phase.EXITED, exit_code=-1, reason=self.stop_reason, detail=detail),)

    def _terminate(self) -> tuple[Action, ...]:
        if self.terminated:
            return ()
        self.terminated = True
        text = f"stopping the run: {self.stop_reason}; SIGTERM, then SIGKILL after {self.grace_s:g}s"
        return SystemLine(text), Terminate(), ArmGrace(self.grace_s)

    def _final_detail(self) -> str:
        detail = f"exit code {self.exit_code}"
        if self.exit_rank is not None:
            detail = f"rank {self.exit_rank} exited with code {self.exit_code}"
        if self.stop_reason is not None:
            detail += f" ({self.stop_reason})"
        if self.stop_detail:
            detail += f": {self.stop_detail}"
        return detail


Handler = Callable[[RunModel, Event], tuple[RunState, tuple[Action, ...]]]


def _stay(m: RunModel, event: Event) -> tuple[RunState, tuple[Action, ...]]:
    return m.state, ()


def _accept(m: RunModel, event: Event) -> tuple[RunState, tuple[Action, ...]]:
    return S.FETCHING, (Report(Phase.PREPARING), FetchSnapshot())


def _stop_before_fetch(m: RunModel, event: Event) -> tuple[RunState, tuple[Action, ...]]:
    assert isinstance(event, StopRequested)
    m._remember_stop(event)
    return m._stopped_early("before it started")


def _stop_while_fetching(m: RunModel, event: Event) -> tuple[RunState, tuple[Action, ...]]:
    assert isinstance(event, StopRequested)
    m._remember_stop(event)
    target, actions = m._stopped_early("while preparing")
    return target, (AbortFetch(), *actions)


def _fetched(m: RunModel, event: Event) -> tuple[RunState, tuple[Action, ...]]:
    return S.EXTRACTING, (ExtractSnapshot(),)


def _extracted(m: RunModel, event: Event) -> tuple[RunState, tuple[Action, ...]]:
    if m.stop_reason is not None:
        return m._stopped_early("while preparing")
    if m.has_environment:
        return S.BUILDING, (BuildEnvironment(),)
    return S.STARTING, (StartProcess(),)


def _environment_ready(m: RunModel, event: Event) -> tuple[RunState, tuple[Action, ...]]:
    return S.STARTING, (StartProcess(),)


def _environment_failed(m: RunModel, event: Event) -> tuple[RunState, tuple[Action, ...]]:
    assert isinstance(event, EnvironmentFailed)
    if event.node_fault:    # the node's fault, not the spec's: like any other failure of the agent's own
        report = Report(Phase.EXITED, exit_code=-1, reason=Reason.AGENT_ERROR,
                        detail=f"agent error: environment build failed on this node: {event.detail}")
    else:
        report = Report(Phase.EXITED, exit_code=-1, reason=Reason.ENV_BUILD_FAILED, detail=event.detail)
    return S.REPORTED, (report,)


def _stop_while_building(m: RunModel, event: Event) -> tuple[RunState, tuple[Action, ...]]:
    assert isinstance(event, StopRequested)
    m._remember_stop(event)
    target, actions = m._stopped_early("while preparing")
    return target, (AbortBuild(), *actions)


def _rejected(m: RunModel, event: Event) -> tuple[RunState, tuple[Action, ...]]:
    assert isinstance(event, SnapshotRejected)
    return S.REPORTED, (Report(Phase.EXITED, exit_code=-1, reason=Reason.SNAPSHOT_INVALID, detail=event.detail),)


def _remember(m: RunModel, event: Event) -> tuple[RunState, tuple[Action, ...]]:
    assert isinstance(event, StopRequested)
    m._remember_stop(event)
    return m.state, ()


def _started(m: RunModel, event: Event) -> tuple[RunState, tuple[Action, ...]]:
    assert isinstance(event, Started)
    actions: tuple[Action, ...] = (Report(Phase.RUNNING, pid=event.pid), WatchProcess())
    if m.timeout_s > 0:
        actions += (ArmTimeLimit(m.timeout_s),)
    if m.stop_reason is not None:
        actions += m._terminate()
    return S.RUNNING, actions


def _start_failed(m: RunModel, event: Event) -> tuple[RunState, tuple[Action, ...]]:
    assert isinstance(event, StartFailed)
    m.exit_code = 127
    return S.UPLOADING, (SystemLine(event.detail), Report(Phase.FINALIZING), UploadOutputs())


def _stop_running(m: RunModel, event: Event) -> tuple[RunState, tuple[Action, ...]]:
    assert isinstance(event, StopRequested)
    m._remember_stop(event)
    return S.RUNNING, m._terminate()


def _time_limit(m: RunModel, event: Event) -> tuple[RunState, tuple[Action, ...]]:
    m._remember_stop(StopRequested(Reason.TIMEOUT))
    return S.RUNNING, m._terminate()


def _grace_over(m: RunModel, event: Event) -> tuple[RunState, tuple[Action, ...]]:
    return S.RUNNING, (KillTree(),)


def _exited(m: RunModel, event: Event) -> tuple[RunState, tuple[Action, ...]]:
    assert isinstance(event, ProcessExited)
    m.exit_code, m.exit_rank = event.exit_code, event.rank
    if event.oom_detail:
        m._remember_stop(StopRequested(Reason.OOM_KILLED, event.oom_detail))
    return S.EXITED, (KillTree(), DrainOutput())


def _drained(m: RunModel, event: Event) -> tuple[RunState, tuple[Action, ...]]:
    return S.UPLOADING, (Report(Phase.FINALIZING), UploadOutputs())


def _uploaded(m: RunModel, event: Event) -> tuple[RunState, tuple[Action, ...]]:
    assert isinstance(event, Uploaded)
    exit_code = -1 if m.exit_code is None else m.exit_code
    return S.REPORTED, (Report(Phase.EXITED, exit_code=exit_code, reason=m.stop_reason, detail=m._final_detail(),
                               outputs_sha256=event.outputs_sha256),)


def _stop_uploading(m: RunModel, event: Event) -> tuple[RunState, tuple[Action, ...]]:
    assert isinstance(event, StopRequested)
    if event.reason not in ABORTS_UPLOAD:
        return S.UPLOADING, ()
    m._remember_stop(event)
    exit_code = -1 if m.exit_code is None else m.exit_code
    detail = f"{m._final_detail()}; outputs not uploaded: stopped ({event.reason})"
    return S.REPORTED, (AbortUpload(), Report(Phase.EXITED, exit_code=exit_code, reason=m.stop_reason, detail=detail))


def _failed(m: RunModel, event: Event) -> tuple[RunState, tuple[Action, ...]]:
    assert isinstance(event, Failed)
    kill: tuple[Action, ...] = (KillTree(),) if m.state in PROCESS_MAY_LIVE else ()
    abort: tuple[Action, ...] = ()
    if m.state is S.FETCHING:
        abort = (AbortFetch(),)
    elif m.state is S.BUILDING:
        abort = (AbortBuild(),)
    elif m.state is S.UPLOADING:
        abort = (AbortUpload(),)
    exit_code = -1 if m.exit_code is None else m.exit_code
    return S.REPORTED, (*abort, *kill, Report(Phase.EXITED, exit_code=exit_code, reason=Reason.AGENT_ERROR,
                                              detail=f"agent error: {event.detail}"))


_HANDLERS: dict[tuple[RunState, type], Handler] = {
    (S.ASSIGNMENT, Accept): _accept,
    (S.ASSIGNMENT, StopRequested): _stop_before_fetch,
    (S.FETCHING, Fetched): _fetched,
    (S.FETCHING, StopRequested): _stop_while_fetching,
    (S.EXTRACTING, Extracted): _extracted,
    (S.EXTRACTING, SnapshotRejected): _rejected,
    (S.EXTRACTING, StopRequested): _remember,
    (S.BUILDING, EnvironmentReady): _environment_ready,
    (S.BUILDING, EnvironmentFailed): _environment_failed,
    (S.BUILDING, StopRequested): _stop_while_building,
    (S.STARTING, Started): _started,
    (S.STARTING, StartFailed): _start_failed,
    (S.STARTING, StopRequested): _remember,
    (S.RUNNING, StopRequested): _stop_running,
    (S.RUNNING, TimeLimitReached): _time_limit,
    (S.RUNNING, GraceOver): _grace_over,
    (S.RUNNING, ProcessExited): _exited,
    (S.EXITED, OutputDrained): _drained,
    (S.UPLOADING, Uploaded): _uploaded,
    (S.UPLOADING, StopRequested): _stop_uploading,
    **{(state, Failed): _failed for state in S if state is not S.REPORTED},
}

__all__ = [
    "ABORTS_UPLOAD", "TABLE", "Action", "Event", "InvalidTransition", "Phase", "Reason", "RunModel", "RunState",
]
