"""The admin half of the Runyard service: who am I, workspaces, users' tokens, node enrollment and the audit
trail. `RunyardService` inherits these methods; `auth.RULES` says which role each needs (admin, but WhoAmI).

A token's secret is returned once, by CreateToken; the head keeps its sha256 only.
Must not: check roles itself (the boundary did), or touch runs.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable

import grpc

from protos import runyard_pb2 as pb
from scheduler.auth import Credentials, caller, new_id, new_token, token_sha
from scheduler.convert import audit_to_pb, from_pb, to_pb, token_to_pb
from scheduler.enrollment import Enrollment
from scheduler.errors import InvalidArgument, NotFound, shown
from scheduler.model import Role, TokenRecord
from scheduler.store import Store
from scheduler.tls import HeadTLS

log = logging.getLogger(__name__)

_WORKSPACE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
_USER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,127}$")
MAX_TTL_S = 10 * 365 * 86400.0
AUDIT_PAGE = 1000


class AdminMethods:
    _store: Store
    _credentials: Credentials
    _enrollment: Enrollment
    _tls: HeadTLS
    _node_pb: Callable[[str], Awaitable[pb.Node]]      # RunyardService's: one node with its history

    async def WhoAmI(self, request: pb.WhoAmIRequest, context: grpc.aio.ServicerContext) -> pb.Identity:
        me = caller()
        return pb.Identity(workspace=me.workspace, role=to_pb(Role(me.role)), user=me.user, token_id=me.token_id,
                           ca_certificate=self._tls.ca.cert_pem)

    async def CreateWorkspace(self, request: pb.WorkspaceRef, context: grpc.aio.ServicerContext) -> pb.Workspace:
        if not _WORKSPACE.match(request.name):
            raise InvalidArgument("a workspace name is 1 to 63 lowercase letters, digits, '_', '.' or '-'")
        created_at = await self._store.create_workspace(request.name)
        log.info("workspace created", extra={"workspace": request.name, "by": caller().user})
        return pb.Workspace(name=request.name, created_at=created_at)

    async def ListWorkspaces(self, request: pb.ListWorkspacesRequest,
                             context: grpc.aio.ServicerContext) -> pb.ListWorkspacesResponse:
        return pb.ListWorkspacesResponse(workspaces=[
            pb.Workspace(name=name, created_at=at, tokens=tokens, runs=runs)
            for name, at, tokens, runs in await self._store.list_workspaces()])

    async def CreateToken(self, request: pb.CreateTokenRequest,
                          context: grpc.aio.ServicerContext) -> pb.CreateTokenResponse:
        role = from_pb(Role, request.role) or Role.USER
        workspace = request.workspace or caller().workspace
        name = request.name or f"{workspace}-{role}"
        if not _USER.match(name):
            raise InvalidArgument("a token's name (its user) is 1 to 128 letters, digits or '_.@+-'")
        if request.ttl_s < 0 or request.ttl_s > MAX_TTL_S:
            raise InvalidArgument("a token's TTL must be between 0 (no expiry) and ten years")
        secret, now = new_token(), self._store.clock()
        token = TokenRecord(id=new_id("tok"), name=name, workspace=workspace, role=role, created_at=now,
                            expires_at=now + request.ttl_s if request.ttl_s else 0.0, revoked_at=0.0,
                            created_by=caller().user, sha256=token_sha(secret))
        await self._store.add_token(token)
        self._credentials.add_token(token)
        log.info("token created", extra={"id": token.id, "workspace": workspace, "role": role, "by": caller().user})
        return pb.CreateTokenResponse(token=token_to_pb(token), secret=secret)

    async def ListTokens(self, request: pb.ListTokensRequest, context: grpc.aio.ServicerContext) -> pb.ListTokensResponse:
        return pb.ListTokensResponse(tokens=[token_to_pb(t) for t in await self._store.list_tokens(request.workspace)])

    async def RevokeToken(self, request: pb.TokenRef, context: grpc.aio.ServicerContext) -> pb.Token:
        if not request.id or len(request.id) > 64:
            raise NotFound(f"no token {shown(request.id)}")
        token = await self._store.revoke_token(request.id)
        self._credentials.add_token(token)          # now with its revocation time: refused, saying so
        log.info("token revoked", extra={"id": token.id, "by": caller().user})
        return token_to_pb(token)

    async def CreateJoinToken(self, request: pb.CreateJoinTokenRequest,
                              context: grpc.aio.ServicerContext) -> pb.CreateJoinTokenResponse:
        token = await self._enrollment.create_join_token(uses=request.uses or 1, ttl_s=request.ttl_s or 3600.0,
                                                         created_by=caller().user)
        return pb.CreateJoinTokenResponse(id=token.id, secret=token.secret, expires_at=token.expires_at,
                                          ca_fingerprint=self._tls.fingerprint)

    async def RemoveNode(self, request: pb.NodeRef, context: grpc.aio.ServicerContext) -> pb.Node:
        await self._enrollment.remove(request.node)
        return await self._node_pb(request.node)

    async def ApproveNode(self, request: pb.NodeRef, context: grpc.aio.ServicerContext) -> pb.Node:
        await self._enrollment.approve(request.node)
        return await self._node_pb(request.node)

    async def ListAudit(self, request: pb.AuditRequest, context: grpc.aio.ServicerContext) -> pb.AuditResponse:
        entries = await self._store.list_audit(since=request.since, user=request.user,
                                               limit=min(request.limit or 100, AUDIT_PAGE))
        return pb.AuditResponse(entries=[audit_to_pb(e) for e in entries])
