"""Node enrollment: join tokens, signing a node's CSR, approving and removing nodes.

A join token (created by an admin, or by the local provider for an agent it starts) is good for `uses` enrollments
until it expires. An enrollment signs the CSR's key into a certificate bound to the node's name; the name stays
bound to that key until an admin removes the node, so another key can never take it over. The capacity a node
advertises is bounded by the head's `node_max_*` settings, at enrollment and at every Hello.
Must not: decode protobuf (the servicers do), or decide anything about runs (removing a node hands its runs to
the reactor as a NodeLeft).
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass

from cryptography import x509

from runyard import pki
from scheduler.auth import Credentials, new_id, new_token, token_sha
from scheduler.core.react import NodeLeft
from scheduler.errors import InvalidArgument, NotFound, shown
from scheduler.model import Capacity, NodeKey, NodeRecord
from scheduler.reactor import Reactor
from scheduler.sessions import CLOSE, Sessions
from scheduler.store import Store
from scheduler.tls import HeadTLS

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")
MAX_JOIN_USES = 10_000
MAX_JOIN_TTL_S = 30 * 86400.0


@dataclass(frozen=True, slots=True)
class Limits:
    cpus: float
    memory_bytes: int
    gpus: int


@dataclass(frozen=True, slots=True)
class Enrolled:
    node: NodeRecord
    certificate: bytes
    approved: bool


@dataclass(frozen=True, slots=True)
class JoinToken:
    id: str
    secret: str
    expires_at: float


class Enrollment:
    def __init__(self, *, store: Store, credentials: Credentials, tls: HeadTLS, sessions: Sessions, reactor: Reactor,
                 limits: Limits, require_approval: bool) -> None:
        self._store = store
        self._credentials = credentials
        self._tls = tls
        self._sessions = sessions
        self._reactor = reactor
        self._limits = limits
        self._require_approval = require_approval

    async def create_join_token(self, *, uses: int, ttl_s: float, created_by: str) -> JoinToken:
        if not 1 <= uses <= MAX_JOIN_USES:
            raise InvalidArgument(f"a join token's uses must be 1 to {MAX_JOIN_USES}")
        if not 0 < ttl_s <= MAX_JOIN_TTL_S:
            raise InvalidArgument(f"a join token's TTL must be over 0 and at most {MAX_JOIN_TTL_S / 86400:.0f} days")
        secret, token_id = new_token(), new_id("join")
        expires_at = self._store.clock() + ttl_s
        await self._store.add_join_token(token_id, token_sha(secret), uses=uses, expires_at=expires_at,
                                         created_by=created_by)
        self._credentials.set_join_token(token_sha(secret), expires_at, uses)
        log.info("join token created", extra={"id": token_id, "uses": uses, "by": created_by})
        return JoinToken(token_id, secret, expires_at)

    def check_capacity(self, name: str, capacity: Capacity) -> None:
        over = [f"{what} {have:g} (at most {most:g})" for what, have, most in (
            ("cpus", capacity.cpus, self._limits.cpus),
            ("memory bytes", capacity.memory_bytes, self._limits.memory_bytes),
            ("GPUs", len(capacity.gpus), self._limits.gpus)) if have > most]
        if over:
            raise InvalidArgument(f"node {shown(name)} advertises more than this cluster allows a node: "
                                  f"{', '.join(over)}; an admin raises node_max_* in the head config")

    async def enroll(self, *, join_sha: str, name: str, cluster: str, labels: dict[str, str], capacity: Capacity,
                     csr_pem: bytes) -> Enrolled:
        if not _NAME.match(name):
            raise InvalidArgument("a node name is 1 to 253 letters, digits, '.', '_' or '-', starting with a letter "
                                  "or digit")
        self.check_capacity(name, capacity)
        try:
            csr = pki.load_csr(csr_pem)
        except pki.CertificateError as err:
            raise InvalidArgument(str(err)) from None
        certificate = pki.sign_node(self._tls.ca, csr, name)
        serial = format(x509.load_pem_x509_certificate(certificate).serial_number, "x")
        key_sha = pki.key_id(csr)
        node, key, uses_left = await self._store.enroll(
            join_sha=join_sha, node_id=hashlib.sha256(name.encode()).hexdigest()[:16], name=name,
            key_sha256=key_sha, cert_serial=serial, cluster=cluster or "default", labels=labels, capacity=capacity,
            approved=not self._require_approval)
        if uses_left <= 0:
            self._credentials.set_join_token(join_sha, 0.0, 0)
        self._credentials.set_node(key)
        previous = self._sessions.get(node.id)
        if previous is not None:
            previous.outbox.put_nowait(CLOSE)     # the same key enrolled again: its old stream ends
        self._sessions.remember(node)
        log.info("node enrolled", extra={"node": name, "node_id": node.id, "approved": key.approved})
        return Enrolled(node, certificate, key.approved)

    async def approve(self, name: str) -> NodeKey:
        key = await self._store.approve_node(name)
        self._credentials.set_node(key)
        log.info("node approved", extra={"node": name})
        return key

    async def remove(self, name: str) -> str:
        """Revoke the node's certificate and free its name; its runs are handled as on a node that left."""
        node = next((n for n in await self._store.list_nodes() if n.name == name), None)
        if node is None:
            raise NotFound(f"no node {shown(name)}")
        self._credentials.drop_node(name)
        await self._store.forget_node_key(name)
        session = self._sessions.get(node.id)
        if session is not None:
            session.outbox.put_nowait(CLOSE)
        await self._reactor.handle(NodeLeft(node.id, "an admin removed the node"))
        log.info("node removed", extra={"node": name})
        return node.id
