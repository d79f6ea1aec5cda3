"""The environments half of the Runyard service: registered environments (create, list, show, build on nodes), and
what Submit does with a run's environment (resolve a reference, check the spec, hash it). `RunyardService`
inherits these methods; `auth.RULES` says which role each needs.

An environment's hash is its identity (`envspec.identity`) on the platform of the cluster it is for: the platform
most of that cluster's nodes report, else (none reports one yet) the head's own. A registered environment is shown
with its hash in cluster `default`. A node has an environment built when its last Hello or Heartbeat named the hash
for its cluster (`Session.env_hashes`).
Must not: place runs, or check roles itself (the boundary did).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Sequence

import grpc

from protos import runyard_pb2 as pb
from runyard import envspec
from runyard.envspec import EnvRef
from runyard.envwire import env_from_pb
from scheduler.auth import caller
from scheduler.convert import environment_to_pb
from scheduler.core.nodes import NodeState
from scheduler.errors import FailedPrecondition, InvalidArgument, NotFound, shown
from scheduler.model import EnvironmentRecord, NodeRecord, RunSpec
from scheduler.placement import NodeView, Request, minor_versions
from scheduler.sessions import BuildEnv, Sessions
from scheduler.store import Store

log = logging.getLogger(__name__)

LIST_PAGE_BYTES = 4 * 1024 * 1024   # past this, ListEnvironments leaves the specs out (a spec is never empty)
MAX_DESCRIPTION_CHARS = 4096
MAX_TAGS = 64
MAX_TAG_CHARS = 256


def platform_of(nodes: Sequence[NodeRecord], cluster: str) -> str:
    """The platform environments of `cluster` are hashed for (see the module docstring)."""
    counts = Counter(n.capacity.platform for n in nodes if n.cluster == cluster and n.capacity.platform)
    if counts:
        return max(sorted(counts), key=lambda platform: counts[platform])
    return envspec.node_platform()


class _Hashes:
    """An environment's hash for each cluster, each computed once: many nodes share a few clusters."""

    def __init__(self, spec: envspec.EnvSpec, nodes: Sequence[NodeRecord]) -> None:
        self._spec, self._nodes = spec, nodes
        self._by_cluster: dict[str, str] = {}

    def of(self, cluster: str) -> str:
        if cluster not in self._by_cluster:
            self._by_cluster[cluster] = envspec.identity(self._spec, platform_of(self._nodes, cluster))
        return self._by_cluster[cluster]


def _ref(text: str) -> EnvRef:
    try:
        return envspec.parse_ref(text)
    except ValueError as err:
        raise InvalidArgument(str(err)) from None


def needs_of(spec: envspec.EnvSpec) -> Request:
    """What building `spec` asks of a node, as a placement request that asks nothing else."""
    return Request("", "", 0.0, 0, 0, python=spec.python, conda=bool(spec.conda), image=bool(spec.image))


