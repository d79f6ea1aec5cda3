"""Who may call what: every RPC of the proto's services × every kind of caller, against a real head, with the
exact status code expected. The list of methods comes from the service descriptors, so a new RPC fails here until
its expectations are written down below.

Callers: anonymous, a wrong token, a revoked token, an expired token, a viewer, a user of another workspace, a
user, an admin (user tokens, on the client port); a join token; the certificate of a node the run is not on, and
of the node it is on (on the node port, mTLS).
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory

from protos import runyard_pb2 as pb
from runyard import pki
from testbed.harness import Cluster, wait_until

pytestmark = pytest.mark.timeout(120)

OK = grpc.StatusCode.OK
UNAUTH = grpc.StatusCode.UNAUTHENTICATED
DENIED = grpc.StatusCode.PERMISSION_DENIED
NOT_FOUND = grpc.StatusCode.NOT_FOUND
INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
EXISTS = grpc.StatusCode.ALREADY_EXISTS

USERS = ("anonymous", "wrong token", "revoked token", "expired token", "viewer", "other workspace", "user", "admin")
CALLERS = (*USERS, "join token", "other node", "node")


@dataclass
class World:
    cluster: Cluster
    tokens: dict[str, str]
    certs: dict[str, tuple[bytes, bytes]]                 # caller -> (key, certificate) of a node
    live_run: str
    done_run: str
    sha: str
    throwaway_token: str                                  # only the admin's RevokeToken reaches it
    spare_node: str                                       # only the admin's RemoveNode reaches it
    counter: Iterator[int] = field(default_factory=itertools.count)


def _enroll(cluster: Cluster, join_token: str, name: str) -> tuple[bytes, bytes]:
    key = pki.new_key()
    from cryptography.hazmat.primitives import serialization
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    with grpc.secure_channel(cluster.head.address, grpc.ssl_channel_credentials(cluster.head.ca_pem)) as channel:
        reply = channel.unary_unary("/runyard.v1.NodeAgent/Join", request_serializer=pb.JoinRequest.SerializeToString,
                                    response_deserializer=pb.JoinResponse.FromString)(
            pb.JoinRequest(name=name, cluster="elsewhere", csr=pki.node_csr(name, key)),
            metadata=(("authorization", f"Bearer {join_token}"),), timeout=10)
    return key_pem, reply.certificate


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("authz")
    cluster = Cluster.start(root / "cluster", agents=1)
    try:
        admin = cluster.client()
        admin.create_workspace("other")
        tokens = {"admin": cluster.head.token, "wrong token": "not-a-token", "anonymous": ""}
        for caller, workspace, role, ttl in (("viewer", "default", pb.ROLE_VIEWER, 0.0),
                                             ("user", "default", pb.ROLE_USER, 0.0),
                                             ("other workspace", "other", pb.ROLE_USER, 0.0),
                                             ("revoked token", "default", pb.ROLE_ADMIN, 0.0),
                                             ("expired token", "default", pb.ROLE_ADMIN, 0.001)):
            made = admin.create_token(pb.CreateTokenRequest(workspace=workspace, role=role, name=caller.replace(" ", "-"),
                                                            ttl_s=ttl))
            tokens[caller] = made.secret
            if caller == "revoked token":
                admin.revoke_token(made.token.id)
        throwaway = admin.create_token(pb.CreateTokenRequest(role=pb.ROLE_VIEWER)).token.id
        admin.create_environment(pb.Environment(name=ENVIRONMENT, version="1", spec=pb.EnvironmentSpec(pip=["numpy"])))
        tokens["join token"] = cluster.head.join_token(uses=100)
        certs = {"other node": _enroll(cluster, tokens["join token"], "other-node")}
        spare = "spare"
        _enroll(cluster, tokens["join token"], spare)
        agent_dir = cluster.agents[0].data_dir
        certs["node"] = ((agent_dir / "node.key").read_bytes(), (agent_dir / "node.crt").read_bytes())
        project = root / "project"
        project.mkdir()
        (project / "wait.py").write_text("import time\ntime.sleep(300)\n")
        done = cluster.cli("submit", str(project), "-q", "--", "true", check=True).stdout.strip().splitlines()[-1]
        live = cluster.cli("submit", str(project), "-d", "-q", "--", "python", "wait.py", check=True).stdout.strip()
        cluster.wait_state(live, "Running")
        yield World(cluster, tokens, certs, live, done, cluster.run(live)["snapshot_sha256"], throwaway, spare)
        cluster.cli("cancel", live)
    finally:
        cluster.stop()


# --- the expectations -------------------------------------------------------------------------------------------

ENVIRONMENT = "authz-env"       # registered in the default workspace

# The role a method needs: viewer < user < admin; "join" a join token; "node" a node certificate.
NEEDS = {
    "GetRun": "viewer", "ListRuns": "viewer", "ListQueue": "viewer", "StreamLogs": "viewer", "GetMetrics": "viewer",
    "ListNodes": "viewer", "GetNode": "viewer", "Download": "viewer", "WhoAmI": "viewer",
    "ListEnvironments": "viewer", "GetEnvironment": "viewer",
    "HasSnapshot": "user", "UploadSnapshot": "user", "Submit": "user", "Cancel": "user",
    "CreateEnvironment": "user", "BuildEnvironment": "user",
    "SetNodeSchedule": "admin", "CreateWorkspace": "admin", "ListWorkspaces": "admin", "CreateToken": "admin",
    "ListTokens": "admin", "RevokeToken": "admin", "CreateJoinToken": "admin", "RemoveNode": "admin",
    "ApproveNode": "admin", "ListAudit": "admin",
    "ListExperiments": "viewer", "SearchLogs": "viewer", "GetUsage": "viewer",
    "Join": "join", "Connect": "node", "FetchSnapshot": "node", "UploadOutputs": "node",
}
RANK = {"viewer": 1, "user": 2, "admin": 3}


def _requests(w: World) -> dict[str, Callable[[], Any]]:
    """One meaningful request per method, made anew for each call (a list for client-streaming methods)."""
    n = lambda: next(w.counter)  # noqa: E731
    return {
        "HasSnapshot": lambda: pb.SnapshotRef(sha256=w.sha),
        "UploadSnapshot": lambda: [],
        "Submit": lambda: pb.SubmitRequest(snapshot_sha256=w.sha, spec=pb.RunSpec(argv=["true"]),
                                           idempotency_key=uuid.uuid4().hex),
        "GetRun": lambda: pb.RunRef(run_id=w.live_run),
        "ListRuns": lambda: pb.ListRunsRequest(),
        "ListQueue": lambda: pb.QueueRequest(),
        "Cancel": lambda: pb.CancelRequest(run_ids=[w.done_run]),
        "StreamLogs": lambda: pb.LogsRequest(run_id=w.done_run),
        "GetMetrics": lambda: pb.MetricsRequest(run_id=w.live_run),
        "ListNodes": lambda: pb.ListNodesRequest(),
        "GetNode": lambda: pb.NodeRef(node="node-1"),
        "SetNodeSchedule": lambda: pb.NodeScheduleRequest(node="node-1", action=pb.NodeScheduleRequest.UNCORDON),
        "Download": lambda: pb.DownloadRequest(run_id=w.done_run, what=pb.DownloadRequest.SNAPSHOT),
        "WhoAmI": lambda: pb.WhoAmIRequest(),
        "CreateEnvironment": lambda: pb.Environment(name=f"env-{n()}", version="1",
                                                    spec=pb.EnvironmentSpec(pip=["numpy"])),
        "ListEnvironments": lambda: pb.ListEnvironmentsRequest(),
        "GetEnvironment": lambda: pb.EnvironmentRef(ref=f"{ENVIRONMENT}:1"),
        "BuildEnvironment": lambda: pb.BuildEnvironmentRequest(ref=f"{ENVIRONMENT}@latest"),
        "CreateWorkspace": lambda: pb.WorkspaceRef(name=f"ws-{n()}"),
        "ListWorkspaces": lambda: pb.ListWorkspacesRequest(),
        "CreateToken": lambda: pb.CreateTokenRequest(workspace="other", role=pb.ROLE_VIEWER, name=f"made-{n()}"),
        "ListTokens": lambda: pb.ListTokensRequest(),
        "RevokeToken": lambda: pb.TokenRef(id=w.throwaway_token),
        "CreateJoinToken": lambda: pb.CreateJoinTokenRequest(uses=1, ttl_s=60),
        "RemoveNode": lambda: pb.NodeRef(node=w.spare_node),
        "ApproveNode": lambda: pb.NodeRef(node="node-1"),
        "ListAudit": lambda: pb.AuditRequest(),
        "ListExperiments": lambda: pb.ListExperimentsRequest(),
        "SearchLogs": lambda: pb.SearchLogsRequest(run_ids=[w.done_run], pattern="."),
        "GetUsage": lambda: pb.UsageRequest(workspace="default"),   # the runs' workspace: only an admin's or its own
        "Join": lambda: pb.JoinRequest(name=f"joiner-{n()}", cluster="elsewhere",
                                       csr=pki.node_csr("joiner", pki.new_key())),
        "Connect": lambda: [],
        "FetchSnapshot": lambda: pb.FetchSnapshotRequest(run_id=w.live_run, attempt=1),
        "UploadOutputs": lambda: [pb.OutputsChunk(run_id=w.live_run, attempt=1, sha256="not-a-sha", data=b"")],
    }


# What an allowed caller gets for the request above; and a user of another workspace, where it differs.
ALLOWED = {
    "HasSnapshot": OK, "UploadSnapshot": INVALID, "Submit": OK, "GetRun": OK, "ListRuns": OK, "ListQueue": OK,
    "Cancel": OK, "StreamLogs": OK, "GetMetrics": OK, "ListNodes": OK, "GetNode": OK, "SetNodeSchedule": OK,
    "Download": OK, "WhoAmI": OK, "CreateWorkspace": OK, "ListWorkspaces": OK, "CreateToken": OK, "ListTokens": OK,
    "RevokeToken": OK, "CreateJoinToken": OK, "RemoveNode": OK, "ApproveNode": EXISTS, "ListAudit": OK, "Join": OK,
    "Connect": INVALID, "FetchSnapshot": OK, "UploadOutputs": INVALID,
    "CreateEnvironment": OK, "ListEnvironments": OK, "GetEnvironment": OK, "BuildEnvironment": OK,
    "ListExperiments": OK, "SearchLogs": OK, "GetUsage": OK,
}
ANOTHER_WORKSPACE = {"Submit": PRECONDITION, "GetRun": NOT_FOUND, "Cancel": NOT_FOUND, "StreamLogs": NOT_FOUND,
                     "GetMetrics": NOT_FOUND, "Download": NOT_FOUND, "GetEnvironment": NOT_FOUND,
                     "BuildEnvironment": NOT_FOUND, "SearchLogs": NOT_FOUND, "GetUsage": DENIED}
ANOTHER_NODE = {"FetchSnapshot": NOT_FOUND, "UploadOutputs": NOT_FOUND}


def expected(caller: str, method: str) -> grpc.StatusCode:
    needs = NEEDS[method]
    if needs == "node":
        if caller == "other node":
            return ANOTHER_NODE.get(method, ALLOWED[method])
        return ALLOWED[method] if caller == "node" else UNAUTH
    if needs == "join":
        return ALLOWED[method] if caller == "join token" else UNAUTH
    role = {"viewer": "viewer", "other workspace": "user", "user": "user", "admin": "admin"}.get(caller)
    if role is None:
        return UNAUTH
    if RANK[role] < RANK[needs]:
        return DENIED
    if caller == "other workspace":
        return ANOTHER_WORKSPACE.get(method, ALLOWED[method])
    return ALLOWED[method]


# --- the calls --------------------------------------------------------------------------------------------------

def _methods() -> list[tuple[str, str]]:
    return [(service.full_name, method.name) for service in pb.DESCRIPTOR.services_by_name.values()
            for method in service.methods]


def _channel(w: World, caller: str) -> grpc.Channel:
    head = w.cluster.head
    if caller in w.certs:
        key, cert = w.certs[caller]
        credentials = grpc.ssl_channel_credentials(head.ca_pem, private_key=key, certificate_chain=cert)
        return grpc.secure_channel(head.node_address, credentials)
    return grpc.secure_channel(head.address, grpc.ssl_channel_credentials(head.ca_pem))


def _call(w: World, caller: str, service: str, name: str) -> grpc.StatusCode:
    method = pb.DESCRIPTOR.services_by_name[service.rsplit(".", 1)[-1]].methods_by_name[name]
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    kind = {(False, False): "unary_unary", (False, True): "unary_stream", (True, False): "stream_unary",
            (True, True): "stream_stream"}[(method.client_streaming, method.server_streaming)]
    request = _requests(w)[name]()
    token = w.tokens.get(caller, "")
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    with _channel(w, caller) as channel:
        stub = getattr(channel, kind)(f"/{service}/{name}", request_serializer=request_class.SerializeToString,
                                      response_deserializer=response_class.FromString)
        try:
            result = stub(iter(request) if method.client_streaming else request, metadata=metadata, timeout=20)
            if method.server_streaming:
                for _ in result:
                    pass
        except grpc.RpcError as err:
            return err.code()
    return OK


def test_every_rpc_has_its_expectations_written_down() -> None:
    assert sorted(name for _, name in _methods()) == sorted(NEEDS) == sorted(ALLOWED)


@pytest.mark.parametrize(("service", "method"), _methods())
def test_every_caller_gets_exactly_the_expected_status(world: World, service: str, method: str) -> None:
    got = {caller: _call(world, caller, service, method) for caller in CALLERS}
    want = {caller: expected(caller, method) for caller in CALLERS}
    assert got == want


def test_a_refusal_says_why_without_echoing_the_credential(world: World) -> None:
    env = world.cluster.env
    revoked = world.cluster.cli("runs", env=env(RUNYARD_TOKEN=world.tokens["revoked token"]))
    assert revoked.returncode == 1 and "was revoked" in revoked.stderr
    expired = world.cluster.cli("runs", env=env(RUNYARD_TOKEN=world.tokens["expired token"]))
    assert expired.returncode == 1 and "expired" in expired.stderr
    viewer = world.cluster.cli("cancel", world.live_run, env=env(RUNYARD_TOKEN=world.tokens["viewer"]))
    assert viewer.returncode == 1 and "needs the user role" in viewer.stderr
    for result in (revoked, expired, viewer):
        assert "Traceback" not in result.stderr
        assert not any(token and token in result.stderr for token in world.tokens.values())


def test_a_plaintext_client_and_a_node_port_caller_without_a_certificate_are_refused_at_the_transport(
        world: World) -> None:
    head = world.cluster.head
    for address, credentials in ((head.address, None), (head.node_address, grpc.ssl_channel_credentials(head.ca_pem))):
        channel = grpc.insecure_channel(address) if credentials is None else grpc.secure_channel(address, credentials)
        with channel:
            call = channel.unary_unary("/runyard.v1.Runyard/ListRuns", request_serializer=lambda b: b,
                                       response_deserializer=lambda b: b)
            with pytest.raises(grpc.RpcError) as refused:
                call(b"", timeout=5, metadata=(("authorization", f"Bearer {head.token}"),))
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, address


def test_a_message_that_does_not_decode_is_invalid_argument_without_internal_names(world: World) -> None:
    head = world.cluster.head
    with grpc.secure_channel(head.address, grpc.ssl_channel_credentials(head.ca_pem)) as channel:
        call = channel.unary_unary("/runyard.v1.Runyard/GetRun", request_serializer=lambda b: b,
                                   response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as refused:
            call(b"\xff\xff\xff\xff garbage", timeout=5, metadata=(("authorization", f"Bearer {head.token}"),))
        assert refused.value.code() == INVALID
        assert "RunRef" not in refused.value.details() and "proto" not in refused.value.details().lower()
        with pytest.raises(grpc.RpcError) as anonymous:
            call(b"\xff\xff\xff\xff garbage", timeout=5)
        assert anonymous.value.code() == UNAUTH, "authentication comes before decoding"


def test_mutating_calls_are_audited_with_who_what_and_from_where(world: World) -> None:
    cluster = world.cluster
    cluster.cli("token", "create", "--workspace", "other", "--name", "audited", check=True)
    entries = cluster.json("audit", "--user", "admin")
    made = [e for e in entries if e["method"] == "CreateToken" and e["code"] == "OK"]
    assert made and made[-1]["workspace"] == "default" and made[-1]["peer"].startswith("ipv4:127.0.0.1")
    assert made[-1]["target"].startswith("tok-")
    refused = [e for e in cluster.json("audit") if e["method"] == "CreateWorkspace" and e["code"] == "ALREADY_EXISTS"]
    cluster.cli("workspace", "create", "other")
    wait_until("the refused call in the audit trail", lambda: len(
        [e for e in cluster.json("audit") if e["method"] == "CreateWorkspace" and e["code"] == "ALREADY_EXISTS"]
    ) > len(refused))
    assert all(e["method"] not in ("ListRuns", "GetRun", "WhoAmI") for e in cluster.json("audit", "--limit", "1000"))
    submitted = [e for e in cluster.json("audit", "--limit", "1000") if e["method"] == "Submit"]
    assert {e["target"] for e in submitted} >= {world.live_run, world.done_run}, "a submit's row names its run"
    assert all(e["code"] == "OK" and e["user"] == "admin" for e in submitted if e["target"] == world.live_run)


def test_the_client_config_and_the_ca_it_pins_are_private(tmp_path: Path, world: World) -> None:
    head = world.cluster.head
    config = tmp_path / "config.toml"
    env = {**world.cluster.env(RUNYARD_CONFIG=str(config))}
    for key in ("RUNYARD_ADDRESS", "RUNYARD_TOKEN", "RUNYARD_CA_FILE"):
        env.pop(key)
    fingerprint = pki.fingerprint(head.ca_pem)
    wrong = world.cluster.cli("login", head.address, "--token", head.token, "--fingerprint", "sha256:" + "0" * 64,
                              env=env)
    assert wrong.returncode == 2 and "refusing to trust it" in wrong.stderr and not config.exists()
    world.cluster.cli("login", head.address, "--token", head.token, "--fingerprint", fingerprint, env=env, check=True)
    assert config.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "config-ca.pem").stat().st_mode & 0o777 == 0o600
    assert f'ca_fingerprint = "{fingerprint}"' in config.read_text()
    assert world.cluster.cli("runs", env=env).returncode == 0
