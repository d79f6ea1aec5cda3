"""Node providers: how the autoscaler adds and removes nodes. The `NodeProvider` seam and its two implementations.

    LocalProvider     starts and stops agent processes on the head's machine (`runyard up`)
    CommandProvider   runs admin-configured commands (ipmitool, wake-on-LAN, ...) to power named nodes on and off

Contract of every provider: calls are asynchronous and never block the event loop; `launch` is idempotent by its
key (the same key again returns the same node and launches nothing); a launch that failed leaves nothing behind, so
its key may be tried again; failures are returned as a `ProviderError` (one line for people: what failed and what
to do), never raised. A provider decides nothing: the autoscaler says what to launch and terminate.

Processes are started with `scheduler.processes.spawn`, never forked (see there why).
Must not: import the `agent` package (an agent is started as a process) or touch the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from runyard.private import write_private
from scheduler.autoscale import ClusterPolicy
from scheduler.processes import Child, spawn

# An agent started by the head dies with it (PR_SET_PDEATHSIG, SIGTERM so that it stops its runs): a head that is
# killed must not leave agents behind that dial an address nobody listens on any more.
_TIED_TO_HEAD = ("setpriv", "--pdeathsig", "TERM", "--") if shutil.which("setpriv") else ()
_CLUSTER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_KEY = re.compile(r"^[A-Za-z0-9_]+$")
_RESERVED = ("head_address", "head_node_address", "head_ca_file", "head_ca_fingerprint", "join_token",
             "join_token_file", "name", "cluster", "data_dir")
_STDERR_TAIL = 64 << 10                         # what is kept of a power command's stderr


class ProviderStatus(StrEnum):
    STARTING = "starting"   # launch under way
    RUNNING = "running"     # the provider considers it on (an agent process alive, a node powered on)
    STOPPED = "stopped"     # exited by itself; gone from list() once terminated


@dataclass(frozen=True, slots=True)
class ProviderNode:
    name: str
    cluster: str
    status: ProviderStatus


@dataclass(frozen=True, slots=True)
class ProviderError:
    message: str            # one line for people: what failed and what to do


class NodeProvider(Protocol):
    """Adds and removes the nodes of compute clusters. See the module docstring for the contract."""

    async def list(self) -> list[ProviderNode] | ProviderError:
        """Every node this provider launched and has not terminated, by name."""
        ...

    async def launch(self, cluster: str, key: str) -> ProviderNode | ProviderError:
        """Add one node to `cluster`; the same `key` again returns the same node without a second launch."""
        ...

    async def terminate(self, name: str) -> None | ProviderError:
        """Remove the node; a node that is already gone is not an error."""
        ...

    async def close(self) -> None:
        """Release what the provider holds when the head stops."""
        ...


def agent_command(config: Path) -> list[str]:
    """The argv of a real agent reading `config`."""
    return [sys.executable, "-m", "agent", "--config", str(config)]


@dataclass(slots=True, eq=False)
class _Agent:
    name: str
    cluster: str
    process: Child

    def node(self) -> ProviderNode:
        status = ProviderStatus.RUNNING if self.process.returncode is None else ProviderStatus.STOPPED
        return ProviderNode(self.name, self.cluster, status)


@dataclass(frozen=True, slots=True)
class LocalHead:
    """What an agent on the head's machine needs to reach it: both ports, the CA to trust, and a way to get a
    join token of one use for an agent that has not enrolled yet."""

    address: str
    node_address: str
    ca_file: Path
    join_token: Callable[[], Awaitable[str]]


class LocalProvider:
    """Agent processes on this machine, named `auto-<cluster>-<n>` (the lowest n not running, so that a new agent
    reuses the data dir, environment cache and node identity of a stopped one).

    Each agent gets `<data_dir>/<name>/agent.toml` (the head's addresses and CA, its name, cluster and data dir,
    plus `agent_settings`) and, until it has enrolled, a join token of one use in `<data_dir>/<name>/join.token`
    (0600), runs in its own session with the head's environment minus `RUNYARD_*`, and logs
    to `<log_dir>/<name>.log`. `terminate` sends SIGTERM (the agent stops its runs), waits up to `stop_timeout_s`,
    then SIGKILLs the process group. `close` terminates every agent it started. `command` builds the argv from the
    config path (the real agent by default).
    """

    def __init__(self, *, head: LocalHead, data_dir: Path, agent_settings: Mapping[str, object],
                 log_dir: Path, command: Callable[[Path], Sequence[str]] = agent_command,
                 stop_timeout_s: float = 20.0) -> None:
        clash = sorted(set(agent_settings) & set(_RESERVED))
        if clash:
            raise ValueError(f"agent_settings must not set {clash[0]}: the local provider sets it for each agent")
        odd = sorted(key for key in agent_settings if not _KEY.match(key))
        if odd:
            raise ValueError(f"agent_settings: {odd[0]!r} is not an agent config key")
        self._head = head
        self._settings = {"head_address": head.address, "head_node_address": head.node_address,
                          "head_ca_file": str(head.ca_file)}
        self._extra = "".join(f"{key} = {_toml(value)}\n" for key, value in sorted(agent_settings.items()))
        self._data_dir = data_dir
        self._log_dir = log_dir
        self._command = command
        self._stop_timeout_s = stop_timeout_s
        self._by_key: dict[str, _Agent] = {}
        self._agents: dict[str, _Agent] = {}        # name -> agent, until terminated
        self._launching = asyncio.Lock()

    async def list(self) -> list[ProviderNode] | ProviderError:
        return [self._agents[name].node() for name in sorted(self._agents)]

    async def launch(self, cluster: str, key: str) -> ProviderNode | ProviderError:
        async with self._launching:
            if key in self._by_key:
                return self._by_key[key].node()
            if not _CLUSTER.match(cluster):
                return ProviderError(f"cannot start an agent for cluster {cluster!r}: not a valid cluster name")
            n = 1
            while f"auto-{cluster}-{n}" in self._agents:
                n += 1
            name = f"auto-{cluster}-{n}"
            try:
                join_token = "" if (self._data_dir / name / "node.crt").exists() else await self._head.join_token()
            except Exception as err:
                return ProviderError(f"cannot start agent {name}: no join token for it: {err}")
            started = self._start(name, cluster, join_token)
            if isinstance(started, ProviderError):
                return started
            self._by_key[key] = self._agents[name] = _Agent(name, cluster, started)
            return self._agents[name].node()

    def _start(self, name: str, cluster: str, join_token: str) -> Child | ProviderError:
        agent_dir = self._data_dir / name
        config = agent_dir / "agent.toml"
        token_file = agent_dir / "join.token"
        settings = {**self._settings, "join_token_file": str(token_file), "name": name, "cluster": cluster,
                    "data_dir": str(agent_dir)}
        try:
            agent_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            if join_token:
                write_private(token_file, join_token + "\n")
            self._log_dir.mkdir(parents=True, exist_ok=True)
            config.write_text("".join(f"{k} = {_toml(v)}\n" for k, v in settings.items()) + self._extra)
            command = list(self._command(config))
            if not shutil.which(command[0]):
                return ProviderError(f"cannot start agent {name}: {command[0]!r} not found or not executable")
            argv = [*_TIED_TO_HEAD, *command]
            env = {k: v for k, v in os.environ.items() if not k.startswith("RUNYARD_")}
            with open(self._log_dir / f"{name}.log", "ab") as log, open(os.devnull, "rb") as devnull:
                return spawn(argv, stdin=devnull.fileno(), stdout=log.fileno(), stderr=log.fileno(), env=env)
        except OSError as err:
            what = f"{err.strerror}: {err.filename}" if err.filename else err.strerror
            return ProviderError(f"cannot start agent {name}: {what}; see {self._log_dir / (name + '.log')}")

    async def terminate(self, name: str) -> None | ProviderError:
        agent = self._agents.get(name)
        if agent is None:
            return None
        await _stop(agent.process, self._stop_timeout_s)
        if self._agents.get(name) is agent:
            del self._agents[name]
        return None

    async def close(self) -> None:
        await asyncio.gather(*(self.terminate(name) for name in list(self._agents)))


@dataclass(slots=True, eq=False)
class _Powered:
    name: str
    status: ProviderStatus


class CommandProvider:
    """The named bare-metal nodes of one cluster (`policy.nodes`), powered on and off by admin commands.

    `power_on` and `power_off` are argv templates: split like a shell would (`shlex.split`), then `{node}` is
    replaced in each argument; no shell is involved. Each command must finish within `command_timeout_s` (else its
    process group is killed). `launch` powers on the first listed node that is not on as far as this provider knows
    (it remembers what it powered on); `terminate` powers off any listed node. `close` leaves machines as they are.
    """

    def __init__(self, policy: ClusterPolicy) -> None:
        self._policy = policy
        self._by_key: dict[str, _Powered] = {}
        self._on: dict[str, _Powered] = {}           # name -> node powered on (or being), until powered off
        self._launching = asyncio.Lock()

    async def list(self) -> list[ProviderNode] | ProviderError:
        return [ProviderNode(name, self._policy.cluster, self._on[name].status) for name in sorted(self._on)]

    async def launch(self, cluster: str, key: str) -> ProviderNode | ProviderError:
        p = self._policy
        async with self._launching:
            if key in self._by_key:
                return ProviderNode(self._by_key[key].name, p.cluster, self._by_key[key].status)
            if cluster != p.cluster:
                return ProviderError(f"the power commands of cluster {p.cluster} cannot add a node to cluster {cluster}")
            name = next((n for n in p.nodes if n not in self._on), None)
            if name is None:
                return ProviderError(f"all {len(p.nodes)} nodes of cluster {p.cluster} are powered on; list more in "
                                     f"clusters.{p.cluster}.nodes of head.toml")
            node = self._by_key[key] = self._on[name] = _Powered(name, ProviderStatus.STARTING)
        failed = await _run_power_command("power on", p.power_on, name, p.command_timeout_s)
        if failed is not None:
            del self._by_key[key], self._on[name]
            return failed
        node.status = ProviderStatus.RUNNING
        return ProviderNode(name, p.cluster, node.status)

    async def terminate(self, name: str) -> None | ProviderError:
        p = self._policy
        if name not in p.nodes:
            return ProviderError(f"node {name} is not one of the nodes of cluster {p.cluster} "
                                 f"(clusters.{p.cluster}.nodes in head.toml); nothing was powered off")
        failed = await _run_power_command("power off", p.power_off, name, p.command_timeout_s)
        if failed is not None:
            return failed
        node = self._on.pop(name, None)
        if node is not None:
            node.status = ProviderStatus.STOPPED
        return None

    async def close(self) -> None:
        return None


async def _run_power_command(what: str, template: str, node: str, timeout_s: float) -> ProviderError | None:
    """Run `template` for `node`; None when it exited 0, else what went wrong with the last line of its stderr."""
    argv = [arg.replace("{node}", node) for arg in shlex.split(template)]
    failed = f"{what} of node {node} failed"
    if not argv:
        return ProviderError(f"{failed}: the command is empty; set it in head.toml")
    shown = shlex.join(argv)
    # stderr goes to a file, not a pipe: a child that left the process group cannot hold the command's end open.
    with open(os.devnull, "r+b") as devnull, tempfile.TemporaryFile() as stderr:
        try:
            proc = spawn(argv, stdin=devnull.fileno(), stdout=devnull.fileno(), stderr=stderr.fileno(), env=os.environ)
        except FileNotFoundError:
            return ProviderError(f"{failed}: {argv[0]!r} not found (command: {shown}); install it or fix the command")
        except OSError as err:
            return ProviderError(f"{failed}: cannot run {argv[0]!r}: {err.strerror} (command: {shown})")
        try:
            async with asyncio.timeout(timeout_s):
                await proc.wait()
        except TimeoutError:
            return ProviderError(f"{failed}: `{shown}` did not finish within {timeout_s:g}s and was killed")
        finally:
            if proc.returncode is None:
                _signal_group(proc.pid, signal.SIGKILL)
                await proc.wait()
        if proc.returncode == 0:
            return None
        stderr.seek(max(0, os.fstat(stderr.fileno()).st_size - _STDERR_TAIL))
        output = stderr.read()
    assert proc.returncode is not None
    lines = [line.strip() for line in output.decode(errors="replace").splitlines() if line.strip()]
    said = f": {lines[-1]}" if lines else " (nothing on stderr)"
    ended = f"was killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exited with code {proc.returncode}"
    return ProviderError(f"{failed}: `{shown}` {ended}{said}")


async def _stop(process: Child, timeout_s: float) -> None:
    """SIGTERM to the process group, then SIGKILL after `timeout_s`; returns once the process has exited."""
    if process.returncode is None:
        _signal_group(process.pid, signal.SIGTERM)
        try:
            async with asyncio.timeout(timeout_s):
                await process.wait()
        except TimeoutError:
            _signal_group(process.pid, signal.SIGKILL)
    await process.wait()


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _toml(value: object) -> str:
    """A TOML value for an agent setting (strings, numbers, booleans, and tables of them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml(v)}" for k, v in value.items()) + "}"
    raise ValueError(f"agent setting value {value!r} is not a string, number, boolean or table")
