from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RunState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_STATE_UNSPECIFIED: _ClassVar[RunState]
    RUN_STATE_QUEUED: _ClassVar[RunState]
    RUN_STATE_PREPARING: _ClassVar[RunState]
    RUN_STATE_RUNNING: _ClassVar[RunState]
    RUN_STATE_FINALIZING: _ClassVar[RunState]
    RUN_STATE_COMPLETED: _ClassVar[RunState]
    RUN_STATE_FAILED: _ClassVar[RunState]
    RUN_STATE_CANCELED: _ClassVar[RunState]

class Reason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REASON_UNSPECIFIED: _ClassVar[Reason]
    REASON_EXIT_CODE: _ClassVar[Reason]
    REASON_OOM_KILLED: _ClassVar[Reason]
    REASON_TIMEOUT: _ClassVar[Reason]
    REASON_NODE_LOST: _ClassVar[Reason]
    REASON_ENV_BUILD_FAILED: _ClassVar[Reason]
    REASON_SNAPSHOT_INVALID: _ClassVar[Reason]
    REASON_UNSCHEDULABLE: _ClassVar[Reason]
    REASON_CANCELED_BY_USER: _ClassVar[Reason]
    REASON_PARENT_CANCELED: _ClassVar[Reason]
    REASON_SIBLING_FAILED: _ClassVar[Reason]
    REASON_AGENT_ERROR: _ClassVar[Reason]
    REASON_CUT_OFF: _ClassVar[Reason]
    REASON_AGENT_STOPPED: _ClassVar[Reason]
    REASON_STALE: _ClassVar[Reason]

class PendingKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PENDING_KIND_UNSPECIFIED: _ClassVar[PendingKind]
    PENDING_KIND_SCHEDULER: _ClassVar[PendingKind]
    PENDING_KIND_CAPACITY: _ClassVar[PendingKind]
    PENDING_KIND_NO_NODE: _ClassVar[PendingKind]
    PENDING_KIND_UNFIT: _ClassVar[PendingKind]
    PENDING_KIND_BEHIND: _ClassVar[PendingKind]
    PENDING_KIND_QUOTA: _ClassVar[PendingKind]
    PENDING_KIND_REQUEUED: _ClassVar[PendingKind]

class DesiredState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DESIRED_STATE_UNSPECIFIED: _ClassVar[DesiredState]
    DESIRED_STATE_RUN: _ClassVar[DesiredState]
    DESIRED_STATE_STOP: _ClassVar[DesiredState]

class NodeState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NODE_STATE_UNSPECIFIED: _ClassVar[NodeState]
    NODE_STATE_JOINING: _ClassVar[NodeState]
    NODE_STATE_READY: _ClassVar[NodeState]
    NODE_STATE_DISCONNECTED: _ClassVar[NodeState]
    NODE_STATE_DOWN: _ClassVar[NodeState]
    NODE_STATE_LEFT: _ClassVar[NodeState]

