"""Opening the head's SQLite database: pragmas, migrations, and the refusal to start on a lost database.

The schema lives in `sql/schema.sql` (fresh databases) and `sql/migrations/NNNN_*.sql` (upgrades); a test
proves that the migrations end at exactly the fresh schema. `PRAGMA user_version` is the applied migration.
Must not: hold queries of the store (that is the `store` package).
"""

from __future__ import annotations

import logging
import os
import secrets
from importlib import resources
from pathlib import Path
from typing import Any

import aiosqlite

from scheduler.errors import StartupRefused

log = logging.getLogger(__name__)

_SQL = resources.files("scheduler") / "sql"
MARKER = "cluster.id"


def migrations() -> list[tuple[int, str]]:
    """(version, sql) of every migration, in order."""
    found = []
    for entry in (_SQL / "migrations").iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text()))
    return sorted(found)


def fresh_schema() -> str:
    return (_SQL / "schema.sql").read_text()


async def _configure(conn: aiosqlite.Connection, synchronous: str) -> None:
    await conn.execute("PRAGMA journal_mode=WAL")
    await conn.execute(f"PRAGMA synchronous={synchronous}")
    await conn.execute("PRAGMA foreign_keys=ON")
    await conn.execute("PRAGMA busy_timeout=5000")


async def _scalar(conn: aiosqlite.Connection, sql: str) -> Any:
    """The one value of a query that always returns one row (a pragma, a count)."""
    async with conn.execute(sql) as cur:
        row = await cur.fetchone()
    if row is None:
        raise RuntimeError(f"no row from {sql!r}")
    return row[0]


async def migrate(conn: aiosqlite.Connection) -> int:
    """Bring the database to the latest version; returns the version."""
    latest = migrations()[-1][0]
    version = await _scalar(conn, "PRAGMA user_version")
    if version > latest:
        raise StartupRefused(
            f"the database is at schema version {version}, newer than this head knows ({latest}); "
            "run the newer runyard-head"
        )
    if version == 0:
        if await _scalar(conn, "SELECT count(*) FROM sqlite_master") == 0:
            await conn.executescript(f"BEGIN; {fresh_schema()}; PRAGMA user_version={latest}; COMMIT;")
            return latest
    for number, sql in migrations():
        if number > version:
            log.info("applying migration", extra={"version": number})
            await conn.executescript(f"BEGIN; {sql}; PRAGMA user_version={number}; COMMIT;")
    return latest


def _private(data_dir: Path, path: Path) -> None:
    """The data directory 0700 and the database 0600 (SQLite gives its -wal and -shm files the database's mode)."""
    os.chmod(data_dir, 0o700)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    os.chmod(path, 0o600)


async def open_database(data_dir: Path, *, synchronous: str = "FULL") -> tuple[aiosqlite.Connection, str]:
    """Open (creating on first start) the database; returns the connection and the cluster id.

    Once a data dir was initialised (its marker file exists), a missing or foreign database is refused: the head
    never starts empty by accident.
    """
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = data_dir / "runyard.db"
    marker = data_dir / MARKER
    if marker.exists() and not path.exists():
        raise StartupRefused(
            f"{path} is missing but {marker} says this cluster was initialised; restore the database "
            f"or remove {marker} to start an empty cluster"
        )
    _private(data_dir, path)
    conn = await aiosqlite.connect(path, isolation_level=None)
    try:
        await _configure(conn, synchronous)
        await migrate(conn)
        cluster_id = await _cluster_id(conn, marker)
    except aiosqlite.DatabaseError as err:
        await conn.close()
        raise StartupRefused(f"{path} is not a usable database ({err}); restore it from a backup") from None
    except BaseException:
        await conn.close()
        raise
    return conn, cluster_id


async def _cluster_id(conn: aiosqlite.Connection, marker: Path) -> str:
    async with conn.execute("SELECT value FROM meta WHERE key = 'cluster_id'") as cur:
        row = await cur.fetchone()
    if row is None:
        if marker.exists():
            raise StartupRefused(f"the database has no cluster id but {marker} exists; restore the database")
        cluster_id = secrets.token_hex(8)
        await conn.execute("INSERT INTO meta (key, value) VALUES ('cluster_id', ?)", (cluster_id,))
        marker.write_text(cluster_id + "\n")
        return cluster_id
    cluster_id = row[0]
    if marker.exists() and marker.read_text().strip() != cluster_id:
        raise StartupRefused(f"the database belongs to cluster {cluster_id}, not to the one in {marker}")
    if not marker.exists():
        marker.write_text(cluster_id + "\n")
    return cluster_id


async def open_reader(data_dir: Path) -> aiosqlite.Connection:
    """A second connection for reads; WAL lets it read while the writer commits."""
    conn = await aiosqlite.connect(f"file:{data_dir / 'runyard.db'}?mode=ro", uri=True, isolation_level=None)
    await conn.execute("PRAGMA busy_timeout=5000")
    return conn
