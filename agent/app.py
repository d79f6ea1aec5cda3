"""`runyard-agent`: the node agent. Picks the implementations, wires the parts, runs them in one TaskGroup.

Start-up: load config, decide who runs execute as (`runusers.py`) and where their directories go
(`rundirs.py`), kill attempts a previous agent process left behind and remove their directories, find the
interpreters and builders for runs' environments and remove the builds a previous agent left unfinished
(`environments.py`), set up run containment (cgroups or tethers), read capacity, serve MLflow's tracking API to
runs (`tracking.py`, on `tracking_listen`) and Prometheus' `/metrics`, `/healthz`, `/readyz` (`metrics.py`, on
`metrics_listen`), then keep a link to the head and supervise what it assigns. SIGTERM/SIGINT stop every run (SIGTERM, grace, SIGKILL), report them, stop the
builds under way, and exit. The clock of every timer is
chosen here (`serve(clock=...)`). A refused join token, a node name held by another live agent, a config error or
an unsafe run directory ends the agent with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from agent.builders import Builders, find_builders
from agent.capacity import FakeGpuProbe, GpuProbe, NvmlProbe, read_capacity
from agent.usage import RunSampler
from runyard.clock import Clock, MonotonicClock
from agent.config import AgentConfig, load_agent_config
from agent.cgroups import CgroupContainment
from agent.containment import Containment, Mode, kill_leftover_groups
from agent.tethers import TetherContainment
from agent.cutoff import watch_cut_off
from agent.envbuild import IndexSettings
from agent.envcache import EnvCache
from agent.environments import Environments
from agent.interpreters import Interpreter, candidates, find_interpreters, versions
from agent.errors import AgentError, ContainmentUnavailable
from agent.link import HeadLink
from agent.metrics import AgentMetrics, serve_metrics
from agent.outbox import Outbox
from agent.reach import may_execute
from agent.rundirs import RunRoot, close_run_root, open_run_root, remove_leftovers
from agent.runusers import RunUser, RunUsers
from agent.supervisor import Supervisor
from agent.tracking import TrackingServer
from agent.wire import env_spec_from_pb
from protos import runyard_pb2 as pb
from runyard import logsetup
from runyard.envspec import node_platform
from runyard.errors import RunyardError, UsageError
from runyard.sdnotify import Notifier

log = logging.getLogger("agent")


def gpu_probe(config: AgentConfig) -> GpuProbe:
    if config.fake_gpus:
        return FakeGpuProbe(config.fake_gpus, config.fake_gpu_model, config.fake_gpu_memory_bytes, config.name)
    return NvmlProbe()


async def open_containment(mode: Mode, *, data_dir: Path) -> Containment:
    """The containment `mode` asks for; `auto` falls back to tethers where cgroups are not usable."""
    if mode is Mode.TETHER:
        return TetherContainment()
    try:
        return await CgroupContainment.open(data_dir=data_dir)
    except ContainmentUnavailable as err:
        if mode is Mode.CGROUP:
            raise
        log.info("cgroups not usable; runs are tethered", extra={"why": str(err)})
        return TetherContainment()



async def serve(config: AgentConfig, *, clock: Clock | None = None) -> None:
    clock = clock or MonotonicClock()
    users = RunUsers.open(config.uid_range, allow_root_runs=config.allow_root_runs)
    root = open_run_root(config.data_path, config.run_root, users.sample())
    _warn_if_open(config.join_token_file, users)
    killed = kill_leftover_groups(root.attempts)
    containment = await open_containment(config.containment, data_dir=config.data_path)
    killed += len(containment.leftovers)
    if killed:
        log.warning("killed runs left by a previous agent process", extra={"count": killed})
    removed = await asyncio.to_thread(remove_leftovers, root)
    if removed:
        log.info("removed run directories left by a previous agent process", extra={"count": removed})
    tools = await asyncio.to_thread(find_tools, config, root, users.sample())
    try:
        await _serve(config, clock, containment, users, root, tools)
    finally:
        await containment.close()
        await asyncio.to_thread(close_run_root, root)


@dataclass(frozen=True, slots=True)
class _Tools:
    """What runs' environments are built with on this node, and where."""

    cache: EnvCache
    builders: Builders
    interpreters: list[Interpreter]


