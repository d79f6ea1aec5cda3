"""The head's gRPC boundary: who is calling and may they, then decoding, then domain errors -> status codes, then
the audit trail. One interceptor does all of it, in that order, for every method.

Every method has a rule in RULES (a method without one is refused, so a new RPC cannot slip through unguarded):
- `Runyard` methods take a user's token (`authorization: Bearer <token>`) whose role allows the method
  (viewer < user < admin, `model.Role`); a revoked or expired token is refused, saying so;
- `NodeAgent/Join` takes a join token with a use left; the servicer spends the use and signs the node's CSR;
- the rest of `NodeAgent` takes the node's certificate, verified by TLS on the node port (mTLS), bound to a
  node name whose current certificate serial it must carry; a node waiting for approval may not act yet.
The caller is authenticated from the call's metadata and TLS peer before a byte of its message is decoded; a
message that does not decode is INVALID_ARGUMENT without internal names. A refusal is logged with the method and
the reason and answered UNAUTHENTICATED (no valid credential) or PERMISSION_DENIED (a valid one that may not).
Mutating calls are appended to the audit table with their outcome.

Servicers read the caller with `caller()`, set by the interceptor for the duration of the call.
"""

from __future__ import annotations

import contextvars
import errno
import hashlib
import inspect
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import grpc
from cryptography import x509

from runyard import pki
from scheduler.core.lifecycle import InvalidTransition
from scheduler.errors import (
    AlreadyExists, DiskFull, FailedPrecondition, HeadError, InvalidArgument, NotFound, PermissionDenied,
    ResourceExhausted, Unauthenticated,
)
from scheduler.model import NODE_ROLE, AuditRecord, NodeKey, Principal, Role, TokenRecord

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
JOIN = "join"


@dataclass(frozen=True, slots=True)
class Rule:
    needs: Role | str       # a user's Role, NODE_ROLE, or JOIN
    mutates: bool = False   # written to the audit trail
    audited_by_call: bool = False   # its success is audited in the call's own transaction (Submit: no 2nd commit)


_RUNYARD = "/runyard.v1.Runyard/"
_NODE_AGENT = "/runyard.v1.NodeAgent/"
RULES: dict[str, Rule] = {
    **{_RUNYARD + m: Rule(Role.VIEWER) for m in (
        "GetRun", "ListRuns", "ListQueue", "StreamLogs", "GetMetrics", "ListNodes", "GetNode", "Download", "WhoAmI",
        "ListEnvironments", "GetEnvironment", "ListExperiments", "SearchLogs", "GetUsage")},
    _RUNYARD + "HasSnapshot": Rule(Role.USER),
    **{_RUNYARD + m: Rule(Role.USER, mutates=True) for m in (
        "UploadSnapshot", "Cancel", "CreateEnvironment", "BuildEnvironment")},
    _RUNYARD + "Submit": Rule(Role.USER, mutates=True, audited_by_call=True),
    **{_RUNYARD + m: Rule(Role.ADMIN) for m in ("ListWorkspaces", "ListTokens", "ListAudit")},
    **{_RUNYARD + m: Rule(Role.ADMIN, mutates=True) for m in (
        "SetNodeSchedule", "CreateWorkspace", "CreateToken", "RevokeToken", "CreateJoinToken", "RemoveNode",
        "ApproveNode")},
    _NODE_AGENT + "Join": Rule(JOIN, mutates=True),
    **{_NODE_AGENT + m: Rule(NODE_ROLE) for m in ("Connect", "FetchSnapshot", "UploadOutputs")},
}


def token_sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(6)}"


def status_code(err: HeadError) -> grpc.StatusCode:
    """The gRPC status code a refusal is answered with."""
    return next(_CODES[kind] for kind in type(err).__mro__ if kind in _CODES)


def caller() -> Principal:
    """The authenticated caller of the current call."""
    return _caller.get()


def audit_entry(method: str, context: grpc.aio.ServicerContext, now: float, *, principal: Principal | None = None,
                target: str = "", code: str = "OK") -> AuditRecord:
    """The audit row of a call by `principal` (default: the current caller). A call that writes its success in its
    own transaction leaves `target` to that transaction."""
    me = principal or caller()
    return AuditRecord(at=now, user=me.user, workspace=me.workspace, method=method.rsplit("/", 1)[-1], target=target,
                       peer=context.peer(), code=code)


