"""A distributed run's processes on this node: what each one is started with, and the attempt they make together.

For a run whose spec says `distribution: {type: pytorch, process_count_per_instance: N}`, the agent starts N
processes of the command, each with the variables `torch.distributed`'s env:// rendezvous reads:

    RANK = NODE_RANK x N + local rank    LOCAL_RANK, LOCAL_WORLD_SIZE = N    WORLD_SIZE = NNODES x N
    MASTER_ADDR, MASTER_PORT             from the head (a gang); else 127.0.0.1 and a port free on this node

For `distribution: {type: mpi, process_count_per_instance: N}` the agent starts the N processes the same way, each
with the same variables plus Open MPI's and Azure ML's:

    OMPI_COMM_WORLD_RANK = RANK    OMPI_COMM_WORLD_SIZE = WORLD_SIZE
    OMPI_COMM_WORLD_LOCAL_RANK = LOCAL_RANK    OMPI_COMM_WORLD_LOCAL_SIZE = N
    AZ_BATCH_MASTER_NODE = MASTER_ADDR:MASTER_PORT
    RUNYARD_HOSTFILE       a hostfile in the run's directory: one `ADDRESS slots=N` line per node, in node rank
                           order (the head's RUNYARD_NODE_ADDRESSES; else MASTER_ADDR, else 127.0.0.1)

The agent does not start `mpirun` itself, nor ssh between nodes: every process is started by its node's agent.

For `distribution: {type: tensorflow, worker_count: W, parameter_server_count: P}` the run has W + P processes,
N = ceil((W + P) / nodes) per node (the head sets N): process k (0 <= k < W + P) is node k // N's, a parameter server
`ps` index k when k < P, else `worker` index k - P. Process k listens on its node's address (RUNYARD_NODE_ADDRESSES,
else MASTER_ADDR, else 127.0.0.1) at port MASTER_PORT + k mod N, its index on the node: the head reserves the block
[MASTER_PORT, MASTER_PORT + N) on every node of the gang. Each process gets

    TF_CONFIG = {"cluster": {"worker": [host:port, ...], "ps": [host:port, ...]}, "task": {"type": ..., "index": i}}
                ("ps" only when P > 0), and RANK = k, LOCAL_RANK, WORLD_SIZE = W + P

A command that is itself a launcher (`torchrun ...`, `python -m torch.distributed.run ...`) is started once per
node instead, with the launcher's PET_* variables, and starts the N processes itself; PET_TEE=3 and a line prefix
of `[rankR]:` make it pass on each worker's output marked with its global rank (`output.read_records`).

Before any process starts, the ports this node will listen on (`listened_ports`: MASTER_PORT on the node of
NODE_RANK 0 of a pytorch or mpi run, the node's block of a tensorflow run) are each bound once on all addresses
(`check_ports`): one that another program holds fails the start (StartFailed, exit 127) with a line that names it.

On node rank 0 of a pytorch run whose processes the agent starts itself, the agent also starts the run's TCPStore
(`STORE_HOST`, in the run's environment as its uid) and gives the processes TORCHELASTIC_USE_AGENT_STORE=True, as
torchrun's agent does: rank 0 may then leave first without pulling the store from under the others. Without torch
in the run's environment (or if it does not start) rank 0 hosts it, as plain `torch.distributed` would.

The attempt's exit is the first non-zero exit among its processes (the others are then stopped: SIGTERM, and
SIGKILL after the grace, as a cancel does), or 0 once every one exited 0.
Must not: decide where the rendezvous is for a gang (the head does), or build the rest of the environment
(`runenv`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import re
import shlex
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.containment import RunProcess
from agent.errors import CannotStart
from agent.output import RANK_PREFIX_TEMPLATE
from protos import runyard_pb2 as pb

PYTORCH = "pytorch"
MPI = "mpi"
TENSORFLOW = "tensorflow"
HOSTFILE = "hostfile"
_LAUNCHER = re.compile(r"^\s*(torchrun|python3?\s+-m\s+torch\.distributed\.run)(\s|$)")


@dataclass(frozen=True, slots=True)
class Launch:
    """One process to start: its global rank (its log lines carry it) and its whole environment."""

    rank: int
    env: dict[str, str]


def is_launcher(argv: Sequence[str]) -> bool:
    """True when the command starts a distributed launcher, as `argv` or as the shell command of a job file."""
    text = argv[2] if len(argv) >= 3 and list(argv[:2]) == ["/bin/sh", "-c"] else shlex.join(argv)
    return bool(_LAUNCHER.match(text))


def hostfile(spec: pb.RunSpec, env: Mapping[str, str]) -> str:
    """An MPI run's hostfile: `ADDRESS slots=N`, one line per node in node rank order."""
    per_node = max(1, spec.distribution.process_count_per_instance)
    given = env.get("RUNYARD_NODE_ADDRESSES", "")
    addresses = given.split(",") if given else [env.get("MASTER_ADDR") or "127.0.0.1"]
    return "".join(f"{address} slots={per_node}\n" for address in addresses)


