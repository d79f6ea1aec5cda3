"""`runyard-head`: the head daemon. Picks the implementations, wires the parts, runs them in one TaskGroup.

Start-up: load config, lock the data directory (refusing one another process holds, before writing anything),
open the database (refusing a lost one), make sure the first admin's token and the cluster's TLS material exist,
serve gRPC on the client port (TLS; users' tokens, joins) and the node port (mTLS) and MLflow's read API over HTTPS
(`mlflow_api`, the same certificate and tokens), Prometheus' `/metrics` with `/healthz` and `/readyz` on
`metrics_address()` (`metrics`), then write the ready file (with `mlflow_url` and `metrics_url`). SIGTERM/SIGINT
stop it gracefully; a background task that dies takes the daemon down so that systemd restarts it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path

import grpc
import uvloop

from protos import runyard_pb2_grpc as pb_grpc
from runyard import logsetup, pki
from runyard.config import is_loopback
from runyard.datadir import DataDirLock
from runyard.private import write_private
from runyard.sdnotify import Notifier
from runyard.errors import RunyardError, UsageError
from scheduler.agent_api import NodeAgentService
from scheduler.artifacts import ArtifactStore
from scheduler.auth import Boundary, Credentials, new_token, token_sha
from scheduler.enrollment import Enrollment, Limits
from scheduler.autoscale import ClusterPolicy, ProviderKind, policies_from_config
from scheduler.autoscaler import Autoscaler, ConnectedNode, Observation
from scheduler.client_api import RunyardService
from scheduler.config import HeadConfig, load_head_config
from scheduler.dispatch import Dispatcher
from scheduler.errors import HeadError
from scheduler.mlflow_api import MlflowApi, MlflowServer, server_ssl
from scheduler.metrics import HeadMetrics, serve_metrics
from scheduler.followers import Followers
from runyard.clock import Clock, SystemClock
from scheduler.core.heartbeats import Timers
from scheduler.core.nodes import NodeState, NodeTrigger
from scheduler.core.plan import NodeMove, Plan
from scheduler.core.react import NodeLeft, Policy
from scheduler.reactor import Reactor
from scheduler.providers import CommandProvider, LocalHead, LocalProvider, NodeProvider
from scheduler.reaper import Reaper
from scheduler.sessions import Sessions
from scheduler.snapshot_check import SnapshotChecks
from scheduler.store import Store
from scheduler.tls import load_or_create
from scheduler.model import Role, TokenRecord

log = logging.getLogger("scheduler")


async def ensure_admin_token(store: Store, path: Path) -> None:
    """The first admin's token, in a file readable by the head's user only; created on first start."""
    if path.exists():
        token = path.read_text().strip()
    else:
        token = new_token()
        write_private(path, token + "\n")
        log.info("admin token created", extra={"path": str(path)})
    await store.add_token(TokenRecord(id="tok-" + token_sha(token)[:12], name="admin", workspace="default",
                                      role=Role.ADMIN, created_at=store.clock(), expires_at=0.0, revoked_at=0.0,
                                      created_by="runyard-head", sha256=token_sha(token)), create_workspace=True)


def cluster_policies(config: HeadConfig) -> dict[str, ClusterPolicy]:
    try:
        return policies_from_config(config.clusters)
    except ValueError as err:
        raise UsageError(f"config: {err}") from None


def node_providers(config: HeadConfig, policies: dict[str, ClusterPolicy], head: LocalHead) -> dict[str, NodeProvider]:
    """The node provider of every autoscaled cluster: one local provider shared by the local ones."""
    providers: dict[str, NodeProvider] = {}
    local: LocalProvider | None = None
    for name, policy in policies.items():
        if policy.max_nodes <= 0:
            continue
        if policy.provider == ProviderKind.COMMAND:
            providers[name] = CommandProvider(policy)
            continue
        if local is None:
            try:
                local = LocalProvider(head=head, data_dir=config.data_path / "autoscaled", log_dir=config.data_path / "logs",
                                      agent_settings=config.local_agent_settings)
            except ValueError as err:
                raise UsageError(f"config: local_agent_settings: {err}") from None
        providers[name] = local
    return providers


async def observe(store: Store, sessions: Sessions, dispatcher: Dispatcher) -> Observation:
    """What the autoscaler needs to know: connected nodes, which of them run something, the unplaced demand."""
    busy = {a.node_id for a in await store.live_attempts()}
    connected = [ConnectedNode(s.name, s.cluster, s.node_id in busy) for s in sessions.all()]
    return Observation(connected, list(dispatcher.demand))


async def record(store: Store, dispatcher: Dispatcher, cluster: str, node: str, detail: str) -> None:
    """An autoscaler decision: kept as an event, and the next pass rewrites the pending reasons it changes."""
    await store.record_event(cluster, node, "autoscaler", detail)
    dispatcher.wake()


async def recover_nodes(store: Store, sessions: Sessions) -> None:
    """After a (re)start the head has no stream to any node: the ones it had are Disconnected until they say
    Hello again, and every node that is not Down gets the full timers from now."""
    started = store.clock()
    nodes = await store.list_nodes()
    closed = [NodeMove(n.id, NodeTrigger.CLOSED, n.state, "the head restarted") for n in nodes
              if n.state in (NodeState.JOINING, NodeState.READY)]
    if closed:
        await store.apply_plan(Plan(node_moves=tuple(closed)))
    for node in await store.list_nodes() if closed else nodes:
        heard = started if node.state is not NodeState.DOWN else None
        sessions.remember(node, heard)


async def node_left(store: Store, reactor: Reactor, name: str) -> None:
    """The autoscaler stopped a node: it is Left, not a node that went silent."""
    node = next((n for n in await store.list_nodes() if n.name == name), None)
    if node is not None:
        await reactor.handle(NodeLeft(node.id, f"the autoscaler stopped {name}"))


def head_names(config: HeadConfig) -> list[str]:
    """The names and addresses the head's certificate covers."""
    hosts = [config.listen.rpartition(":")[0], config.node_address().rpartition(":")[0],
             config.mlflow_address().rpartition(":")[0]]
    names = [n for host in dict.fromkeys(hosts) for n in pki.local_names(host)]
    return list(dict.fromkeys(names + [n.strip() for n in config.tls_names.split(",") if n.strip()]))