def find_tools(config: AgentConfig, root: RunRoot, user: RunUser) -> _Tools:
    """Open the environment cache (removing builds left unfinished), find the interpreters runs can use and the
    builders; blocking."""
    cache = EnvCache(root.envs)
    cache.open()
    removed = cache.remove_leftovers()
    if removed:
        log.info("removed environment builds left unfinished by a previous agent process", extra={"count": removed})
    interpreters = find_interpreters(candidates(), usable=lambda path: may_execute(path, user))
    builders = find_builders(uv_bin=config.uv_bin, conda_builder=config.conda_builder,
                             container_runtime=config.container_runtime)
    log.info("environment builders", extra={"builders": builders.names(), "pythons": versions(interpreters),
                                            "envs": str(cache.root)})
    return _Tools(cache, builders, interpreters)


def _warn_if_open(join_token_file: str, users: RunUsers) -> None:
    """Runs cannot be kept from a join token file that every user may read: say so once."""
    if not join_token_file or not users.isolated:
        return
    try:
        mode = Path(join_token_file).stat().st_mode
    except OSError:
        return
    if mode & 0o004:
        log.warning("join token file is readable by every user, runs included; chmod 600 it",
                    extra={"path": join_token_file})


async def _serve(config: AgentConfig, clock: Clock, containment: Containment, users: RunUsers,
                 root: RunRoot, tools: _Tools) -> None:
    capacity = await asyncio.to_thread(
        read_capacity, gpu_probe(config), config.data_path, cpus=config.cpus, memory_bytes=config.memory_bytes,
        platform=node_platform(), interpreters=versions(tools.interpreters), builders=tools.builders.names(),
        advertise_address=config.advertise_address, rendezvous_ports=config.rendezvous_range,
    )
    outbox = Outbox(config.outbox_max_messages, config.outbox_max_bytes)
    tracking = TrackingServer(config.tracking_listen, max_artifact_bytes=config.outputs_max_bytes)
    try:
        await tracking.start()
    except OSError as err:
        raise UsageError(f"cannot serve MLflow tracking on tracking_listen {config.tracking_listen}: "
                         f"{err.strerror or err}") from None
    try:
        await _serve_tracked(config, clock, containment, users, root, tools, capacity, outbox, tracking)
    finally:
        await tracking.close()