class EnvironmentMethods:
    _store: Store
    _sessions: Sessions

    async def CreateEnvironment(self, request: pb.Environment, context: grpc.aio.ServicerContext) -> pb.Environment:
        if not envspec.valid_name(request.name):
            raise InvalidArgument("an environment's name is 1 to 255 letters, digits, '_', '.' or '-', starting with a "
                                  "letter or digit")
        if request.version and not envspec.valid_version(request.version):
            raise InvalidArgument("an environment's version is 1 to 64 letters, digits, '_', '.' or '-', starting "
                                  "with a letter or digit")
        if len(request.description) > MAX_DESCRIPTION_CHARS:
            raise InvalidArgument(f"the description is over {MAX_DESCRIPTION_CHARS} characters")
        if len(request.tags) > MAX_TAGS or any(not k or len(k) > MAX_TAG_CHARS or len(v) > MAX_TAG_CHARS
                                               for k, v in request.tags.items()):
            raise InvalidArgument(f"tags: at most {MAX_TAGS}, keys and values of at most {MAX_TAG_CHARS} characters")
        spec = env_from_pb(request.spec)
        problem = envspec.check(spec)
        if problem:
            raise InvalidArgument(f"the environment's spec: {problem}")
        if spec.empty:
            raise InvalidArgument("the environment asks for nothing: give it a conda file or an image")
        me = caller()
        stored, created = await self._store.create_environment(EnvironmentRecord(
            workspace=me.workspace, name=request.name, version=request.version, description=request.description,
            tags=dict(request.tags), spec=spec, created_at=0.0, created_by=me.user))
        log.info("environment registered" if created else "environment already registered",
                 extra={"environment": f"{stored.name}:{stored.version}", "workspace": me.workspace})
        nodes = await self._store.list_nodes()
        return environment_to_pb(stored, env_hash=envspec.identity(stored.spec, platform_of(nodes, "default")))

    async def ListEnvironments(self, request: pb.ListEnvironmentsRequest,
                               context: grpc.aio.ServicerContext) -> pb.ListEnvironmentsResponse:
        platform = platform_of(await self._store.list_nodes(), "default")
        response, size = pb.ListEnvironmentsResponse(), 0
        for env in await self._store.list_environments(caller().workspace):
            shown = environment_to_pb(env, env_hash=envspec.identity(env.spec, platform))
            size += shown.ByteSize()
            if size > LIST_PAGE_BYTES:
                shown.ClearField("spec")    # `runyard env show` has it; one workspace's specs never break a list
            response.environments.append(shown)
        return response

    async def GetEnvironment(self, request: pb.EnvironmentRef, context: grpc.aio.ServicerContext) -> pb.Environment:
        found = await self._registered(request.ref)
        nodes = await self._store.list_nodes()
        hashes = _Hashes(found.spec, nodes)
        built_on = []
        for node in nodes:
            session = self._sessions.get(node.id)
            if session is not None and hashes.of(node.cluster) in session.env_hashes:
                built_on.append(node.name)
        return environment_to_pb(found, env_hash=hashes.of("default"), built_on=sorted(built_on))

    async def BuildEnvironment(self, request: pb.BuildEnvironmentRequest,
                               context: grpc.aio.ServicerContext) -> pb.BuildEnvironmentResponse:
        found = await self._registered(request.ref)
        nodes = await self._store.list_nodes()
        needs = needs_of(found.spec)
        if request.nodes:
            by_name = {n.name: n for n in nodes}
            unknown = [name for name in request.nodes if name not in by_name]
            if unknown:
                raise NotFound(f"no node {shown(unknown[0])}; `runyard nodes` lists them")
            targets = [by_name[name] for name in dict.fromkeys(request.nodes)]
            for node in targets:
                if not self._ready(node):
                    raise FailedPrecondition(f"node {node.name} is not connected and Ready; it cannot build now")
                if not _view(node).can_build(needs):
                    raise FailedPrecondition(f"node {node.name} cannot build {found.name}:{found.version}: "
                                             f"{_lacks(node, needs)}")
        else:
            targets = sorted((n for n in nodes if self._ready(n) and _view(n).can_build(needs)), key=lambda n: n.name)
            if not targets:
                raise FailedPrecondition(f"no Ready node can build {found.name}:{found.version} now")
        hashes = _Hashes(found.spec, nodes)
        for node in targets:
            self._sessions.send(node.id, BuildEnv(found.spec, hashes.of(node.cluster)))
        log.info("environment build asked", extra={"environment": f"{found.name}:{found.version}",
                                                   "nodes": [n.name for n in targets]})
        return pb.BuildEnvironmentResponse(nodes=[n.name for n in targets])

    async def _registered(self, text: str) -> EnvironmentRecord:
        ref = _ref(text)
        return await self._store.get_environment(caller().workspace, ref.name, ref.version)

    def _ready(self, node: NodeRecord) -> bool:
        facts = self._sessions.facts(node.id)
        return self._sessions.get(node.id) is not None and facts is not None and facts.state is NodeState.READY

    async def run_environment(self, spec: RunSpec, env_ref: str) -> tuple[RunSpec, str, str]:
        """A submitted run's spec with its environment resolved (a registered one at its exact version: `@latest`
        is the highest there is now), checked and hashed for its cluster; and the registered name and version."""
        name = version = ""
        if env_ref:
            if not spec.env.empty:
                raise InvalidArgument("the run names a registered environment and gives one inline; give one of them")
            found = await self._registered(env_ref)
            spec = dataclasses.replace(spec, env=found.spec)
            name, version = found.name, found.version
        if spec.env.empty:
            return spec, "", ""     # `spec_from_pb` never takes a hash from the client
        problem = envspec.check(spec.env)
        if problem:
            raise InvalidArgument(f"the run's environment: {problem}")
        platform = platform_of(await self._store.list_nodes(), spec.compute)
        return dataclasses.replace(spec, env_hash=envspec.identity(spec.env, platform)), name, version


def _view(node: NodeRecord) -> NodeView:
    """What a node can build, as placement sees it (its resources play no part here)."""
    return NodeView(node.id, node.name, node.cluster, 0.0, 0, (), 0.0, 0, 0,
                    pythons=minor_versions(node.capacity.interpreters), builders=frozenset(node.capacity.builders))


def _lacks(node: NodeRecord, needs: Request) -> str:
    pythons = minor_versions(node.capacity.interpreters)
    if needs.python and needs.python not in pythons:
        return f"it has no python {needs.python} (it has {', '.join(sorted(pythons)) or 'none'})"
    return "it has no conda builder or container runtime it needs"