@lru_cache(maxsize=1024)
def _node_certificate(pem: bytes) -> tuple[str, str]:
    """(node name, serial) of a PEM node certificate; ("", "") when it is not one."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return "", ""
    return pki.node_name_of(cert), format(cert.serial_number, "x")


class Credentials:
    """Every valid credential, in memory: users' tokens by digest, join tokens with a use left, and the node
    certificates by name. Loaded from the store at start; kept current by the servicers that change them."""

    def __init__(self, *, tokens: list[TokenRecord], join_tokens: dict[str, float], node_keys: list[NodeKey],
                 now: Callable[[], float]) -> None:
        self._tokens = {t.sha256: t for t in tokens}
        self._join = dict(join_tokens)
        self._nodes = {k.name: k for k in node_keys}
        self._now = now

    def add_token(self, token: TokenRecord) -> None:
        self._tokens[token.sha256] = token

    def set_join_token(self, sha: str, expires_at: float, uses_left: int) -> None:
        if uses_left > 0:
            self._join[sha] = expires_at
        else:
            self._join.pop(sha, None)

    def set_node(self, key: NodeKey) -> None:
        self._nodes[key.name] = key

    def drop_node(self, name: str) -> None:
        self._nodes.pop(name, None)

    def check(self, rule: Rule, token: str, peer_cert: bytes | None) -> Principal:
        if rule.needs == NODE_ROLE:
            return self._node(peer_cert)
        if not token:
            raise Unauthenticated("no token: set RUNYARD_TOKEN, or `runyard login` (`runyard up` writes a config)")
        sha = token_sha(token)
        if rule.needs == JOIN:
            expires_at = self._join.get(sha)
            if expires_at is None:
                raise Unauthenticated("invalid join token, or it has no use left")
            if expires_at <= self._now():
                raise Unauthenticated("the join token expired; create one with `runyard node token create`")
            return Principal("", JOIN, user="join token", token_id=sha)   # the servicer spends a use of it
        found = self._tokens.get(sha)
        if found is None:
            raise Unauthenticated("invalid token: check RUNYARD_TOKEN or the token in your runyard config")
        if found.revoked_at:
            raise Unauthenticated(f"token {found.id} was revoked; ask an admin for a new one")
        if found.expires_at and found.expires_at <= self._now():
            raise Unauthenticated(f"token {found.id} expired; ask an admin for a new one")
        assert isinstance(rule.needs, Role)
        if not found.role.allows(rule.needs):
            raise PermissionDenied(f"a {found.role} token may not do this; it needs the {rule.needs} role")
        return Principal(found.workspace, found.role, user=found.name, token_id=found.id)

    def _node(self, peer_cert: bytes | None) -> Principal:
        if not peer_cert:
            raise Unauthenticated("node calls need the node's certificate (mTLS on the head's node port)")
        name, serial = _node_certificate(peer_cert)
        key = self._nodes.get(name) if name else None
        if key is None or key.cert_serial != serial:
            raise Unauthenticated("this node certificate was revoked or replaced; enroll the node again")
        if not key.approved:
            raise PermissionDenied(f"node {name!r} waits for an admin: `runyard node approve {name}`")
        return Principal("", NODE_ROLE, node_id=key.node_id, user=name)


def _token(metadata: tuple[tuple[str, Any], ...] | None) -> str:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer "):].strip()
    return ""


def _peer_cert(context: grpc.aio.ServicerContext) -> bytes | None:
    certs = list((context.auth_context() or {}).get("x509_pem_cert") or ())
    return certs[0] if certs else None


def _target(request: Any, response: Any) -> str:
    """What a mutating call acted on, for the audit trail: the first id-like field of its reply or request."""
    for message in (response, request):
        for field in ("run_id", "run_ids", "sha256", "id", "name", "node", "workspace", "ref"):
            value: Any = getattr(message, field, None)
            if isinstance(value, str) and value:
                version: Any = getattr(message, "version", "")     # an environment: NAME:VERSION
                return (f"{value}:{version}" if field == "name" and isinstance(version, str) and version
                        else value)[:200]
            if value is not None and not isinstance(value, str) and len(value):
                return ",".join(list(value)[:20])[:200]
        token: Any = getattr(message, "token", None)
        if token is not None and token.id:
            return str(token.id)
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


def _decoder(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
    def decode(raw: bytes) -> Any:
        if deserialize is None:
            return raw
        try:
            return deserialize(raw)
        except Exception:
            raise InvalidArgument("the request could not be decoded; is the client of this head's version?") from None
    return decode


Audit = Callable[[AuditRecord], Awaitable[None]]


class Boundary(grpc.aio.ServerInterceptor):
    """Authenticates and authorizes every call before decoding it, maps domain errors to gRPC status codes, and
    audits mutating calls."""

    def __init__(self, credentials: Credentials, *, audit: Audit, now: Callable[[], float]) -> None:
        self._credentials = credentials
        self._audit = audit
        self._now = now

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method
        rule = RULES.get(method)
        token = _token(details.invocation_metadata)
        return _rebuild(handler, lambda behavior, decode, streams_in: self._guard(
            method, rule, token, behavior, decode, streams_in))

    def _authenticate(self, method: str, rule: Rule | None, token: str,
                      context: grpc.aio.ServicerContext) -> Principal:
        if rule is None:
            raise PermissionDenied("this method has no access rule; refused")
        try:
            return self._credentials.check(rule, token, _peer_cert(context))
        except HeadError as err:
            log.warning("refused call", extra={"method": method, "why": str(err), "peer": context.peer()})
            raise

    async def _record(self, method: str, rule: Rule | None, principal: Principal, context: grpc.aio.ServicerContext,
                      request: Any, response: Any, code: str) -> None:
        if rule is None or not rule.mutates:
            return
        entry = audit_entry(method, context, self._now(), principal=principal, target=_target(request, response),
                            code=code)
        try:
            await self._audit(entry)
        except Exception:
            log.exception("writing the audit trail failed", extra={"method": method})

    def _guard(self, method: str, rule: Rule | None, token: str, behavior: Callable[..., Any],
               decode: Callable[[bytes], Any], streaming_in: bool) -> Callable[..., Any]:

        async def start(raw: Any, context: grpc.aio.ServicerContext) -> tuple[Principal, Any]:
            principal = self._authenticate(method, rule, token, context)
            _caller.set(principal)
            if streaming_in:
                return principal, _decoded(raw, decode)
            return principal, decode(raw)

        if inspect.isasyncgenfunction(behavior):
            async def stream(raw: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    principal, request = await start(raw, context)
                    async for item in behavior(request, context):
                        yield item
                except (HeadError, InvalidTransition, OSError) as err:
                    await _abort(context, err)
            return stream

        async def unary(raw: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                principal, request = await start(raw, context)
            except (HeadError, OSError) as err:
                await _abort(context, err)
            try:
                response = await behavior(request, context)
            except (HeadError, InvalidTransition, OSError) as err:
                code = status_code(err).name if isinstance(err, HeadError) else type(err).__name__
                await self._record(method, rule, principal, context, request if not streaming_in else None, None, code)
                await _abort(context, err)
            if rule is not None and not rule.audited_by_call:
                await self._record(method, rule, principal, context, request if not streaming_in else None, response,
                                   "OK")
            return response
        return unary


async def _decoded(raw_messages: AsyncIterator[bytes], decode: Callable[[bytes], Any]) -> AsyncIterator[Any]:
    async for raw in raw_messages:
        yield decode(raw)


def _rebuild(handler: grpc.RpcMethodHandler,
             make: Callable[[Any, Callable[[bytes], Any], bool], Any]) -> grpc.RpcMethodHandler:
    """The same method with raw bytes in (decoded by the guard, after authentication) and `make`'s behavior."""
    kinds = (
        ("unary_unary", grpc.unary_unary_rpc_method_handler, False),
        ("unary_stream", grpc.unary_stream_rpc_method_handler, False),
        ("stream_unary", grpc.stream_unary_rpc_method_handler, True),
        ("stream_stream", grpc.stream_stream_rpc_method_handler, True),
    )
    for attribute, factory, streams_in in kinds:
        behavior = getattr(handler, attribute)
        if behavior is not None:
            return factory(make(behavior, _decoder(handler.request_deserializer), streams_in),
                           request_deserializer=None, response_serializer=handler.response_serializer)
    raise AssertionError("a method handler with no behavior")