def launches(spec: pb.RunSpec, env: Mapping[str, str], *, free_port: Callable[[], int],
             hostfile_path: str = "") -> list[Launch]:
    """The processes to start for one node of the run, given its environment (with the head's NODE_RANK, NNODES,
    MASTER_ADDR, MASTER_PORT for a gang). `free_port` is asked only when the head gave no MASTER_PORT;
    `hostfile_path` is where the caller wrote `hostfile` for an MPI run."""
    if spec.distribution.type == TENSORFLOW:
        return _tensorflow(spec, env, free_port)
    if spec.distribution.type not in (PYTORCH, MPI):
        return [Launch(int(env.get("NODE_RANK", "0") or 0), dict(env))]
    per_node = max(1, spec.distribution.process_count_per_instance)
    node_rank, nodes = int(env.get("NODE_RANK", "0") or 0), int(env.get("NNODES", "1") or 1)
    shared = {**env, "NODE_RANK": str(node_rank), "NNODES": str(nodes), "NPROC_PER_NODE": str(per_node),
              "WORLD_SIZE": str(nodes * per_node), "LOCAL_WORLD_SIZE": str(per_node),
              "MASTER_ADDR": env.get("MASTER_ADDR") or "127.0.0.1",
              "MASTER_PORT": env.get("MASTER_PORT") or str(free_port())}
    if spec.distribution.type == MPI:
        shared.update(OMPI_COMM_WORLD_SIZE=shared["WORLD_SIZE"], OMPI_COMM_WORLD_LOCAL_SIZE=str(per_node),
                      AZ_BATCH_MASTER_NODE=f"{shared['MASTER_ADDR']}:{shared['MASTER_PORT']}",
                      RUNYARD_HOSTFILE=hostfile_path)
        return [Launch(node_rank * per_node + local,
                       {**shared, "RANK": str(node_rank * per_node + local), "LOCAL_RANK": str(local),
                        "OMPI_COMM_WORLD_RANK": str(node_rank * per_node + local),
                        "OMPI_COMM_WORLD_LOCAL_RANK": str(local)})
                for local in range(per_node)]
    if is_launcher(spec.argv):
        shared.update(PET_NNODES=str(nodes), PET_NPROC_PER_NODE=str(per_node), PET_NODE_RANK=str(node_rank),
                      PET_MASTER_ADDR=shared["MASTER_ADDR"], PET_MASTER_PORT=shared["MASTER_PORT"],
                      PET_TEE="3", TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE=RANK_PREFIX_TEMPLATE)
        return [Launch(node_rank * per_node, shared)]
    return [Launch(node_rank * per_node + local,
                   {**shared, "RANK": str(node_rank * per_node + local), "LOCAL_RANK": str(local)})
            for local in range(per_node)]


def _tensorflow(spec: pb.RunSpec, env: Mapping[str, str], free_port: Callable[[], int]) -> list[Launch]:
    d = spec.distribution
    workers, servers, per_node = d.worker_count, d.parameter_server_count, max(1, d.process_count_per_instance)
    node_rank = int(env.get("NODE_RANK", "0") or 0)
    given = env.get("RUNYARD_NODE_ADDRESSES", "")
    addresses = given.split(",") if given else [env.get("MASTER_ADDR") or "127.0.0.1"]
    port = int(env.get("MASTER_PORT") or free_port())
    total = workers + servers
    hosts = [f"{addresses[min(k // per_node, len(addresses) - 1)]}:{port + k % per_node}" for k in range(total)]
    cluster = {"worker": hosts[servers:], **({"ps": hosts[:servers]} if servers else {})}
    mine = range(node_rank * per_node, min((node_rank + 1) * per_node, total))
    return [Launch(k, {**env, "MASTER_ADDR": addresses[0], "MASTER_PORT": str(port), "RANK": str(k),
                       "LOCAL_RANK": str(k - mine.start), "WORLD_SIZE": str(total),
                       "TF_CONFIG": json.dumps({"cluster": cluster, "task": {
                           "type": "ps" if k < servers else "worker", "index": k if k < servers else k - servers}})})
            for k in mine]