def listen(server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None) -> str:
    """Bind `address` (TLS with `credentials`; plaintext only on loopback); returns it with the bound port."""
    host, _, port = address.rpartition(":")
    if credentials is None and not is_loopback(address):
        raise UsageError(f"refusing to listen on {address} without TLS: insecure_plaintext is for loopback "
                         "addresses only (127.0.0.1, ::1, localhost)")
    try:
        bound = (server.add_insecure_port(address) if credentials is None
                 else server.add_secure_port(address, credentials))
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise RunyardError(f"cannot listen on {address}: the address is in use or invalid")
    return f"{host}:{bound}"


async def start_mlflow(mlflow: MlflowServer, config: HeadConfig) -> str:
    """Serve MLflow's read API on `mlflow_address()`: HTTPS with the client port's certificate, plaintext only
    where the client port is plaintext (loopback). Returns its URL."""
    address = config.mlflow_address()
    if config.insecure_plaintext and not is_loopback(address):
        raise UsageError(f"refusing to serve MLflow on {address} without TLS: insecure_plaintext is for loopback "
                         "addresses only (127.0.0.1, ::1, localhost)")
    context = None if config.insecure_plaintext else server_ssl(config.tls_path / "head.crt",
                                                                 config.tls_path / "head.key")
    try:
        url = await mlflow.start(address, context)
    except ValueError as err:
        raise UsageError(f"config: {err}") from None
    except OSError as err:
        raise RunyardError(f"cannot listen on {address} for MLflow: {err.strerror or err}") from None
    log.info("MLflow API listening", extra={"mlflow_url": url})
    return url


