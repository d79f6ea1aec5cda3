"""The head's gRPC boundary: who is calling, and domain errors -> status codes. One interceptor does both.

Every call carries `authorization: Bearer <token>`. There is no anonymous mode:
- `NodeAgent/Join` takes the cluster's join token;
- the rest of `NodeAgent` takes a node's own credential (issued by Join);
- `Runyard` (the client API) takes a user token of a workspace.
Tokens are kept only as sha256 digests. A refusal is logged with the method and peer and answered with
UNAUTHENTICATED (or PERMISSION_DENIED for a valid credential of the wrong kind).

Servicers read the caller with `caller()`, set by the interceptor for the duration of the call.
"""

from __future__ import annotations

import contextvars
import errno
import hashlib
import inspect
import logging
import secrets
from collections.abc import Callable
from typing import Any

import grpc

from scheduler.errors import (
    AlreadyExists, DiskFull, FailedPrecondition, HeadError, InvalidArgument, NotFound, PermissionDenied,
    ResourceExhausted, Unauthenticated,
)
from scheduler.core.lifecycle import InvalidTransition
from scheduler.model import Principal

log = logging.getLogger(__name__)

_caller: contextvars.ContextVar[Principal] = contextvars.ContextVar("caller")
# The status code of each kind of refusal (the tree is drawn in errors.py); a subclass takes its nearest ancestor's.
_CODES: dict[type[HeadError], grpc.StatusCode] = {
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    NotFound: grpc.StatusCode.NOT_FOUND,
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    HeadError: grpc.StatusCode.INTERNAL,
}
JOIN_METHOD = "/runyard.v1.NodeAgent/Join"
NODE_SERVICE = "/runyard.v1.NodeAgent/"


def token_sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


def status_code(err: HeadError) -> grpc.StatusCode:
    """The gRPC status code a refusal is answered with."""
    return next(_CODES[kind] for kind in type(err).__mro__ if kind in _CODES)


def caller() -> Principal:
    """The authenticated caller of the current call."""
    return _caller.get()


class Credentials:
    """The set of valid credentials, by token digest. Loaded from the store at start, grown by joins."""

    def __init__(self, principals: dict[str, Principal], join_token_sha: str) -> None:
        self._principals: dict[str, Principal] = {}
        self._node_shas: dict[str, set[str]] = {}     # node id -> digests of its credentials, so a rejoin is O(1)
        for sha, principal in principals.items():
            self.add(sha, principal)
        self._join_sha = join_token_sha

    def add(self, sha: str, principal: Principal) -> None:
        self._principals[sha] = principal
        if principal.node_id:
            self._node_shas.setdefault(principal.node_id, set()).add(sha)

    def forget_node(self, node_id: str) -> None:
        if not node_id:
            raise ValueError("forget_node needs a node id")
        for sha in self._node_shas.pop(node_id, set()):
            self._principals.pop(sha, None)

    def check(self, method: str, token: str) -> Principal:
        if not token:
            raise Unauthenticated("no token: set RUNYARD_TOKEN or run `runyard up` to write a config")
        sha = token_sha(token)
        if method == JOIN_METHOD:
            if not secrets.compare_digest(sha, self._join_sha):
                raise Unauthenticated("invalid join token")
            return Principal("", "joining")
        principal = self._principals.get(sha)
        if principal is None:
            raise Unauthenticated("invalid token: check RUNYARD_TOKEN or the token in your runyard config")
        wants_node = method.startswith(NODE_SERVICE)
        if wants_node != (principal.role == "node"):
            raise PermissionDenied("this credential is not valid for this API")
        return principal


def _token(metadata: tuple[tuple[str, Any], ...] | None) -> str:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer "):].strip()
    return ""


async def _abort(context: grpc.aio.ServicerContext, err: Exception) -> None:
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        log.warning("a write failed: the disk is full", extra={"error": str(err)})
        err = DiskFull()
    if isinstance(err, HeadError):
        await context.abort(status_code(err), str(err))
    if isinstance(err, InvalidTransition):
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(err))
    raise err


def _wrap(behavior: Callable[..., Any], principal: Principal) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(behavior):
        async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            _caller.set(principal)
            try:
                async for item in behavior(request, context):
                    yield item
            except (HeadError, InvalidTransition, OSError) as err:
                await _abort(context, err)
        return stream

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        _caller.set(principal)
        try:
            return await behavior(request, context)
        except (HeadError, InvalidTransition, OSError) as err:
            await _abort(context, err)
    return unary


def _refuse(err: HeadError) -> Callable[..., Any]:
    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(status_code(err), str(err))
    return refuse


class Boundary(grpc.aio.ServerInterceptor):
    """Authenticates every call and maps domain errors to gRPC status codes."""

    def __init__(self, credentials: Credentials) -> None:
        self._credentials = credentials

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method
        try:
            principal = self._credentials.check(method, _token(details.invocation_metadata))
        except HeadError as err:
            log.warning("refused call", extra={"method": method, "why": str(err)})
            return _rebuild(handler, lambda _: _refuse(err))
        return _rebuild(handler, lambda behavior: _wrap(behavior, principal))


def _rebuild(handler: grpc.RpcMethodHandler, make: Callable[[Any], Any]) -> grpc.RpcMethodHandler:
    kinds = (
        ("unary_unary", grpc.unary_unary_rpc_method_handler),
        ("unary_stream", grpc.unary_stream_rpc_method_handler),
        ("stream_unary", grpc.stream_unary_rpc_method_handler),
        ("stream_stream", grpc.stream_stream_rpc_method_handler),
    )
    for attribute, factory in kinds:
        behavior = getattr(handler, attribute)
        if behavior is not None:
            return factory(
                make(behavior),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
    raise AssertionError("a method handler with no behavior")