class Schedule(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCHEDULE_UNSPECIFIED: _ClassVar[Schedule]
    SCHEDULE_ACTIVE: _ClassVar[Schedule]
    SCHEDULE_CORDONED: _ClassVar[Schedule]
    SCHEDULE_DRAINING: _ClassVar[Schedule]
    SCHEDULE_QUARANTINED: _ClassVar[Schedule]

class Stream(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STREAM_UNSPECIFIED: _ClassVar[Stream]
    STDOUT: _ClassVar[Stream]
    STDERR: _ClassVar[Stream]
    SYSTEM: _ClassVar[Stream]
    BUILD: _ClassVar[Stream]

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    ROLE_VIEWER: _ClassVar[Role]
    ROLE_USER: _ClassVar[Role]
    ROLE_ADMIN: _ClassVar[Role]
RUN_STATE_UNSPECIFIED: RunState
RUN_STATE_QUEUED: RunState
RUN_STATE_PREPARING: RunState
RUN_STATE_RUNNING: RunState
RUN_STATE_FINALIZING: RunState
RUN_STATE_COMPLETED: RunState
RUN_STATE_FAILED: RunState
RUN_STATE_CANCELED: RunState
REASON_UNSPECIFIED: Reason
REASON_EXIT_CODE: Reason
REASON_OOM_KILLED: Reason
REASON_TIMEOUT: Reason
REASON_NODE_LOST: Reason
REASON_ENV_BUILD_FAILED: Reason
REASON_SNAPSHOT_INVALID: Reason
REASON_UNSCHEDULABLE: Reason
REASON_CANCELED_BY_USER: Reason
REASON_PARENT_CANCELED: Reason
REASON_SIBLING_FAILED: Reason
REASON_AGENT_ERROR: Reason
REASON_CUT_OFF: Reason
REASON_AGENT_STOPPED: Reason
REASON_STALE: Reason
PENDING_KIND_UNSPECIFIED: PendingKind
PENDING_KIND_SCHEDULER: PendingKind
PENDING_KIND_CAPACITY: PendingKind
PENDING_KIND_NO_NODE: PendingKind
PENDING_KIND_UNFIT: PendingKind
PENDING_KIND_BEHIND: PendingKind
PENDING_KIND_QUOTA: PendingKind
PENDING_KIND_REQUEUED: PendingKind
DESIRED_STATE_UNSPECIFIED: DesiredState
DESIRED_STATE_RUN: DesiredState
DESIRED_STATE_STOP: DesiredState
NODE_STATE_UNSPECIFIED: NodeState
NODE_STATE_JOINING: NodeState
NODE_STATE_READY: NodeState
NODE_STATE_DISCONNECTED: NodeState
NODE_STATE_DOWN: NodeState
NODE_STATE_LEFT: NodeState
SCHEDULE_UNSPECIFIED: Schedule
SCHEDULE_ACTIVE: Schedule
SCHEDULE_CORDONED: Schedule
SCHEDULE_DRAINING: Schedule
SCHEDULE_QUARANTINED: Schedule
STREAM_UNSPECIFIED: Stream
STDOUT: Stream
STDERR: Stream
SYSTEM: Stream
BUILD: Stream
ROLE_UNSPECIFIED: Role
ROLE_VIEWER: Role
ROLE_USER: Role
ROLE_ADMIN: Role

class Resources(_message.Message):
    __slots__ = ("cpus", "memory_bytes", "gpus", "instance_count", "gpu_model", "gpu_memory_bytes", "node_labels")
    class NodeLabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_COUNT_FIELD_NUMBER: _ClassVar[int]
    GPU_MODEL_FIELD_NUMBER: _ClassVar[int]
    GPU_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    NODE_LABELS_FIELD_NUMBER: _ClassVar[int]
    cpus: float
    memory_bytes: int
    gpus: int
    instance_count: int
    gpu_model: str
    gpu_memory_bytes: int
    node_labels: _containers.ScalarMap[str, str]
    def __init__(self, cpus: _Optional[float] = ..., memory_bytes: _Optional[int] = ..., gpus: _Optional[int] = ..., instance_count: _Optional[int] = ..., gpu_model: _Optional[str] = ..., gpu_memory_bytes: _Optional[int] = ..., node_labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class RunSpec(_message.Message):
    __slots__ = ("argv", "environment", "resources", "timeout_s", "compute", "max_retries", "env", "env_ref", "env_hash", "distribution")
    class EnvironmentEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ARGV_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_FIELD_NUMBER: _ClassVar[int]
    MAX_RETRIES_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    ENV_REF_FIELD_NUMBER: _ClassVar[int]
    ENV_HASH_FIELD_NUMBER: _ClassVar[int]
    DISTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    argv: _containers.RepeatedScalarFieldContainer[str]
    environment: _containers.ScalarMap[str, str]
    resources: Resources
    timeout_s: float
    compute: str
    max_retries: int
    env: EnvironmentSpec
    env_ref: str
    env_hash: str
    distribution: Distribution
    def __init__(self, argv: _Optional[_Iterable[str]] = ..., environment: _Optional[_Mapping[str, str]] = ..., resources: _Optional[_Union[Resources, _Mapping]] = ..., timeout_s: _Optional[float] = ..., compute: _Optional[str] = ..., max_retries: _Optional[int] = ..., env: _Optional[_Union[EnvironmentSpec, _Mapping]] = ..., env_ref: _Optional[str] = ..., env_hash: _Optional[str] = ..., distribution: _Optional[_Union[Distribution, _Mapping]] = ...) -> None: ...

class Distribution(_message.Message):
    __slots__ = ("type", "process_count_per_instance", "worker_count", "parameter_server_count")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PROCESS_COUNT_PER_INSTANCE_FIELD_NUMBER: _ClassVar[int]
    WORKER_COUNT_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_SERVER_COUNT_FIELD_NUMBER: _ClassVar[int]
    type: str
    process_count_per_instance: int
    worker_count: int
    parameter_server_count: int
    def __init__(self, type: _Optional[str] = ..., process_count_per_instance: _Optional[int] = ..., worker_count: _Optional[int] = ..., parameter_server_count: _Optional[int] = ...) -> None: ...

class EnvironmentSpec(_message.Message):
    __slots__ = ("python", "pip", "index_url", "extra_index_urls", "find_links", "conda", "channels", "image")
    PYTHON_FIELD_NUMBER: _ClassVar[int]
    PIP_FIELD_NUMBER: _ClassVar[int]
    INDEX_URL_FIELD_NUMBER: _ClassVar[int]
    EXTRA_INDEX_URLS_FIELD_NUMBER: _ClassVar[int]
    FIND_LINKS_FIELD_NUMBER: _ClassVar[int]
    CONDA_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    python: str
    pip: _containers.RepeatedScalarFieldContainer[str]
    index_url: str
    extra_index_urls: _containers.RepeatedScalarFieldContainer[str]
    find_links: _containers.RepeatedScalarFieldContainer[str]
    conda: _containers.RepeatedScalarFieldContainer[str]
    channels: _containers.RepeatedScalarFieldContainer[str]
    image: str
    def __init__(self, python: _Optional[str] = ..., pip: _Optional[_Iterable[str]] = ..., index_url: _Optional[str] = ..., extra_index_urls: _Optional[_Iterable[str]] = ..., find_links: _Optional[_Iterable[str]] = ..., conda: _Optional[_Iterable[str]] = ..., channels: _Optional[_Iterable[str]] = ..., image: _Optional[str] = ...) -> None: ...

class Environment(_message.Message):
    __slots__ = ("name", "version", "description", "tags", "spec", "hash", "created_at", "built_on", "created_by")
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    BUILT_ON_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    description: str
    tags: _containers.ScalarMap[str, str]
    spec: EnvironmentSpec
    hash: str
    created_at: float
    built_on: _containers.RepeatedScalarFieldContainer[str]
    created_by: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., description: _Optional[str] = ..., tags: _Optional[_Mapping[str, str]] = ..., spec: _Optional[_Union[EnvironmentSpec, _Mapping]] = ..., hash: _Optional[str] = ..., created_at: _Optional[float] = ..., built_on: _Optional[_Iterable[str]] = ..., created_by: _Optional[str] = ...) -> None: ...

class EnvironmentRef(_message.Message):
    __slots__ = ("ref",)
    REF_FIELD_NUMBER: _ClassVar[int]
    ref: str
    def __init__(self, ref: _Optional[str] = ...) -> None: ...

class ListEnvironmentsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListEnvironmentsResponse(_message.Message):
    __slots__ = ("environments",)
    ENVIRONMENTS_FIELD_NUMBER: _ClassVar[int]
    environments: _containers.RepeatedCompositeFieldContainer[Environment]
    def __init__(self, environments: _Optional[_Iterable[_Union[Environment, _Mapping]]] = ...) -> None: ...

class BuildEnvironmentRequest(_message.Message):
    __slots__ = ("ref", "nodes")
    REF_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    ref: str
    nodes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ref: _Optional[str] = ..., nodes: _Optional[_Iterable[str]] = ...) -> None: ...

class BuildEnvironmentResponse(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, nodes: _Optional[_Iterable[str]] = ...) -> None: ...

class GpuInfo(_message.Message):
    __slots__ = ("index", "uuid", "model", "memory_bytes")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    index: int
    uuid: str
    model: str
    memory_bytes: int
    def __init__(self, index: _Optional[int] = ..., uuid: _Optional[str] = ..., model: _Optional[str] = ..., memory_bytes: _Optional[int] = ...) -> None: ...

class Capacity(_message.Message):
    __slots__ = ("cpus", "memory_bytes", "disk_bytes", "gpus", "platform", "interpreters", "builders", "env_hashes", "advertise_address", "rendezvous_port_min", "rendezvous_port_max")
    CPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISK_BYTES_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    INTERPRETERS_FIELD_NUMBER: _ClassVar[int]
    BUILDERS_FIELD_NUMBER: _ClassVar[int]
    ENV_HASHES_FIELD_NUMBER: _ClassVar[int]
    ADVERTISE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    RENDEZVOUS_PORT_MIN_FIELD_NUMBER: _ClassVar[int]
    RENDEZVOUS_PORT_MAX_FIELD_NUMBER: _ClassVar[int]
    cpus: float
    memory_bytes: int
    disk_bytes: int
    gpus: _containers.RepeatedCompositeFieldContainer[GpuInfo]
    platform: str
    interpreters: _containers.RepeatedScalarFieldContainer[str]
    builders: _containers.RepeatedScalarFieldContainer[str]
    env_hashes: _containers.RepeatedScalarFieldContainer[str]
    advertise_address: str
    rendezvous_port_min: int
    rendezvous_port_max: int
    def __init__(self, cpus: _Optional[float] = ..., memory_bytes: _Optional[int] = ..., disk_bytes: _Optional[int] = ..., gpus: _Optional[_Iterable[_Union[GpuInfo, _Mapping]]] = ..., platform: _Optional[str] = ..., interpreters: _Optional[_Iterable[str]] = ..., builders: _Optional[_Iterable[str]] = ..., env_hashes: _Optional[_Iterable[str]] = ..., advertise_address: _Optional[str] = ..., rendezvous_port_min: _Optional[int] = ..., rendezvous_port_max: _Optional[int] = ...) -> None: ...

class LogRecord(_message.Message):
    __slots__ = ("stream", "seq", "ts", "data", "continued", "gap", "rank")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CONTINUED_FIELD_NUMBER: _ClassVar[int]
    GAP_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    stream: Stream
    seq: int
    ts: float
    data: bytes
    continued: bool
    gap: bool
    rank: int
    def __init__(self, stream: _Optional[_Union[Stream, str]] = ..., seq: _Optional[int] = ..., ts: _Optional[float] = ..., data: _Optional[bytes] = ..., continued: _Optional[bool] = ..., gap: _Optional[bool] = ..., rank: _Optional[int] = ...) -> None: ...

class MetricPoint(_message.Message):
    __slots__ = ("key", "value", "step", "ts", "rank")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: float
    step: int
    ts: float
    rank: int
    def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ..., step: _Optional[int] = ..., ts: _Optional[float] = ..., rank: _Optional[int] = ...) -> None: ...