# What the agent of node rank 0 runs beside a pytorch run's processes, as torchrun's agent does: the run's
# TCPStore, hosted for as long as the attempt lives, so that rank 0 leaving first (its last
# `destroy_process_group`) cannot pull the store from under ranks still talking to it. With
# TORCHELASTIC_USE_AGENT_STORE=True every rank, rank 0 too, is then a client of it. Exit 3: no torch to host it.
STORE_HOST = """
import os, sys, time
try:
    from torch.distributed import TCPStore
except ImportError:
    sys.exit(3)
store = TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), int(os.environ["WORLD_SIZE"]),
                 is_master=True, wait_for_workers=False)
print("ready", flush=True)
while True:
    time.sleep(3600)
"""
NO_TORCH = 3
USE_AGENT_STORE = {"TORCHELASTIC_USE_AGENT_STORE": "True"}


def hosts_store(spec: pb.RunSpec, launches: Sequence[Launch]) -> bool:
    """True when this node starts a pytorch run's processes itself and is its node rank 0: it hosts the store."""
    return (spec.distribution.type == PYTORCH and bool(launches) and not is_launcher(spec.argv)
            and int(launches[0].env.get("NODE_RANK", "0") or 0) == 0)


def listened_ports(spec: pb.RunSpec, started: Sequence[Launch]) -> list[int]:
    """The ports this node's processes of the run listen on, given the `launches` for this node: MASTER_PORT on
    the node of NODE_RANK 0 of a pytorch or mpi run, MASTER_PORT + each process's index on the node for tensorflow,
    none elsewhere."""
    if not started:
        return []
    env = started[0].env
    port = int(env.get("MASTER_PORT") or 0)
    if not port:
        return []
    if spec.distribution.type == TENSORFLOW:
        return [port + local for local in range(len(started))]
    if spec.distribution.type in (PYTORCH, MPI) and int(env.get("NODE_RANK", "0") or 0) == 0:
        return [port]
    return []


def check_ports(ports: Sequence[int]) -> None:
    """Raise CannotStart naming the first of `ports` (MASTER_PORT first) that cannot be bound on all addresses of
    this node now. SO_REUSEADDR as a listener sets it: what an earlier run's connections left in TIME_WAIT does not
    count, a socket that another program holds does."""
    for index, port in enumerate(ports):
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("", port))
            except OSError as err:
                name = f"MASTER_PORT {port}" if index == 0 else f"port {port} (MASTER_PORT + {index})"
                why = "another program holds it" if err.errno == errno.EADDRINUSE else err.strerror or str(err)
                raise CannotStart(f"cannot start the run: {name} is in use on this node ({why})") from err


class Ranks:
    """The processes of one attempt on this node, as one `RunProcess` (pid and group: the first one's).

    `wait` implements the first-failure policy; `sleep` is the agent clock's, for the grace before SIGKILL.
    """

    def __init__(self, processes: Sequence[tuple[int, RunProcess]], *, grace_s: float,
                 sleep: Callable[[float], Awaitable[None]], helpers: Sequence[RunProcess] = ()) -> None:
        assert processes
        self.processes = list(processes)
        self.helpers = list(helpers)    # the store host: not a rank, stopped once the ranks are done
        first = self.processes[0][1]
        self.pid, self.group, self.stdout, self.stderr = first.pid, first.group, first.stdout, first.stderr
        self._grace_s = grace_s
        self._sleep = sleep
        self._running = {id(p) for _, p in self.processes}

    async def wait(self) -> int:
        waits: dict[asyncio.Future[int], RunProcess] = {asyncio.ensure_future(p.wait()): p for _, p in self.processes}
        killer: asyncio.Task[None] | None = None
        failure = 0
        try:
            pending: set[asyncio.Future[int]] = set(waits)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for finished in done:
                    self._running.discard(id(waits[finished]))
                    code = finished.result()
                    if code != 0 and failure == 0:
                        failure = code
                        self.terminate()
                        killer = asyncio.ensure_future(self._kill_after_grace())
            return failure
        finally:
            for helper in self.helpers:
                helper.kill()
            futures: list[asyncio.Future[Any]] = [*waits, *([killer] if killer else [])]
            for future in futures:
                future.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*futures, return_exceptions=True)

    async def _kill_after_grace(self) -> None:
        await self._sleep(self._grace_s)
        self.kill()

    def _live(self) -> list[RunProcess]:
        return [p for _, p in self.processes if id(p) in self._running]

    def terminate(self) -> None:
        for process in self._live():
            process.terminate()

    def kill(self) -> None:
        for process in [*self._live(), *self.helpers]:
            process.kill()

    async def release(self) -> None:
        for process in [*(p for _, p in self.processes), *self.helpers]:
            await process.release()
