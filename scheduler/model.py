"""The head's domain values. Protobuf stays at the edge (`convert.py`); everything inside works on these."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum

from runyard import envspec
from runyard.envspec import EnvSpec
from scheduler.core.lifecycle import DesiredState, PendingKind, RunState
from scheduler.core.nodes import NodeState, Schedule


# Properties of a child of a multi-node run: its node rank, and the parent's attempt it belongs to.
RANK_PROPERTY = "runyard.node_rank"
ATTEMPT_PROPERTY = "runyard.parent_attempt"
TRACKED_PROPERTY = "runyard.tracked"        # "1": a tracked run, started by its parent's script (store/tracked.py)


class Distribution(StrEnum):
    """How a run's processes form one distributed job (a job file's `distribution.type`)."""

    NONE = ""
    PYTORCH = "pytorch"
    MPI = "mpi"
    TENSORFLOW = "tensorflow"


@dataclass(frozen=True, slots=True)
class RunSpec:
    argv: tuple[str, ...]
    environment: dict[str, str] = field(default_factory=dict)
    cpus: float = 1.0
    memory_bytes: int = 1024**3
    gpus: int = 0
    instance_count: int = 1
    timeout_s: float = 0.0
    compute: str = "default"
    gpu_model: str = ""                 # only GPUs whose model contains this, case-insensitive
    gpu_memory_bytes: int = 0           # only GPUs with at least this much memory
    node_labels: dict[str, str] = field(default_factory=dict)   # only nodes carrying all of these
    max_retries: int = -1               # attempts after a lost one; -1: the head's default
    env: EnvSpec = EnvSpec()            # the software it runs in, normalized; empty: the node's own
    env_hash: str = ""                  # the identity of `env` on its cluster's platform ('' without one)
    distribution: Distribution = Distribution.NONE
    procs_per_node: int = 1             # processes per node of a distributed run (tensorflow: ceil(W+P / nodes))
    workers: int = 0                    # tensorflow: worker processes (W)
    parameter_servers: int = 0          # tensorflow: parameter server processes (P)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> RunSpec:
        data = json.loads(text)
        data["argv"] = tuple(data["argv"])
        if "env" in data:
            data["env"] = envspec.from_dict(data["env"])
        if "distribution" in data:
            data["distribution"] = Distribution(data["distribution"])
        return cls(**data)


@dataclass(frozen=True, slots=True)
class NewRun:
    """What a client submits, validated."""

    workspace: str
    experiment: str
    display_name: str
    tags: dict[str, str]
    properties: dict[str, str]
    snapshot_sha256: str
    spec: RunSpec
    idempotency_key: str
    parent_id: str
    priority: int = 200
    submitter: str = ""                 # the name of the token that submitted it
    env_name: str = ""                  # the registered environment it runs in, if any, at its exact version
    env_version: str = ""


@dataclass(frozen=True, slots=True)
class RunRecord:
    id: str
    workspace: str
    experiment: str
    parent_id: str
    display_name: str
    state: RunState
    desired_state: DesiredState
    reason: str
    exit_code: int | None
    pending_reason: str
    attempt: int
    node_id: str
    gpu_indices: tuple[int, ...]
    spec: RunSpec
    snapshot_sha256: str
    outputs_sha256: str
    tags: dict[str, str]
    properties: dict[str, str]
    created_at: float
    started_at: float | None
    ended_at: float | None
    priority: int = 200
    agent_error_node: str = ""          # the node on which an earlier attempt failed on the agent's side
    pending_kind: PendingKind | None = None     # while Queued: the kind of its pending reason
    submitter: str = ""
    env_name: str = ""                  # the registered environment it runs in (NewRun)
    env_version: str = ""

    @property
    def tracked(self) -> bool:
        """Started by its parent's script (SDK child_run, MLflow nested run): no node, no process of its own."""
        return self.properties.get(TRACKED_PROPERTY) == "1"


