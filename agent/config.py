"""The agent's configuration: one frozen dataclass, loaded once in `app.py` and passed down."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

from agent.containment import Mode
from runyard.configfile import load_config
from runyard.errors import UsageError

MAX_UID = 2**32 - 2     # (uid_t) -1 means "unchanged" to the kernel


@dataclass(frozen=True, slots=True)
class AgentConfig:
    head_address: str = "127.0.0.1:7433"   # the head's client port: enrollment (TLS)
    head_node_address: str = ""             # the head's node port (mTLS); default: head_address's port + 1
    head_ca_file: str = ""                  # the cluster CA (PEM) the head's certificate must chain to
    head_ca_fingerprint: str = ""           # or its fingerprint: the CA is read from the head and must match
    insecure_plaintext: bool = False        # development only: enroll over plaintext, to a head on loopback
    join_token: str = ""                    # used once, to enroll; a node certificate from then on
    join_token_file: str = ""
    name: str = field(default_factory=socket.gethostname)
    cluster: str = "default"
    labels: dict = field(default_factory=dict)
    data_dir: str = "/var/lib/runyard-agent"
    cpus: float = 0.0                       # 0: what the machine has
    memory_bytes: int = 0                   # 0: what the machine has
    fake_gpus: int = 0                      # > 0: report this many fake GPUs instead of probing NVML (tests)
    fake_gpu_model: str = "FakeGPU 80GB"
    fake_gpu_memory_bytes: int = 80 * 1024**3
    heartbeat_interval_s: float = 5.0
    usage_interval_s: float = 5.0           # how often each live run's CPU, memory and GPUs are sampled (`usage.py`)
    reconnect_max_s: float = 2.0
    head_full_retry_max_s: float = 30.0     # back-off cap while the head answers RESOURCE_EXHAUSTED (disk full)
    stop_grace_s: float = 10.0              # SIGTERM -> SIGKILL
    stop_runs_after_s: float = 240.0        # cut off from the head this long: stop own runs (head: Down at 300 s)
    log_record_bytes: int = 64 * 1024       # longer lines are split into continuation records
    log_flush_s: float = 0.05
    outbox_max_messages: int = 20_000       # beyond (or beyond outbox_max_bytes) run output waits in its spool
    outbox_max_bytes: int = 2 * 1024**2     # reports not yet acknowledged by the head, held in memory
    log_spool_max_bytes: int = 1024**3      # an attempt's output not yet shipped, on disk; beyond, lines are
                                            # dropped and a gap record says how many
    snapshot_max_entries: int = 100_000
    snapshot_max_bytes: int = 8 * 1024**3
    outputs_max_bytes: int = 2 * 1024**3
    python_bin_dir: str = ""                # prepended to a run's PATH; default: this agent's interpreter's dir
    run_containment: str = "auto"           # auto | cgroup | tether: how a run's process tree is kept together
    # Who runs execute as, and where their directories live (`runusers.py`, `rundirs.py`). An agent running as
    # root gives each live attempt a uid (and the same gid) of its own from run_uid_range, "LO-HI" inclusive; no
    # /etc/passwd entry is needed. "" with allow_root_runs = false: the agent refuses to run anything as root.
    run_uid_range: str = "200000-265535"
    allow_root_runs: bool = False           # with run_uid_range = "": runs execute as root, not isolated at all
    run_root: str = ""                      # default: <data_dir>/runs, or a private dir in /tmp (`rundirs.py`);
                                            # one agent per run_root: at start it removes what it finds there
    run_environment: dict = field(default_factory=dict)  # variables every run gets (HF_HOME, NCCL_*, ...)
    # Runs' environments (`environments.py`): built once per node in <run root>/envs and shared by every run.
    env_cache_max_bytes: int = 200 * 1024**3   # beyond it the least recently used go (never one in use); 0: no limit
    env_build_timeout_s: float = 3600.0
    uv_bin: str = ""                        # default: the uv installed with the agent
    conda_builder: str = ""                 # micromamba or conda, for conda packages; default: either on PATH
    container_runtime: str = ""             # podman, docker, apptainer (or a path to one); "none": no images;
                                            # default: the first of them on PATH that answers
    pip_index_url: str = ""                 # replaces every environment's index; "none": no index (offline)
    pip_extra_index_urls: list[str] = field(default_factory=list)   # added to every environment's
    pip_find_links: list[str] = field(default_factory=list)         # e.g. a wheelhouse directory
    # Distributed runs: a gang whose rank 0 is here meets at advertise_address (default: the address this agent
    # connects to the head from, as the head sees it) on a port of rendezvous_ports, "LO-HI" inclusive.
    advertise_address: str = ""
    rendezvous_ports: str = "29500-29999"
    # The MLflow tracking API the agent serves its runs (`tracking.py`): host:port, port 0 for a free one.
    tracking_listen: str = "127.0.0.1:0"
    # Prometheus' /metrics with /healthz and /readyz (plain HTTP): host:port, port 0 for a free one (the log says
    # which); "" or "off": none. A non-loopback address belongs behind the network's own protection.
    metrics_listen: str = "127.0.0.1:0"
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        if self.run_containment not in set(Mode):
            raise UsageError(f"config: run_containment must be one of {', '.join(Mode)}, not {self.run_containment!r}")
        parse_uid_range(self.run_uid_range)
        if not self.usage_interval_s > 0:
            raise UsageError(f"config: usage_interval_s must be more than 0 seconds, not {self.usage_interval_s!r}")
        parse_port_range(self.rendezvous_ports)
        host, colon, port = self.tracking_listen.rpartition(":")
        if not (colon and host and port.isdigit() and int(port) <= 65535):
            raise UsageError(f'config: tracking_listen must look like "127.0.0.1:0" (host:port, 0 for a free port), '
                             f'not {self.tracking_listen!r}')

    @property
    def rendezvous_range(self) -> tuple[int, int]:
        return parse_port_range(self.rendezvous_ports)

    @property
    def uid_range(self) -> tuple[int, int] | None:
        return parse_uid_range(self.run_uid_range)

    @property
    def containment(self) -> Mode:
        return Mode(self.run_containment)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    def node_address(self) -> str:
        if self.head_node_address:
            return self.head_node_address
        host, _, port = self.head_address.rpartition(":")
        try:
            return f"{host}:{int(port) + 1}"
        except ValueError:
            raise UsageError(f"config: head_address must be host:port, not {self.head_address!r}") from None

    def join_secret(self) -> str:
        if self.join_token:
            return self.join_token
        if self.join_token_file:
            try:
                return Path(self.join_token_file).read_text().strip()
            except OSError as err:
                raise UsageError(f"cannot read join_token_file {self.join_token_file}: {err.strerror}") from None
        return ""


def parse_uid_range(text: str) -> tuple[int, int] | None:
    """`run_uid_range` as (LO, HI), inclusive; None when it is empty. UsageError when it is malformed."""
    text = text.strip()
    if not text:
        return None
    low, dash, high = text.partition("-")
    if not (dash and low.strip().isdigit() and high.strip().isdigit()):
        raise UsageError(f'config: run_uid_range must look like "200000-265535" (LO-HI, inclusive), not {text!r}')
    lo, hi = int(low), int(high)
    if not 0 < lo <= hi <= MAX_UID:
        raise UsageError(f"config: run_uid_range {text!r} must have 0 < LO <= HI <= {MAX_UID}")
    return lo, hi


def parse_port_range(text: str) -> tuple[int, int]:
    """`rendezvous_ports` as (LO, HI), inclusive; UsageError when it is malformed."""
    low, dash, high = text.strip().partition("-")
    if not (dash and low.strip().isdigit() and high.strip().isdigit() and 0 < int(low) <= int(high) <= 65535):
        raise UsageError(f'config: rendezvous_ports must look like "29500-29999" (LO-HI, inclusive, 1-65535), '
                         f'not {text!r}')
    return int(low), int(high)


def load_agent_config(path: Path | None, **overrides: object) -> AgentConfig:
    return load_config(AgentConfig, path, env_prefix="RUNYARD_AGENT_", **overrides)
