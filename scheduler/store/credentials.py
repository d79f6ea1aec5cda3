"""Who may call the head: workspaces and the tokens of users, and every credential by its token's sha256.

Tokens are stored as sha256 digests only. A node's credential lives on its `nodes` row (written by `join_node`);
`principals()` reads both.
Must not: see a token in clear, check a credential (that is `auth.py`), or know about gRPC.
"""

from __future__ import annotations

import sqlite3

from scheduler.group_commit import Effects
from scheduler.model import Principal
from scheduler.store.base import StoreBase


class CredentialStore(StoreBase):
    """Workspaces, tokens and principals; part of `Store`."""

    async def ensure_workspace(self, name: str) -> None:
        def work(w: sqlite3.Connection, effects: Effects) -> None:
            w.execute("INSERT OR IGNORE INTO workspaces (name, created_at) VALUES (?, ?)", (name, self.clock()))
        await self._write(work)

    async def add_token(self, token_sha: str, workspace: str, role: str) -> None:
        def work(w: sqlite3.Connection, effects: Effects) -> None:
            w.execute("INSERT OR IGNORE INTO workspaces (name, created_at) VALUES (?, ?)", (workspace, self.clock()))
            w.execute(
                "INSERT OR IGNORE INTO tokens (sha256, workspace, role, created_at) VALUES (?, ?, ?, ?)",
                (token_sha, workspace, role, self.clock()),
            )
        await self._write(work)

    async def principals(self) -> dict[str, Principal]:
        """Every credential by the sha256 of its token: users' and nodes'."""
        found = {sha: Principal(ws, role) for sha, ws, role in await self._all("SELECT sha256, workspace, role FROM tokens")}
        for node_id, sha in await self._all("SELECT id, token_sha FROM nodes"):
            found[sha] = Principal("", "node", node_id)
        return found