async def _serve_tracked(config: AgentConfig, clock: Clock, containment: Containment, users: RunUsers, root: RunRoot,
                         tools: _Tools, capacity: pb.Capacity, outbox: Outbox, tracking: TrackingServer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    notifier = Notifier()       # systemd's, under Type=notify; taken out of the environment runs inherit from
    link: HeadLink | None = None
    sampler = RunSampler(outbox=outbox, probe=gpu_probe(config), clock=clock, interval_s=config.usage_interval_s)
    metrics = AgentMetrics(usage=sampler, outbox=outbox, connected=lambda: link is not None and link.connected.is_set())
    monitor = await serve_metrics(metrics, config.metrics_listen)
    try:
        async with asyncio.TaskGroup() as tasks:
            environments = Environments(
                cache=tools.cache, builders=tools.builders, interpreters=tools.interpreters,
                index=IndexSettings(config.pip_index_url, tuple(config.pip_extra_index_urls),
                                    tuple(config.pip_find_links)),
                containment=containment, tasks=tasks, platform=node_platform(), max_bytes=config.env_cache_max_bytes,
                timeout_s=config.env_build_timeout_s)
            supervisor = Supervisor(config=config, outbox=outbox, files=_LazyFiles(lambda: link), tasks=tasks,
                                    clock=clock, containment=containment, users=users, root=root,
                                    environments=environments, tracking=tracking, sampler=sampler)

            def build(request: pb.BuildEnvironment) -> None:
                environments.warm(env_spec_from_pb(request.env), request.env_hash)

            link = head = HeadLink(config=config, outbox=outbox, capacity=capacity, clock=clock,
                                   live_attempts=supervisor.live, on_assign=supervisor.start, on_stop=supervisor.stop,
                                   env_hashes=environments.hashes, on_build=build)
            environments.on_change, environments.on_build = head.environments_changed, metrics.built
            log.info("agent starting", extra={"node": config.name, "head": config.head_address, "cpus": capacity.cpus,
                                              "gpus": len(capacity.gpus), "containment": containment.mode})
            link_task = tasks.create_task(head.run(), name="head-link")
            helpers = tasks.create_task(containment.run(), name="containment")
            watch = tasks.create_task(watch_cut_off(clock=clock, last_contact=lambda: head.last_contact,
                                                    runs=supervisor, after_s=config.stop_runs_after_s),
                                      name="cut-off")
            stopped = tasks.create_task(stop.wait(), name="wait-for-signal")
            notify = tasks.create_task(_notify_ready(notifier, head, config), name="notify-ready")
            watchdog = tasks.create_task(notifier.keep_alive(), name="watchdog")
            sampling = tasks.create_task(sampler.run(), name="usage-sampler")
            await asyncio.wait({link_task, stopped}, return_when=asyncio.FIRST_COMPLETED)
            log.info("agent stopping")
            notifier.stopping("stopping its runs and reporting them")
            await supervisor.stop_all()
            await environments.close()
            await _drain(outbox, head, timeout_s=3.0)
            for task in (link_task, stopped, watch, helpers, notify, watchdog, sampling):
                task.cancel()
    finally:
        if link is not None:
            await link.close()
        if monitor is not None:
            await monitor.stop()


async def _notify_ready(notifier: Notifier, head: HeadLink, config: AgentConfig) -> None:
    """READY=1 for systemd once the head has accepted this agent's first Connect."""
    await head.connected.wait()
    notifier.ready(f"connected to {config.head_address} as {config.name}")


async def _drain(outbox: Outbox, link: HeadLink, *, timeout_s: float) -> None:
    """Give the head a moment to acknowledge the last reports before exiting."""
    try:
        async with asyncio.timeout(timeout_s):
            while len(outbox) and link.connected.is_set():
                await asyncio.sleep(0.05)
    except TimeoutError:
        log.warning("exiting with unacknowledged reports", extra={"count": len(outbox)})


class _LazyFiles:
    """HeadFiles through the link, which is created after the supervisor."""

    def __init__(self, get: object) -> None:
        self._get = get

    async def fetch_snapshot(self, run_id: str, attempt: int, dest: Path) -> None:
        await self._get().fetch_snapshot(run_id, attempt, dest)  # type: ignore[operator]

    async def upload_outputs(self, run_id: str, attempt: int, archive: Path, sha256: str) -> None:
        await self._get().upload_outputs(run_id, attempt, archive, sha256)  # type: ignore[operator]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="runyard-agent", description="The Runyard node agent.")
    parser.add_argument("--config", type=Path, help="agent.toml (every key can also be set as RUNYARD_AGENT_<KEY>)")
    args = parser.parse_args(argv)
    try:
        config = load_agent_config(args.config)
        logsetup.configure(config.log_level, name="agent")
        asyncio.run(serve(config))
    except* AgentError as group:
        print(f"runyard-agent: {_first(group)}", file=sys.stderr)
        sys.exit(2)
    except* RunyardError as group:
        print(f"runyard-agent: {_first(group)}", file=sys.stderr)
        sys.exit(2)
    except* KeyboardInterrupt:
        pass


def _first(group: BaseExceptionGroup) -> BaseException:
    """The first leaf of a (possibly nested) exception group: the one line to show."""
    found: BaseException = group
    while isinstance(found, BaseExceptionGroup):
        found = found.exceptions[0]
    return found


if __name__ == "__main__":
    main()
