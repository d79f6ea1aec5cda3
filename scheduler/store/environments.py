"""The store's registered environments: per workspace, and a version never changes once created.

`create_environment` is the one write. In one transaction it reads the name's versions, takes the next whole
number when no version is given (or the latest version, if that one has the same spec), and inserts. The same spec
again at an existing version returns that version as it is; another spec there is AlreadyExists. `latest` is
`envspec.latest`'s (numeric-aware: 10 after 9).
Must not: decide anything else, or know about gRPC.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from runyard import envspec
from scheduler.errors import AlreadyExists, NotFound, ResourceExhausted, shown
from scheduler.group_commit import Effects
from scheduler.model import EnvironmentRecord
from scheduler.store.base import StoreBase

MAX_PER_WORKSPACE = 10_000
_COLUMNS = "workspace, name, version, description, tags, spec, created_at, created_by"


def _environment(row: Sequence[Any]) -> EnvironmentRecord:
    return EnvironmentRecord(workspace=row[0], name=row[1], version=row[2], description=row[3],
                             tags=json.loads(row[4]), spec=envspec.from_dict(json.loads(row[5])), created_at=row[6],
                             created_by=row[7])


def _next_version(versions: Sequence[str]) -> str:
    return str(max((int(v) for v in versions if v.isdigit()), default=0) + 1)


class EnvironmentStore(StoreBase):
    """Registered environments; part of `Store`."""

    async def create_environment(self, new: EnvironmentRecord) -> tuple[EnvironmentRecord, bool]:
        """Register `new` (its `version` '' for the next one, `created_at` set here); returns the version stored and
        whether it was created. Raises AlreadyExists when the version exists with another spec."""
        def work(w: sqlite3.Connection, effects: Effects) -> tuple[EnvironmentRecord, bool]:
            rows = w.execute(f"SELECT {_COLUMNS} FROM environments WHERE workspace = ? AND name = ?",
                             (new.workspace, new.name)).fetchall()
            versions = {row[2]: _environment(row) for row in rows}
            wanted = new.version
            if not wanted:
                newest = versions.get(envspec.latest(versions))
                if newest is not None and newest.spec == new.spec:
                    return newest, False
                wanted = _next_version(list(versions))
            existing = versions.get(wanted)
            if existing is not None:
                if existing.spec == new.spec:
                    return existing, False
                raise AlreadyExists(
                    f"environment {new.name}:{wanted} exists with another spec, and versions never change; create "
                    f"version {_next_version(list(versions))} (or leave the version out)")
            count = w.execute("SELECT COUNT(*) FROM environments WHERE workspace = ?", (new.workspace,)).fetchone()[0]
            if count >= MAX_PER_WORKSPACE:
                raise ResourceExhausted(f"the workspace has {count:,} environment versions, the most it may have")
            stored = replace(new, version=wanted, created_at=self.clock())
            w.execute(
                f"INSERT INTO environments ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (stored.workspace, stored.name, stored.version, stored.description, json.dumps(stored.tags),
                 json.dumps(envspec.to_dict(stored.spec), separators=(",", ":")), stored.created_at,
                 stored.created_by))
            return stored, True
        return await self._write(work)

    async def list_environments(self, workspace: str) -> list[EnvironmentRecord]:
        """Every version of every environment of the workspace, by name, then version (oldest first)."""
        found = [_environment(r) for r in await self._all(
            f"SELECT {_COLUMNS} FROM environments WHERE workspace = ?", (workspace,))]
        return sorted(found, key=lambda e: (e.name, envspec.version_key(e.version), e.version))

    async def get_environment(self, workspace: str, name: str, version: str = "") -> EnvironmentRecord:
        """One version of an environment; its latest when `version` is ''. Raises NotFound."""
        rows = await self._all(f"SELECT {_COLUMNS} FROM environments WHERE workspace = ? AND name = ?",
                               (workspace, name))
        versions = {row[2]: _environment(row) for row in rows}
        if not versions:
            raise NotFound(f"no environment {shown(name)} in this workspace; `runyard env list` lists them")
        found = versions.get(version or envspec.latest(versions))
        if found is None:
            known = sorted(versions, key=envspec.version_key)
            raise NotFound(f"environment {shown(name)} has no version {shown(version)} "
                           f"(it has {', '.join(known[-10:])})")
        return found