class MetricRecord(_message.Message):
    __slots__ = ("seq", "params", "tags", "rank", "run_id", "child", "end", "ts", "keys", "values", "steps")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SEQ_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    CHILD_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    params: _containers.ScalarMap[str, str]
    tags: _containers.ScalarMap[str, str]
    rank: int
    run_id: str
    child: TrackedChild
    end: str
    ts: float
    keys: _containers.RepeatedScalarFieldContainer[str]
    values: _containers.RepeatedScalarFieldContainer[float]
    steps: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, seq: _Optional[int] = ..., params: _Optional[_Mapping[str, str]] = ..., tags: _Optional[_Mapping[str, str]] = ..., rank: _Optional[int] = ..., run_id: _Optional[str] = ..., child: _Optional[_Union[TrackedChild, _Mapping]] = ..., end: _Optional[str] = ..., ts: _Optional[float] = ..., keys: _Optional[_Iterable[str]] = ..., values: _Optional[_Iterable[float]] = ..., steps: _Optional[_Iterable[int]] = ...) -> None: ...

class TrackedChild(_message.Message):
    __slots__ = ("id", "name")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class SubmitRequest(_message.Message):
    __slots__ = ("experiment", "display_name", "tags", "properties", "snapshot_sha256", "spec", "idempotency_key", "parent_run_id", "priority")
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class PropertiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_SHA256_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    PARENT_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    experiment: str
    display_name: str
    tags: _containers.ScalarMap[str, str]
    properties: _containers.ScalarMap[str, str]
    snapshot_sha256: str
    spec: RunSpec
    idempotency_key: str
    parent_run_id: str
    priority: int
    def __init__(self, experiment: _Optional[str] = ..., display_name: _Optional[str] = ..., tags: _Optional[_Mapping[str, str]] = ..., properties: _Optional[_Mapping[str, str]] = ..., snapshot_sha256: _Optional[str] = ..., spec: _Optional[_Union[RunSpec, _Mapping]] = ..., idempotency_key: _Optional[str] = ..., parent_run_id: _Optional[str] = ..., priority: _Optional[int] = ...) -> None: ...

class SubmitResponse(_message.Message):
    __slots__ = ("run_id", "existed")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    EXISTED_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    existed: bool
    def __init__(self, run_id: _Optional[str] = ..., existed: _Optional[bool] = ...) -> None: ...

class SnapshotRef(_message.Message):
    __slots__ = ("sha256",)
    SHA256_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    def __init__(self, sha256: _Optional[str] = ...) -> None: ...

class HasSnapshotResponse(_message.Message):
    __slots__ = ("present",)
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    present: bool
    def __init__(self, present: _Optional[bool] = ...) -> None: ...

