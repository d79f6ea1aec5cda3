"""Who may call the head: workspaces, users' tokens, join tokens, the keys nodes enrolled with, and the audit trail.

Tokens are stored as sha256 digests only. A node is bound to the public key of its first enrollment (`enroll`);
only `remove_node` frees its name for another key.
Must not: see a token in clear, sign a certificate or check a credential (that is `auth.py`), or know about gRPC.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from scheduler.core.nodes import NodeState, NodeTrigger, next_node_state
from scheduler.errors import AlreadyExists, NotFound, Unauthenticated, shown
from scheduler.group_commit import Effects
from scheduler.model import AuditRecord, Capacity, NodeKey, NodeRecord, Role, TokenRecord
from scheduler.store.base import _NODE_COLUMNS, StoreBase, _insert_audit, _node
from scheduler.store.nodes import _node_event, _NodeCache

_TOKEN_COLUMNS = "id, name, workspace, role, created_at, expires_at, revoked_at, created_by, sha256"


def _token(row: Any) -> TokenRecord:
    return TokenRecord(row[0], row[1], row[2], Role(row[3]), row[4], row[5], row[6], row[7], row[8])


class KeyMismatch(AlreadyExists):
    """The node name is enrolled with another key."""


class CredentialStore(StoreBase):
    """Workspaces, tokens, node keys and the audit trail; part of `Store`."""

    _node_cache: _NodeCache

    # --- workspaces -------------------------------------------------------------------------------------------

    async def ensure_workspace(self, name: str) -> None:
        def work(w: sqlite3.Connection, effects: Effects) -> None:
            w.execute("INSERT OR IGNORE INTO workspaces (name, created_at) VALUES (?, ?)", (name, self.clock()))
        await self._write(work)

    async def create_workspace(self, name: str) -> float:
        def work(w: sqlite3.Connection, effects: Effects) -> float:
            if w.execute("SELECT 1 FROM workspaces WHERE name = ?", (name,)).fetchone():
                raise AlreadyExists(f"workspace {shown(name)} exists")
            now = self.clock()
            w.execute("INSERT INTO workspaces (name, created_at) VALUES (?, ?)", (name, now))
            return now
        return await self._write(work)

    async def list_workspaces(self) -> list[tuple[str, float, int, int]]:
        """(name, created_at, live tokens, runs) of every workspace, by name."""
        return [tuple(r) for r in await self._all(
            "SELECT w.name, w.created_at, "
            "(SELECT COUNT(*) FROM tokens t WHERE t.workspace = w.name AND t.revoked_at = 0), "
            "(SELECT COUNT(*) FROM runs r WHERE r.workspace = w.name) FROM workspaces w ORDER BY w.name")]

    # --- users' tokens ----------------------------------------------------------------------------------------

    async def add_token(self, token: TokenRecord, *, create_workspace: bool = False) -> None:
        """Store a token (by its sha256). NotFound if its workspace does not exist, unless `create_workspace`."""
        def work(w: sqlite3.Connection, effects: Effects) -> None:
            if create_workspace:
                w.execute("INSERT OR IGNORE INTO workspaces (name, created_at) VALUES (?, ?)",
                          (token.workspace, self.clock()))
            elif not w.execute("SELECT 1 FROM workspaces WHERE name = ?", (token.workspace,)).fetchone():
                raise NotFound(f"no workspace {shown(token.workspace)}; create it with `runyard workspace create`")
            w.execute(
                f"INSERT OR IGNORE INTO tokens ({_TOKEN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (token.id, token.name, token.workspace, str(token.role), token.created_at, token.expires_at,
                 token.revoked_at, token.created_by, token.sha256))
        await self._write(work)

    async def list_tokens(self, workspace: str = "") -> list[TokenRecord]:
        sql = f"SELECT {_TOKEN_COLUMNS} FROM tokens"
        args: tuple[str, ...] = ()
        if workspace:
            sql, args = sql + " WHERE workspace = ?", (workspace,)
        return [_token(r) for r in await self._all(sql + " ORDER BY created_at, id", args)]

    async def revoke_token(self, token_id: str) -> TokenRecord:
        """Revoke a token by id (a revoked one stays revoked, with its first revocation time)."""
        def work(w: sqlite3.Connection, effects: Effects) -> TokenRecord:
            w.execute("UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at = 0", (self.clock(), token_id))
            row = w.execute(f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE id = ?", (token_id,)).fetchone()
            if row is None:
                raise NotFound(f"no token {shown(token_id)}; `runyard token list` shows the ids")
            return _token(row)
        return await self._write(work)

    # --- join tokens and node enrollment ----------------------------------------------------------------------

    async def add_join_token(self, token_id: str, sha256: str, *, uses: int, expires_at: float, created_by: str) -> None:
        def work(w: sqlite3.Connection, effects: Effects) -> None:
            w.execute("INSERT INTO join_tokens (id, sha256, uses_left, expires_at, created_at, created_by) "
                      "VALUES (?, ?, ?, ?, ?, ?)", (token_id, sha256, uses, expires_at, self.clock(), created_by))
        await self._write(work)

    async def join_tokens(self) -> dict[str, float]:
        """sha256 -> expiry of every join token with a use left that has not expired."""
        rows = await self._all("SELECT sha256, expires_at FROM join_tokens WHERE uses_left > 0 AND expires_at > ?",
                               (self.clock(),))
        return {sha: expires_at for sha, expires_at in rows}

    async def enroll(self, *, join_sha: str, node_id: str, name: str, key_sha256: str, cert_serial: str, cluster: str,
                     labels: dict[str, str], capacity: Capacity, approved: bool) -> tuple[NodeRecord, NodeKey, int]:
        """Spend one use of the join token and bind `name` to the key, in one transaction; returns the node, its
        key record and the token's uses left. A name bound to another key raises KeyMismatch; the key it is bound to may enroll again (a new
        certificate, e.g. after a lost reply). Unauthenticated if the token is spent, expired or unknown."""
        now = self.clock()

        def work(w: sqlite3.Connection, effects: Effects) -> tuple[NodeRecord, NodeKey, int]:
            token = w.execute("SELECT uses_left, expires_at FROM join_tokens WHERE sha256 = ?", (join_sha,)).fetchone()
            if token is None:
                raise Unauthenticated("invalid join token")
            if token[0] <= 0:
                raise Unauthenticated("the join token has no use left; create one with `runyard node token create`")
            if token[1] <= now:
                raise Unauthenticated("the join token expired; create one with `runyard node token create`")
            row = w.execute("SELECT id, state, key_sha256, approved FROM nodes WHERE name = ?", (name,)).fetchone()
            if row is not None and row[2] and row[2] != key_sha256:
                raise KeyMismatch(f"node name {shown(name)} is enrolled with another key; refused. An admin frees "
                                  "the name with `runyard node remove`")
            found, source = (row[0], NodeState(row[1])) if row is not None else (node_id, NodeState.JOINING)
            still_approved = approved or bool(row is not None and row[2] == key_sha256 and row[3])
            target = next_node_state(name, source, NodeTrigger.JOIN)
            w.execute("UPDATE join_tokens SET uses_left = uses_left - 1 WHERE sha256 = ?", (join_sha,))
            w.execute(
                "INSERT INTO nodes (id, name, key_sha256, cert_serial, approved, cluster, labels, capacity, state, "
                "last_seen, joined_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                "key_sha256 = excluded.key_sha256, cert_serial = excluded.cert_serial, approved = excluded.approved, "
                "cluster = excluded.cluster, labels = excluded.labels, capacity = excluded.capacity, "
                "state = excluded.state, last_seen = excluded.last_seen",
                (found, name, key_sha256, cert_serial, int(still_approved), cluster, json.dumps(labels),
                 capacity.to_json(), target, now, now),
            )
            _node_event(w, found, now, "" if row is None else source, target, NodeTrigger.JOIN,
                        f"cluster {cluster}" + ("" if still_approved else "; waiting for `runyard node approve`"))
            effects.append(self._node_cache.changed)
            node = _node(w.execute(f"SELECT {_NODE_COLUMNS} FROM nodes WHERE id = ?", (found,)).fetchone())
            return node, NodeKey(found, name, key_sha256, cert_serial, still_approved), token[0] - 1
        return await self._write(work)

    async def node_keys(self) -> list[NodeKey]:
        return [NodeKey(i, n, k, s, bool(a)) for i, n, k, s, a in await self._all(
            "SELECT id, name, key_sha256, cert_serial, approved FROM nodes WHERE key_sha256 != ''")]

    async def approve_node(self, name: str) -> NodeKey:
        def work(w: sqlite3.Connection, effects: Effects) -> NodeKey:
            row = w.execute("SELECT id, key_sha256, cert_serial, approved FROM nodes WHERE name = ?", (name,)).fetchone()
            if row is None or not row[1]:
                raise NotFound(f"no enrolled node {shown(name)}")
            if row[3]:
                raise AlreadyExists(f"node {shown(name)} is already approved")
            w.execute("UPDATE nodes SET approved = 1 WHERE id = ?", (row[0],))
            _node_event(w, row[0], self.clock(), "", "", "approve", "an admin approved it")
            effects.append(self._node_cache.changed)
            return NodeKey(row[0], name, row[1], row[2], True)
        return await self._write(work)

    async def forget_node_key(self, name: str) -> str:
        """Unbind a node's name from its key and revoke its certificate; returns its id. NotFound if unknown."""
        def work(w: sqlite3.Connection, effects: Effects) -> str:
            row = w.execute("SELECT id FROM nodes WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise NotFound(f"no node {shown(name)}")
            w.execute("UPDATE nodes SET key_sha256 = '', cert_serial = '', approved = 1 WHERE id = ?", (row[0],))
            _node_event(w, row[0], self.clock(), "", "", "remove", "an admin removed it; its certificate is revoked")
            effects.append(self._node_cache.changed)
            return str(row[0])
        return await self._write(work)

    # --- snapshots per workspace ------------------------------------------------------------------------------

    async def grant_snapshot(self, sha256: str, workspace: str) -> None:
        def work(w: sqlite3.Connection, effects: Effects) -> None:
            w.execute("INSERT OR IGNORE INTO snapshot_workspaces (sha256, workspace) VALUES (?, ?)", (sha256, workspace))
        await self._write(work)

    async def snapshot_visible(self, sha256: str, workspace: str) -> bool:
        return await self._one("SELECT 1 FROM snapshot_workspaces WHERE sha256 = ? AND workspace = ?",
                               (sha256, workspace)) is not None

    # --- audit ------------------------------------------------------------------------------------------------

    async def audit(self, entry: AuditRecord) -> None:
        def work(w: sqlite3.Connection, effects: Effects) -> None:
            _insert_audit(w, entry, entry.target)
        await self._write(work)

    async def list_audit(self, *, since: float = 0.0, user: str = "", limit: int = 100) -> list[AuditRecord]:
        sql = "SELECT at, user, workspace, method, target, peer, code, id FROM audit WHERE at >= ?"
        args: list[Any] = [since]
        if user:
            sql += " AND user = ?"
            args.append(user)
        rows = await self._all(sql + " ORDER BY id DESC LIMIT ?", [*args, limit])
        return [AuditRecord(*r) for r in reversed(rows)]