@dataclass(frozen=True, slots=True)
class RunEventRecord:
    at: float
    from_state: str
    to_state: str
    event: str
    detail: str


@dataclass(frozen=True, slots=True)
class Gpu:
    index: int
    uuid: str
    model: str
    memory_bytes: int


@dataclass(frozen=True, slots=True)
class Capacity:
    cpus: float
    memory_bytes: int
    disk_bytes: int
    gpus: tuple[Gpu, ...] = ()
    platform: str = ""                  # e.g. linux-x86_64; '' from an agent that does not say
    interpreters: tuple[str, ...] = ()  # python versions it has, e.g. 3.11.7
    builders: tuple[str, ...] = ()      # what it builds environments with: uv, micromamba, conda, podman, ...
    advertise_address: str = ""         # where other nodes reach it; '': the address it connected to the head from
    rendezvous_port_min: int = 29500    # the ports a gang's MASTER_PORT may take on it
    rendezvous_port_max: int = 29999

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Capacity:
        data = json.loads(text or "{}")
        if not data:
            return cls(0.0, 0, 0)
        data["gpus"] = tuple(Gpu(**g) for g in data.get("gpus", ()))
        for name in ("interpreters", "builders"):
            data[name] = tuple(data.get(name, ()))
        return cls(**data)


@dataclass(frozen=True, slots=True)
class NodeRecord:
    id: str
    name: str
    cluster: str
    labels: dict[str, str]
    capacity: Capacity
    state: NodeState
    last_seen: float
    schedule: Schedule = Schedule.ACTIVE
    failures_in_row: int = 0
    approved: bool = True               # False: enrolled, waiting for `runyard node approve`


@dataclass(frozen=True, slots=True)
class EnvironmentRecord:
    """A registered environment at one version; a version never changes once created."""

    workspace: str
    name: str
    version: str
    description: str
    tags: dict[str, str]
    spec: EnvSpec
    created_at: float
    created_by: str


@dataclass(frozen=True, slots=True)
class ClusterEvent:
    """A decision the head took about nodes: the autoscaler starting or stopping one, a node quarantined."""

    at: float
    cluster: str
    node: str
    kind: str
    detail: str


@dataclass(frozen=True, slots=True)
class LogRow:
    id: int
    attempt: int
    rank: int
    stream: int
    seq: int
    ts: float
    flags: int
    data: bytes
    run_id: str = ""


@dataclass(frozen=True, slots=True)
class MetricRow:
    key: str
    value: float
    step: int
    ts: float
    rank: int = 0
    run_id: str = ""


class Role(StrEnum):
    """What a user's token may do, each including the one before: read its workspace; also submit and cancel
    there; also manage workspaces, tokens and nodes and read the audit trail."""

    VIEWER = "viewer"
    USER = "user"
    ADMIN = "admin"

    def allows(self, needed: Role) -> bool:
        order = list(Role)
        return order.index(self) >= order.index(needed)


NODE_ROLE = "node"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a user of a workspace (by token), or a node (by certificate)."""

    workspace: str
    role: str               # a Role, or NODE_ROLE
    node_id: str = ""
    user: str = ""          # the token's name; runs record it as their submitter
    token_id: str = ""

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN


@dataclass(frozen=True, slots=True)
class TokenRecord:
    id: str
    name: str
    workspace: str
    role: Role
    created_at: float
    expires_at: float       # 0: never
    revoked_at: float       # 0: not revoked
    created_by: str
    sha256: str = ""


@dataclass(frozen=True, slots=True)
class NodeKey:
    """The identity a node enrolled with: its key and the serial of its current certificate."""

    node_id: str
    name: str
    key_sha256: str
    cert_serial: str
    approved: bool


@dataclass(frozen=True, slots=True)
class AuditRecord:
    at: float
    user: str
    workspace: str
    method: str
    target: str
    peer: str
    code: str
    id: int = 0