class SnapshotChunk(_message.Message):
    __slots__ = ("sha256", "size", "data")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    size: int
    data: bytes
    def __init__(self, sha256: _Optional[str] = ..., size: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class UploadSnapshotResponse(_message.Message):
    __slots__ = ("sha256", "existed")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    EXISTED_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    existed: bool
    def __init__(self, sha256: _Optional[str] = ..., existed: _Optional[bool] = ...) -> None: ...

class RunRef(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class RunEvent(_message.Message):
    __slots__ = ("at", "from_state", "to_state", "event", "detail")
    AT_FIELD_NUMBER: _ClassVar[int]
    FROM_STATE_FIELD_NUMBER: _ClassVar[int]
    TO_STATE_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    at: float
    from_state: str
    to_state: str
    event: str
    detail: str
    def __init__(self, at: _Optional[float] = ..., from_state: _Optional[str] = ..., to_state: _Optional[str] = ..., event: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class Run(_message.Message):
    __slots__ = ("id", "workspace", "experiment", "display_name", "parent_run_id", "state", "reason", "has_exit_code", "exit_code", "pending_reason", "attempt", "node", "tags", "properties", "params", "spec", "snapshot_sha256", "outputs_sha256", "created_at", "started_at", "ended_at", "events", "desired_state", "priority", "pending_kind", "submitter", "env_name", "env_version", "usage")
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class PropertiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    WORKSPACE_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    PARENT_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    HAS_EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    PENDING_REASON_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_SHA256_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    DESIRED_STATE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    PENDING_KIND_FIELD_NUMBER: _ClassVar[int]
    SUBMITTER_FIELD_NUMBER: _ClassVar[int]
    ENV_NAME_FIELD_NUMBER: _ClassVar[int]
    ENV_VERSION_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    id: str
    workspace: str
    experiment: str
    display_name: str
    parent_run_id: str
    state: RunState
    reason: Reason
    has_exit_code: bool
    exit_code: int
    pending_reason: str
    attempt: int
    node: str
    tags: _containers.ScalarMap[str, str]
    properties: _containers.ScalarMap[str, str]
    params: _containers.ScalarMap[str, str]
    spec: RunSpec
    snapshot_sha256: str
    outputs_sha256: str
    created_at: float
    started_at: float
    ended_at: float
    events: _containers.RepeatedCompositeFieldContainer[RunEvent]
    desired_state: DesiredState
    priority: int
    pending_kind: PendingKind
    submitter: str
    env_name: str
    env_version: str
    usage: _containers.RepeatedCompositeFieldContainer[UsageSummary]
    def __init__(self, id: _Optional[str] = ..., workspace: _Optional[str] = ..., experiment: _Optional[str] = ..., display_name: _Optional[str] = ..., parent_run_id: _Optional[str] = ..., state: _Optional[_Union[RunState, str]] = ..., reason: _Optional[_Union[Reason, str]] = ..., has_exit_code: _Optional[bool] = ..., exit_code: _Optional[int] = ..., pending_reason: _Optional[str] = ..., attempt: _Optional[int] = ..., node: _Optional[str] = ..., tags: _Optional[_Mapping[str, str]] = ..., properties: _Optional[_Mapping[str, str]] = ..., params: _Optional[_Mapping[str, str]] = ..., spec: _Optional[_Union[RunSpec, _Mapping]] = ..., snapshot_sha256: _Optional[str] = ..., outputs_sha256: _Optional[str] = ..., created_at: _Optional[float] = ..., started_at: _Optional[float] = ..., ended_at: _Optional[float] = ..., events: _Optional[_Iterable[_Union[RunEvent, _Mapping]]] = ..., desired_state: _Optional[_Union[DesiredState, str]] = ..., priority: _Optional[int] = ..., pending_kind: _Optional[_Union[PendingKind, str]] = ..., submitter: _Optional[str] = ..., env_name: _Optional[str] = ..., env_version: _Optional[str] = ..., usage: _Optional[_Iterable[_Union[UsageSummary, _Mapping]]] = ...) -> None: ...

class UsageSummary(_message.Message):
    __slots__ = ("key", "peak", "mean", "count")
    KEY_FIELD_NUMBER: _ClassVar[int]
    PEAK_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    key: str
    peak: float
    mean: float
    count: int
    def __init__(self, key: _Optional[str] = ..., peak: _Optional[float] = ..., mean: _Optional[float] = ..., count: _Optional[int] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ("experiment", "state", "limit", "user", "states", "tags", "created_after", "created_before", "parent_run_id", "compute", "node")
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AFTER_FIELD_NUMBER: _ClassVar[int]
    CREATED_BEFORE_FIELD_NUMBER: _ClassVar[int]
    PARENT_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    experiment: str
    state: RunState
    limit: int
    user: str
    states: _containers.RepeatedScalarFieldContainer[RunState]
    tags: _containers.RepeatedCompositeFieldContainer[TagFilter]
    created_after: float
    created_before: float
    parent_run_id: str
    compute: str
    node: str
    def __init__(self, experiment: _Optional[str] = ..., state: _Optional[_Union[RunState, str]] = ..., limit: _Optional[int] = ..., user: _Optional[str] = ..., states: _Optional[_Iterable[_Union[RunState, str]]] = ..., tags: _Optional[_Iterable[_Union[TagFilter, _Mapping]]] = ..., created_after: _Optional[float] = ..., created_before: _Optional[float] = ..., parent_run_id: _Optional[str] = ..., compute: _Optional[str] = ..., node: _Optional[str] = ...) -> None: ...

class TagFilter(_message.Message):
    __slots__ = ("key", "any_value", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    ANY_VALUE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    any_value: bool
    value: str
    def __init__(self, key: _Optional[str] = ..., any_value: _Optional[bool] = ..., value: _Optional[str] = ...) -> None: ...

class Experiment(_message.Message):
    __slots__ = ("name", "queued", "running", "completed", "failed", "canceled", "total", "last_activity")
    NAME_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    CANCELED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    LAST_ACTIVITY_FIELD_NUMBER: _ClassVar[int]
    name: str
    queued: int
    running: int
    completed: int
    failed: int
    canceled: int
    total: int
    last_activity: float
    def __init__(self, name: _Optional[str] = ..., queued: _Optional[int] = ..., running: _Optional[int] = ..., completed: _Optional[int] = ..., failed: _Optional[int] = ..., canceled: _Optional[int] = ..., total: _Optional[int] = ..., last_activity: _Optional[float] = ...) -> None: ...

class ListExperimentsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListExperimentsResponse(_message.Message):
    __slots__ = ("experiments",)
    EXPERIMENTS_FIELD_NUMBER: _ClassVar[int]
    experiments: _containers.RepeatedCompositeFieldContainer[Experiment]
    def __init__(self, experiments: _Optional[_Iterable[_Union[Experiment, _Mapping]]] = ...) -> None: ...

class SearchLogsRequest(_message.Message):
    __slots__ = ("run_ids", "pattern", "ignore_case", "max_matches", "stream")
    RUN_IDS_FIELD_NUMBER: _ClassVar[int]
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    IGNORE_CASE_FIELD_NUMBER: _ClassVar[int]
    MAX_MATCHES_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    run_ids: _containers.RepeatedScalarFieldContainer[str]
    pattern: str
    ignore_case: bool
    max_matches: int
    stream: Stream
    def __init__(self, run_ids: _Optional[_Iterable[str]] = ..., pattern: _Optional[str] = ..., ignore_case: _Optional[bool] = ..., max_matches: _Optional[int] = ..., stream: _Optional[_Union[Stream, str]] = ...) -> None: ...

class LogMatch(_message.Message):
    __slots__ = ("run_id", "attempt", "rank", "ranked", "stream", "ts", "line")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    RANKED_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    LINE_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    attempt: int
    rank: int
    ranked: bool
    stream: Stream
    ts: float
    line: str
    def __init__(self, run_id: _Optional[str] = ..., attempt: _Optional[int] = ..., rank: _Optional[int] = ..., ranked: _Optional[bool] = ..., stream: _Optional[_Union[Stream, str]] = ..., ts: _Optional[float] = ..., line: _Optional[str] = ...) -> None: ...

class SearchLogsResponse(_message.Message):
    __slots__ = ("matches", "scanned", "stopped")
    MATCHES_FIELD_NUMBER: _ClassVar[int]
    SCANNED_FIELD_NUMBER: _ClassVar[int]
    STOPPED_FIELD_NUMBER: _ClassVar[int]
    matches: _containers.RepeatedCompositeFieldContainer[LogMatch]
    scanned: int
    stopped: str
    def __init__(self, matches: _Optional[_Iterable[_Union[LogMatch, _Mapping]]] = ..., scanned: _Optional[int] = ..., stopped: _Optional[str] = ...) -> None: ...

class ListRunsResponse(_message.Message):
    __slots__ = ("runs", "truncated")
    RUNS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[Run]
    truncated: bool
    def __init__(self, runs: _Optional[_Iterable[_Union[Run, _Mapping]]] = ..., truncated: _Optional[bool] = ...) -> None: ...

class QueueRequest(_message.Message):
    __slots__ = ("compute",)
    COMPUTE_FIELD_NUMBER: _ClassVar[int]
    compute: str
    def __init__(self, compute: _Optional[str] = ...) -> None: ...

class QueueResponse(_message.Message):
    __slots__ = ("runs", "events")
    RUNS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[Run]
    events: _containers.RepeatedCompositeFieldContainer[ClusterEvent]
    def __init__(self, runs: _Optional[_Iterable[_Union[Run, _Mapping]]] = ..., events: _Optional[_Iterable[_Union[ClusterEvent, _Mapping]]] = ...) -> None: ...

class ClusterEvent(_message.Message):
    __slots__ = ("at", "cluster", "node", "kind", "detail")
    AT_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    at: float
    cluster: str
    node: str
    kind: str
    detail: str
    def __init__(self, at: _Optional[float] = ..., cluster: _Optional[str] = ..., node: _Optional[str] = ..., kind: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class CancelRequest(_message.Message):
    __slots__ = ("run_ids",)
    RUN_IDS_FIELD_NUMBER: _ClassVar[int]
    run_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, run_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class CancelResponse(_message.Message):
    __slots__ = ("runs",)
    RUNS_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[Run]
    def __init__(self, runs: _Optional[_Iterable[_Union[Run, _Mapping]]] = ...) -> None: ...

class LogsRequest(_message.Message):
    __slots__ = ("run_id", "stream", "follow", "tail", "has_rank", "rank", "all_ranks", "packed")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    TAIL_FIELD_NUMBER: _ClassVar[int]
    HAS_RANK_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    ALL_RANKS_FIELD_NUMBER: _ClassVar[int]
    PACKED_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    stream: Stream
    follow: bool
    tail: int
    has_rank: bool
    rank: int
    all_ranks: bool
    packed: bool
    def __init__(self, run_id: _Optional[str] = ..., stream: _Optional[_Union[Stream, str]] = ..., follow: _Optional[bool] = ..., tail: _Optional[int] = ..., has_rank: _Optional[bool] = ..., rank: _Optional[int] = ..., all_ranks: _Optional[bool] = ..., packed: _Optional[bool] = ...) -> None: ...

class LogLine(_message.Message):
    __slots__ = ("attempt", "record")
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    attempt: int
    record: LogRecord
    def __init__(self, attempt: _Optional[int] = ..., record: _Optional[_Union[LogRecord, _Mapping]] = ...) -> None: ...

class LogChunk(_message.Message):
    __slots__ = ("attempt", "rank", "stream", "first_seq", "data", "lengths", "flags", "ts")
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQ_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    LENGTHS_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    attempt: int
    rank: int
    stream: Stream
    first_seq: int
    data: bytes
    lengths: _containers.RepeatedScalarFieldContainer[int]
    flags: bytes
    ts: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, attempt: _Optional[int] = ..., rank: _Optional[int] = ..., stream: _Optional[_Union[Stream, str]] = ..., first_seq: _Optional[int] = ..., data: _Optional[bytes] = ..., lengths: _Optional[_Iterable[int]] = ..., flags: _Optional[bytes] = ..., ts: _Optional[_Iterable[float]] = ...) -> None: ...

class LogsResponse(_message.Message):
    __slots__ = ("lines", "chunks")
    LINES_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    lines: _containers.RepeatedCompositeFieldContainer[LogLine]
    chunks: _containers.RepeatedCompositeFieldContainer[LogChunk]
    def __init__(self, lines: _Optional[_Iterable[_Union[LogLine, _Mapping]]] = ..., chunks: _Optional[_Iterable[_Union[LogChunk, _Mapping]]] = ...) -> None: ...

class MetricsRequest(_message.Message):
    __slots__ = ("run_id", "key", "has_rank", "rank", "all_ranks", "max_points", "packed", "summaries_only", "system")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    HAS_RANK_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    ALL_RANKS_FIELD_NUMBER: _ClassVar[int]
    MAX_POINTS_FIELD_NUMBER: _ClassVar[int]
    PACKED_FIELD_NUMBER: _ClassVar[int]
    SUMMARIES_ONLY_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    key: str
    has_rank: bool
    rank: int
    all_ranks: bool
    max_points: int
    packed: bool
    summaries_only: bool
    system: bool
    def __init__(self, run_id: _Optional[str] = ..., key: _Optional[str] = ..., has_rank: _Optional[bool] = ..., rank: _Optional[int] = ..., all_ranks: _Optional[bool] = ..., max_points: _Optional[int] = ..., packed: _Optional[bool] = ..., summaries_only: _Optional[bool] = ..., system: _Optional[bool] = ...) -> None: ...

class MetricSeries(_message.Message):
    __slots__ = ("key", "rank", "steps", "values", "ts", "total", "first_steps", "counts", "mins", "maxs")
    KEY_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    FIRST_STEPS_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    MINS_FIELD_NUMBER: _ClassVar[int]
    MAXS_FIELD_NUMBER: _ClassVar[int]
    key: str
    rank: int
    steps: _containers.RepeatedScalarFieldContainer[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    ts: _containers.RepeatedScalarFieldContainer[float]
    total: int
    first_steps: _containers.RepeatedScalarFieldContainer[int]
    counts: _containers.RepeatedScalarFieldContainer[int]
    mins: _containers.RepeatedScalarFieldContainer[float]
    maxs: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, key: _Optional[str] = ..., rank: _Optional[int] = ..., steps: _Optional[_Iterable[int]] = ..., values: _Optional[_Iterable[float]] = ..., ts: _Optional[_Iterable[float]] = ..., total: _Optional[int] = ..., first_steps: _Optional[_Iterable[int]] = ..., counts: _Optional[_Iterable[int]] = ..., mins: _Optional[_Iterable[float]] = ..., maxs: _Optional[_Iterable[float]] = ...) -> None: ...

class MetricSummary(_message.Message):
    __slots__ = ("key", "rank", "last", "min", "max", "count", "last_step")
    KEY_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    LAST_STEP_FIELD_NUMBER: _ClassVar[int]
    key: str
    rank: int
    last: float
    min: float
    max: float
    count: int
    last_step: int
    def __init__(self, key: _Optional[str] = ..., rank: _Optional[int] = ..., last: _Optional[float] = ..., min: _Optional[float] = ..., max: _Optional[float] = ..., count: _Optional[int] = ..., last_step: _Optional[int] = ...) -> None: ...

class MetricsResponse(_message.Message):
    __slots__ = ("points", "summaries", "params", "series")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    POINTS_FIELD_NUMBER: _ClassVar[int]
    SUMMARIES_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    SERIES_FIELD_NUMBER: _ClassVar[int]
    points: _containers.RepeatedCompositeFieldContainer[MetricPoint]
    summaries: _containers.RepeatedCompositeFieldContainer[MetricSummary]
    params: _containers.ScalarMap[str, str]
    series: _containers.RepeatedCompositeFieldContainer[MetricSeries]
    def __init__(self, points: _Optional[_Iterable[_Union[MetricPoint, _Mapping]]] = ..., summaries: _Optional[_Iterable[_Union[MetricSummary, _Mapping]]] = ..., params: _Optional[_Mapping[str, str]] = ..., series: _Optional[_Iterable[_Union[MetricSeries, _Mapping]]] = ...) -> None: ...

class UsageRequest(_message.Message):
    __slots__ = ("since", "until", "workspace")
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    WORKSPACE_FIELD_NUMBER: _ClassVar[int]
    since: float
    until: float
    workspace: str
    def __init__(self, since: _Optional[float] = ..., until: _Optional[float] = ..., workspace: _Optional[str] = ...) -> None: ...

class UsageRow(_message.Message):
    __slots__ = ("workspace", "user", "runs", "cpu_hours", "cpu_hours_allocated", "gpu_hours")
    WORKSPACE_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    CPU_HOURS_FIELD_NUMBER: _ClassVar[int]
    CPU_HOURS_ALLOCATED_FIELD_NUMBER: _ClassVar[int]
    GPU_HOURS_FIELD_NUMBER: _ClassVar[int]
    workspace: str
    user: str
    runs: int
    cpu_hours: float
    cpu_hours_allocated: float
    gpu_hours: float
    def __init__(self, workspace: _Optional[str] = ..., user: _Optional[str] = ..., runs: _Optional[int] = ..., cpu_hours: _Optional[float] = ..., cpu_hours_allocated: _Optional[float] = ..., gpu_hours: _Optional[float] = ...) -> None: ...

class UsageResponse(_message.Message):
    __slots__ = ("rows", "since", "until")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[UsageRow]
    since: float
    until: float
    def __init__(self, rows: _Optional[_Iterable[_Union[UsageRow, _Mapping]]] = ..., since: _Optional[float] = ..., until: _Optional[float] = ...) -> None: ...

class Node(_message.Message):
    __slots__ = ("id", "name", "cluster", "state", "schedule", "drained", "capacity", "allocated", "running", "last_seen", "labels", "events", "awaiting_approval")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    DRAINED_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    ALLOCATED_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    AWAITING_APPROVAL_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    cluster: str
    state: NodeState
    schedule: Schedule
    drained: bool
    capacity: Capacity
    allocated: Resources
    running: _containers.RepeatedScalarFieldContainer[str]
    last_seen: float
    labels: _containers.ScalarMap[str, str]
    events: _containers.RepeatedCompositeFieldContainer[RunEvent]
    awaiting_approval: bool
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., cluster: _Optional[str] = ..., state: _Optional[_Union[NodeState, str]] = ..., schedule: _Optional[_Union[Schedule, str]] = ..., drained: _Optional[bool] = ..., capacity: _Optional[_Union[Capacity, _Mapping]] = ..., allocated: _Optional[_Union[Resources, _Mapping]] = ..., running: _Optional[_Iterable[str]] = ..., last_seen: _Optional[float] = ..., labels: _Optional[_Mapping[str, str]] = ..., events: _Optional[_Iterable[_Union[RunEvent, _Mapping]]] = ..., awaiting_approval: _Optional[bool] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeRef(_message.Message):
    __slots__ = ("node",)
    NODE_FIELD_NUMBER: _ClassVar[int]
    node: str
    def __init__(self, node: _Optional[str] = ...) -> None: ...

class NodeScheduleRequest(_message.Message):
    __slots__ = ("node", "action")
    class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ACTION_UNSPECIFIED: _ClassVar[NodeScheduleRequest.Action]
        CORDON: _ClassVar[NodeScheduleRequest.Action]
        DRAIN: _ClassVar[NodeScheduleRequest.Action]
        UNCORDON: _ClassVar[NodeScheduleRequest.Action]
    ACTION_UNSPECIFIED: NodeScheduleRequest.Action
    CORDON: NodeScheduleRequest.Action
    DRAIN: NodeScheduleRequest.Action
    UNCORDON: NodeScheduleRequest.Action
    NODE_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    node: str
    action: NodeScheduleRequest.Action
    def __init__(self, node: _Optional[str] = ..., action: _Optional[_Union[NodeScheduleRequest.Action, str]] = ...) -> None: ...

class ListNodesResponse(_message.Message):
    __slots__ = ("nodes", "events")
    NODES_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[Node]
    events: _containers.RepeatedCompositeFieldContainer[ClusterEvent]
    def __init__(self, nodes: _Optional[_Iterable[_Union[Node, _Mapping]]] = ..., events: _Optional[_Iterable[_Union[ClusterEvent, _Mapping]]] = ...) -> None: ...

class DownloadRequest(_message.Message):
    __slots__ = ("run_id", "what")
    class What(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        WHAT_UNSPECIFIED: _ClassVar[DownloadRequest.What]
        SNAPSHOT: _ClassVar[DownloadRequest.What]
        OUTPUTS: _ClassVar[DownloadRequest.What]
    WHAT_UNSPECIFIED: DownloadRequest.What
    SNAPSHOT: DownloadRequest.What
    OUTPUTS: DownloadRequest.What
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    WHAT_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    what: DownloadRequest.What
    def __init__(self, run_id: _Optional[str] = ..., what: _Optional[_Union[DownloadRequest.What, str]] = ...) -> None: ...

class DataChunk(_message.Message):
    __slots__ = ("data", "size")
    DATA_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    size: int
    def __init__(self, data: _Optional[bytes] = ..., size: _Optional[int] = ...) -> None: ...

class WhoAmIRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Identity(_message.Message):
    __slots__ = ("workspace", "role", "user", "token_id", "ca_certificate")
    WORKSPACE_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    CA_CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    workspace: str
    role: Role
    user: str
    token_id: str
    ca_certificate: bytes
    def __init__(self, workspace: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ..., user: _Optional[str] = ..., token_id: _Optional[str] = ..., ca_certificate: _Optional[bytes] = ...) -> None: ...

class WorkspaceRef(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class Workspace(_message.Message):
    __slots__ = ("name", "created_at", "tokens", "runs")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    name: str
    created_at: float
    tokens: int
    runs: int
    def __init__(self, name: _Optional[str] = ..., created_at: _Optional[float] = ..., tokens: _Optional[int] = ..., runs: _Optional[int] = ...) -> None: ...

class ListWorkspacesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListWorkspacesResponse(_message.Message):
    __slots__ = ("workspaces",)
    WORKSPACES_FIELD_NUMBER: _ClassVar[int]
    workspaces: _containers.RepeatedCompositeFieldContainer[Workspace]
    def __init__(self, workspaces: _Optional[_Iterable[_Union[Workspace, _Mapping]]] = ...) -> None: ...

class CreateTokenRequest(_message.Message):
    __slots__ = ("workspace", "role", "name", "ttl_s")
    WORKSPACE_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    workspace: str
    role: Role
    name: str
    ttl_s: float
    def __init__(self, workspace: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ..., name: _Optional[str] = ..., ttl_s: _Optional[float] = ...) -> None: ...

class CreateTokenResponse(_message.Message):
    __slots__ = ("token", "secret")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    token: Token
    secret: str
    def __init__(self, token: _Optional[_Union[Token, _Mapping]] = ..., secret: _Optional[str] = ...) -> None: ...

class Token(_message.Message):
    __slots__ = ("id", "name", "workspace", "role", "created_at", "expires_at", "revoked_at", "created_by")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    WORKSPACE_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    workspace: str
    role: Role
    created_at: float
    expires_at: float
    revoked_at: float
    created_by: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., workspace: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ..., created_at: _Optional[float] = ..., expires_at: _Optional[float] = ..., revoked_at: _Optional[float] = ..., created_by: _Optional[str] = ...) -> None: ...

class ListTokensRequest(_message.Message):
    __slots__ = ("workspace",)
    WORKSPACE_FIELD_NUMBER: _ClassVar[int]
    workspace: str
    def __init__(self, workspace: _Optional[str] = ...) -> None: ...

class ListTokensResponse(_message.Message):
    __slots__ = ("tokens",)
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[Token]
    def __init__(self, tokens: _Optional[_Iterable[_Union[Token, _Mapping]]] = ...) -> None: ...

class TokenRef(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class CreateJoinTokenRequest(_message.Message):
    __slots__ = ("uses", "ttl_s")
    USES_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    uses: int
    ttl_s: float
    def __init__(self, uses: _Optional[int] = ..., ttl_s: _Optional[float] = ...) -> None: ...

class CreateJoinTokenResponse(_message.Message):
    __slots__ = ("id", "secret", "expires_at", "ca_fingerprint")
    ID_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    CA_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    id: str
    secret: str
    expires_at: float
    ca_fingerprint: str
    def __init__(self, id: _Optional[str] = ..., secret: _Optional[str] = ..., expires_at: _Optional[float] = ..., ca_fingerprint: _Optional[str] = ...) -> None: ...

class AuditRequest(_message.Message):
    __slots__ = ("since", "user", "limit")
    SINCE_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    since: float
    user: str
    limit: int
    def __init__(self, since: _Optional[float] = ..., user: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class AuditEntry(_message.Message):
    __slots__ = ("id", "at", "user", "workspace", "method", "target", "peer", "code")
    ID_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    WORKSPACE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    id: int
    at: float
    user: str
    workspace: str
    method: str
    target: str
    peer: str
    code: str
    def __init__(self, id: _Optional[int] = ..., at: _Optional[float] = ..., user: _Optional[str] = ..., workspace: _Optional[str] = ..., method: _Optional[str] = ..., target: _Optional[str] = ..., peer: _Optional[str] = ..., code: _Optional[str] = ...) -> None: ...

class AuditResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[AuditEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[AuditEntry, _Mapping]]] = ...) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ("name", "cluster", "labels", "capacity", "csr")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    CSR_FIELD_NUMBER: _ClassVar[int]
    name: str
    cluster: str
    labels: _containers.ScalarMap[str, str]
    capacity: Capacity
    csr: bytes
    def __init__(self, name: _Optional[str] = ..., cluster: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., capacity: _Optional[_Union[Capacity, _Mapping]] = ..., csr: _Optional[bytes] = ...) -> None: ...

class JoinResponse(_message.Message):
    __slots__ = ("node_id", "certificate", "ca_certificate")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    CA_CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    certificate: bytes
    ca_certificate: bytes
    def __init__(self, node_id: _Optional[str] = ..., certificate: _Optional[bytes] = ..., ca_certificate: _Optional[bytes] = ...) -> None: ...

class AgentMessage(_message.Message):
    __slots__ = ("msg_seq", "hello", "heartbeat", "run_update", "logs", "metrics")
    MSG_SEQ_FIELD_NUMBER: _ClassVar[int]
    HELLO_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    RUN_UPDATE_FIELD_NUMBER: _ClassVar[int]
    LOGS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    msg_seq: int
    hello: Hello
    heartbeat: Heartbeat
    run_update: RunUpdate
    logs: LogBatch
    metrics: MetricBatch
    def __init__(self, msg_seq: _Optional[int] = ..., hello: _Optional[_Union[Hello, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., run_update: _Optional[_Union[RunUpdate, _Mapping]] = ..., logs: _Optional[_Union[LogBatch, _Mapping]] = ..., metrics: _Optional[_Union[MetricBatch, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("capacity", "running")
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    capacity: Capacity
    running: _containers.RepeatedCompositeFieldContainer[RunHandle]
    def __init__(self, capacity: _Optional[_Union[Capacity, _Mapping]] = ..., running: _Optional[_Iterable[_Union[RunHandle, _Mapping]]] = ...) -> None: ...

class RunHandle(_message.Message):
    __slots__ = ("run_id", "attempt")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    attempt: int
    def __init__(self, run_id: _Optional[str] = ..., attempt: _Optional[int] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("sent_at", "env_hashes")
    SENT_AT_FIELD_NUMBER: _ClassVar[int]
    ENV_HASHES_FIELD_NUMBER: _ClassVar[int]
    sent_at: float
    env_hashes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, sent_at: _Optional[float] = ..., env_hashes: _Optional[_Iterable[str]] = ...) -> None: ...

class RunUpdate(_message.Message):
    __slots__ = ("run_id", "attempt", "phase", "exit_code", "reason", "detail", "outputs_sha256", "at", "pid")
    class Phase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        PHASE_UNSPECIFIED: _ClassVar[RunUpdate.Phase]
        PREPARING: _ClassVar[RunUpdate.Phase]
        RUNNING: _ClassVar[RunUpdate.Phase]
        FINALIZING: _ClassVar[RunUpdate.Phase]
        EXITED: _ClassVar[RunUpdate.Phase]
    PHASE_UNSPECIFIED: RunUpdate.Phase
    PREPARING: RunUpdate.Phase
    RUNNING: RunUpdate.Phase
    FINALIZING: RunUpdate.Phase
    EXITED: RunUpdate.Phase
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    attempt: int
    phase: RunUpdate.Phase
    exit_code: int
    reason: Reason
    detail: str
    outputs_sha256: str
    at: float
    pid: int
    def __init__(self, run_id: _Optional[str] = ..., attempt: _Optional[int] = ..., phase: _Optional[_Union[RunUpdate.Phase, str]] = ..., exit_code: _Optional[int] = ..., reason: _Optional[_Union[Reason, str]] = ..., detail: _Optional[str] = ..., outputs_sha256: _Optional[str] = ..., at: _Optional[float] = ..., pid: _Optional[int] = ...) -> None: ...

class LogBatch(_message.Message):
    __slots__ = ("run_id", "attempt", "records")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    attempt: int
    records: _containers.RepeatedCompositeFieldContainer[LogRecord]
    def __init__(self, run_id: _Optional[str] = ..., attempt: _Optional[int] = ..., records: _Optional[_Iterable[_Union[LogRecord, _Mapping]]] = ...) -> None: ...

class MetricBatch(_message.Message):
    __slots__ = ("run_id", "attempt", "records", "usage")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    attempt: int
    records: _containers.RepeatedCompositeFieldContainer[MetricRecord]
    usage: _containers.RepeatedCompositeFieldContainer[UsageSample]
    def __init__(self, run_id: _Optional[str] = ..., attempt: _Optional[int] = ..., records: _Optional[_Iterable[_Union[MetricRecord, _Mapping]]] = ..., usage: _Optional[_Iterable[_Union[UsageSample, _Mapping]]] = ...) -> None: ...

class UsageSample(_message.Message):
    __slots__ = ("seq", "ts", "points")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    ts: float
    points: _containers.RepeatedCompositeFieldContainer[MetricPoint]
    def __init__(self, seq: _Optional[int] = ..., ts: _Optional[float] = ..., points: _Optional[_Iterable[_Union[MetricPoint, _Mapping]]] = ...) -> None: ...

class HeadMessage(_message.Message):
    __slots__ = ("ack", "assign", "cancel", "build_env")
    ACK_FIELD_NUMBER: _ClassVar[int]
    ASSIGN_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    BUILD_ENV_FIELD_NUMBER: _ClassVar[int]
    ack: Ack
    assign: Assignment
    cancel: CancelRun
    build_env: BuildEnvironment
    def __init__(self, ack: _Optional[_Union[Ack, _Mapping]] = ..., assign: _Optional[_Union[Assignment, _Mapping]] = ..., cancel: _Optional[_Union[CancelRun, _Mapping]] = ..., build_env: _Optional[_Union[BuildEnvironment, _Mapping]] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("msg_seq",)
    MSG_SEQ_FIELD_NUMBER: _ClassVar[int]
    msg_seq: int
    def __init__(self, msg_seq: _Optional[int] = ...) -> None: ...

class BuildEnvironment(_message.Message):
    __slots__ = ("env", "env_hash")
    ENV_FIELD_NUMBER: _ClassVar[int]
    ENV_HASH_FIELD_NUMBER: _ClassVar[int]
    env: EnvironmentSpec
    env_hash: str
    def __init__(self, env: _Optional[_Union[EnvironmentSpec, _Mapping]] = ..., env_hash: _Optional[str] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("run_id", "attempt", "workspace", "experiment", "parent_run_id", "snapshot_sha256", "spec", "gpu_indices", "extra_env")
    class ExtraEnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    WORKSPACE_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    PARENT_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_SHA256_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    GPU_INDICES_FIELD_NUMBER: _ClassVar[int]
    EXTRA_ENV_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    attempt: int
    workspace: str
    experiment: str
    parent_run_id: str
    snapshot_sha256: str
    spec: RunSpec
    gpu_indices: _containers.RepeatedScalarFieldContainer[int]
    extra_env: _containers.ScalarMap[str, str]
    def __init__(self, run_id: _Optional[str] = ..., attempt: _Optional[int] = ..., workspace: _Optional[str] = ..., experiment: _Optional[str] = ..., parent_run_id: _Optional[str] = ..., snapshot_sha256: _Optional[str] = ..., spec: _Optional[_Union[RunSpec, _Mapping]] = ..., gpu_indices: _Optional[_Iterable[int]] = ..., extra_env: _Optional[_Mapping[str, str]] = ...) -> None: ...

class CancelRun(_message.Message):
    __slots__ = ("run_id", "attempt", "reason")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    attempt: int
    reason: Reason
    def __init__(self, run_id: _Optional[str] = ..., attempt: _Optional[int] = ..., reason: _Optional[_Union[Reason, str]] = ...) -> None: ...

class FetchSnapshotRequest(_message.Message):
    __slots__ = ("run_id", "attempt")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    attempt: int
    def __init__(self, run_id: _Optional[str] = ..., attempt: _Optional[int] = ...) -> None: ...

class OutputsChunk(_message.Message):
    __slots__ = ("run_id", "attempt", "sha256", "size", "data")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    attempt: int
    sha256: str
    size: int
    data: bytes
    def __init__(self, run_id: _Optional[str] = ..., attempt: _Optional[int] = ..., sha256: _Optional[str] = ..., size: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class OutputsResponse(_message.Message):
    __slots__ = ("sha256",)
    SHA256_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    def __init__(self, sha256: _Optional[str] = ...) -> None: ...