async def serve(config: HeadConfig, clock: Clock | None = None) -> None:
    data = config.data_path
    clock = clock or SystemClock()
    notifier = Notifier()       # systemd's, under Type=notify: READY=1 once serving, WATCHDOG=1, STOPPING=1
    policies, quotas = cluster_policies(config), config.quotas()  # config faults before anything starts
    store = await Store.open(data, synchronous=config.sqlite_synchronous, clock=clock.now)
    try:
        await store.ensure_workspace("default")
        await ensure_admin_token(store, Path(config.admin_token_file or data / "admin.token"))
        tls = load_or_create(config.tls_path, head_names(config), store.cluster_id)
        credentials = Credentials(tokens=await store.list_tokens(), join_tokens=await store.join_tokens(),
                                  node_keys=await store.node_keys(), now=clock.now)
        artifacts = ArtifactStore(config.artifact_url or str(data / "artifacts"))
        sessions, followers = Sessions(), Followers()
        timers = Timers(disconnected_after_s=config.disconnected_after_s, down_after_s=config.down_after_s)
        dispatcher = Dispatcher(store=store, sessions=sessions, followers=followers, quotas=quotas,
                                half_life_s=config.fair_share_half_life_s, heartbeat_window_s=timers.disconnected_after_s,
                                clock=clock)
        reactor = Reactor(store=store, sessions=sessions, followers=followers, wake=dispatcher.wake,
                          policy=Policy(config.max_retries, config.quarantine_after), now=clock.now)
        await recover_nodes(store, sessions)
        reaper = Reaper(sessions=sessions, reactor=reactor, timers=timers, clock=clock)
        options = [
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.keepalive_time_ms", 20_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
            ("grpc.keepalive_permit_without_calls", 1),
        ]
        snapshot_checks = SnapshotChecks(max_entries=config.snapshot_max_entries,
                                         max_unpacked_bytes=config.snapshot_max_unpacked_bytes,
                                         timeout_s=config.snapshot_check_timeout_s,
                                         workers=config.snapshot_check_workers)
        enrollment = Enrollment(store=store, credentials=credentials, tls=tls, sessions=sessions, reactor=reactor,
                                limits=Limits(config.node_max_cpus, config.node_max_memory_bytes, config.node_max_gpus),
                                require_approval=config.require_node_approval)
        boundary = Boundary(credentials, audit=store.audit, now=clock.now)
        metrics, serving = HeadMetrics(store), asyncio.Event()     # /readyz: database open and migrated, gRPC serving
        server = grpc.aio.server(interceptors=[metrics.interceptor(), boundary], options=options)
        pb_grpc.add_RunyardServicer_to_server(
            RunyardService(config=config, store=store, artifacts=artifacts, sessions=sessions, reactor=reactor,
                           dispatcher=dispatcher, followers=followers, timers=timers, policies=policies,
                           credentials=credentials, enrollment=enrollment, tls=tls,
                           snapshot_checks=snapshot_checks), server)
        node_agents = NodeAgentService(store=store, artifacts=artifacts, sessions=sessions, reactor=reactor,
                                       followers=followers, enrollment=enrollment, ca_pem=tls.ca.cert_pem,
                                       tmp_dir=data / "tmp", max_outputs_bytes=config.snapshot_max_bytes)
        node_agents.on_ingest = metrics.ingested
        pb_grpc.add_NodeAgentServicer_to_server(node_agents, server)
        address = listen(server, config.listen, None if config.insecure_plaintext else tls.client_port())
        node_address = listen(server, config.node_address(), tls.node_port())
        mlflow = MlflowServer(MlflowApi(store=store, artifacts=artifacts, credentials=credentials))
        mlflow_url = await start_mlflow(mlflow, config)     # a port in use stops the start before gRPC serves
        monitor = await serve_metrics(metrics, config.metrics_address(),
                                      readiness=lambda: "" if serving.is_set() else "gRPC is not serving")
        await server.start()
        serving.set()

        async def join_token_for_local_agent() -> str:
            return (await enrollment.create_join_token(uses=1, ttl_s=3600.0, created_by="local provider")).secret

        head = LocalHead(address, node_address, tls.ca_file, join_token_for_local_agent)
        providers = node_providers(config, policies, head)
        if config.ready_file:
            tmp = Path(config.ready_file + ".tmp")
            tmp.write_text(json.dumps({"address": address, "node_address": node_address, "pid": os.getpid(),
                                       "cluster_id": store.cluster_id, "ca_file": str(tls.ca_file),
                                       "ca_fingerprint": tls.fingerprint, "mlflow_url": mlflow_url,
                                       "metrics_url": monitor.url if monitor else ""}))
            os.replace(tmp, config.ready_file)
        autoscaler = None
        if providers:
            autoscaler = Autoscaler(policies=policies, providers=providers, clock=clock,
                                    observe=lambda: observe(store, sessions, dispatcher),
                                    record=lambda cluster, node, detail: record(store, dispatcher, cluster, node, detail),
                                    left=lambda name: node_left(store, reactor, name))
            dispatcher.starting, dispatcher.on_demand = autoscaler.starting, autoscaler.wake
            autoscaler.on_action = metrics.autoscaler_action
        dispatcher.on_pass, store.writer.on_commit = metrics.pass_seconds.observe, metrics.commit_seconds.observe
        log.info("head ready", extra={"address": address, "node_address": node_address, "mlflow_url": mlflow_url,
                                      "data_dir": str(data),
                                      "cluster_id": store.cluster_id, "ca_fingerprint": tls.fingerprint,
                                      "tls": not config.insecure_plaintext})
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        notifier.ready(f"serving clients on {address}, nodes on {node_address}")
        try:
            async with asyncio.TaskGroup() as tasks:
                loops = [
                    tasks.create_task(dispatcher.run(), name="dispatch"),
                    tasks.create_task(reaper.run(tick_s=min(1.0, config.disconnected_after_s / 4)), name="reaper"),
                    tasks.create_task(notifier.keep_alive(), name="watchdog"),
                ]
                if autoscaler is not None:
                    loops.append(tasks.create_task(autoscaler.run(tick_s=config.autoscaler_tick_s), name="autoscaler"))
                dispatcher.wake()
                await stop.wait()
                log.info("head stopping")
                serving.clear()
                notifier.stopping()
                for loop_task in loops:
                    loop_task.cancel()
        finally:
            for provider in {id(p): p for p in providers.values()}.values():
                await provider.close()  # local agents stop and report their runs while the server still listens
            await mlflow.stop()
            await server.stop(grace=2.0)
            if monitor is not None:
                await monitor.stop()
            await snapshot_checks.close()
    finally:
        await store.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="runyard-head", description="The Runyard head daemon.")
    parser.add_argument("--config", type=Path, help="head.toml (every key can also be set as RUNYARD_HEAD_<KEY>)")
    parser.add_argument("--data-dir", help="overrides data_dir")
    parser.add_argument("--listen", help="overrides listen (host:port)")
    parser.add_argument("--ready-file", help="overrides ready_file")
    args = parser.parse_args(argv)
    try:
        config = load_head_config(args.config, data_dir=args.data_dir, listen=args.listen, ready_file=args.ready_file)
        logsetup.configure(config.log_level, name="scheduler")
        with DataDirLock.take(config.data_path):  # held until the process ends: one head per data directory
            uvloop.run(serve(config))
    except (RunyardError, HeadError) as err:
        print(f"runyard-head: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
