"""Who may call what: the credential check behind every call to the head."""

from __future__ import annotations

import grpc
import pytest

from scheduler import errors
from scheduler.auth import JOIN_METHOD, Credentials, new_token, status_code, token_sha
from scheduler.errors import PermissionDenied, Unauthenticated
from scheduler.model import Principal

SUBMIT = "/runyard.v1.Runyard/Submit"
GET_RUN = "/runyard.v1.Runyard/GetRun"
CONNECT = "/runyard.v1.NodeAgent/Connect"
FETCH = "/runyard.v1.NodeAgent/FetchSnapshot"

JOIN_TOKEN = "join-secret"
USER_TOKEN = "user-secret"
OTHER_USER_TOKEN = "other-user-secret"
NODE_TOKEN = "node-secret"


@pytest.fixture
def credentials() -> Credentials:
    return Credentials(
        {
            token_sha(USER_TOKEN): Principal("default", "admin"),
            token_sha(OTHER_USER_TOKEN): Principal("team-b", "user"),
            token_sha(NODE_TOKEN): Principal("", "node", "node-1"),
        },
        token_sha(JOIN_TOKEN),
    )


@pytest.mark.parametrize("method", [SUBMIT, GET_RUN, CONNECT, FETCH, JOIN_METHOD])
def test_no_token_is_unauthenticated(credentials: Credentials, method: str) -> None:
    with pytest.raises(Unauthenticated):
        credentials.check(method, "")


@pytest.mark.parametrize("method", [SUBMIT, GET_RUN, CONNECT, FETCH, JOIN_METHOD])
def test_wrong_token_is_unauthenticated(credentials: Credentials, method: str) -> None:
    with pytest.raises(Unauthenticated):
        credentials.check(method, "not-a-token")


def test_tokens_are_matched_exactly(credentials: Credentials) -> None:
    for near_miss in (USER_TOKEN + " ", USER_TOKEN.upper(), USER_TOKEN[:-1], token_sha(USER_TOKEN)):
        with pytest.raises(Unauthenticated):
            credentials.check(SUBMIT, near_miss)


def test_join_token_opens_join(credentials: Credentials) -> None:
    principal = credentials.check(JOIN_METHOD, JOIN_TOKEN)
    assert principal.role == "joining" and principal.node_id == "" and principal.workspace == ""


@pytest.mark.parametrize("method", [SUBMIT, GET_RUN, CONNECT, FETCH])
def test_join_token_opens_nothing_else(credentials: Credentials, method: str) -> None:
    with pytest.raises(Unauthenticated):
        credentials.check(method, JOIN_TOKEN)


@pytest.mark.parametrize("token", [USER_TOKEN, NODE_TOKEN])
def test_join_needs_the_join_token(credentials: Credentials, token: str) -> None:
    with pytest.raises(Unauthenticated):
        credentials.check(JOIN_METHOD, token)


@pytest.mark.parametrize("method", [CONNECT, FETCH])
def test_user_token_on_the_node_api_is_denied(credentials: Credentials, method: str) -> None:
    with pytest.raises(PermissionDenied):
        credentials.check(method, USER_TOKEN)


@pytest.mark.parametrize("method", [SUBMIT, GET_RUN])
def test_node_token_on_the_client_api_is_denied(credentials: Credentials, method: str) -> None:
    with pytest.raises(PermissionDenied):
        credentials.check(method, NODE_TOKEN)


def test_user_token_gives_its_workspace(credentials: Credentials) -> None:
    assert credentials.check(SUBMIT, USER_TOKEN) == Principal("default", "admin")
    assert credentials.check(GET_RUN, OTHER_USER_TOKEN) == Principal("team-b", "user")


def test_node_token_gives_its_node(credentials: Credentials) -> None:
    assert credentials.check(CONNECT, NODE_TOKEN).node_id == "node-1"


def test_a_joined_node_is_let_in(credentials: Credentials) -> None:
    token = new_token()
    with pytest.raises(Unauthenticated):
        credentials.check(CONNECT, token)
    credentials.add(token_sha(token), Principal("", "node", "node-2"))
    assert credentials.check(CONNECT, token).node_id == "node-2"


def test_forget_node_revokes_its_old_token(credentials: Credentials) -> None:
    # A node that rejoins gets a new credential; the old one must stop working at once.
    fresh = new_token()
    credentials.forget_node("node-1")
    credentials.add(token_sha(fresh), Principal("", "node", "node-1"))
    with pytest.raises(Unauthenticated):
        credentials.check(CONNECT, NODE_TOKEN)
    assert credentials.check(CONNECT, fresh).node_id == "node-1"
    # Other credentials are untouched.
    assert credentials.check(SUBMIT, USER_TOKEN).workspace == "default"


def test_new_tokens_are_unique_and_long() -> None:
    tokens = {new_token() for _ in range(100)}
    assert len(tokens) == 100 and all(len(t) >= 32 for t in tokens)


# The tree drawn in errors.py: what a client sees for each refusal (the client maps the codes back).
@pytest.mark.parametrize(("error", "code"), [
    (errors.Unauthenticated("no token"), grpc.StatusCode.UNAUTHENTICATED),
    (errors.PermissionDenied("node token"), grpc.StatusCode.PERMISSION_DENIED),
    (errors.NotFound("no run"), grpc.StatusCode.NOT_FOUND),
    (errors.InvalidArgument("bad"), grpc.StatusCode.INVALID_ARGUMENT),
    (errors.FailedPrecondition("not now"), grpc.StatusCode.FAILED_PRECONDITION),
    (errors.AlreadyExists("name held"), grpc.StatusCode.ALREADY_EXISTS),
    (errors.ResourceExhausted("too big"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.DiskFull(), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.StartupRefused("lost database"), grpc.StatusCode.INTERNAL),
    (errors.HeadError("anything else"), grpc.StatusCode.INTERNAL),
])
def test_every_refusal_has_its_status_code(error: errors.HeadError, code: grpc.StatusCode) -> None:
    assert status_code(error) is code
