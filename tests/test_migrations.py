"""The migrations end at exactly the fresh schema, so an upgraded head and a new one have the same database."""

from __future__ import annotations

import re
import sqlite3
import stat
from pathlib import Path

import aiosqlite

from scheduler import db

Schema = list[tuple[str, str, str, str]]


def schema_of(conn: sqlite3.Connection) -> Schema:
    rows = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name").fetchall()
    return [(kind, name, table, _normalise(sql)) for kind, name, table, sql in rows]


def _normalise(sql: str | None) -> str:
    # Whitespace carries no meaning in SQL; `ALTER TABLE ... ADD COLUMN` and hand-written DDL differ only in it.
    return re.sub(r"\s+", " ", sql or "").strip()


def user_version(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA user_version").fetchone()[0]


def migrated(path: Path, upto: int | None = None) -> sqlite3.Connection:
    """A database built by applying the migrations in order, each recording its number like `db.migrate` does."""
    conn = sqlite3.connect(path, isolation_level=None)
    for number, sql in db.migrations():
        if upto is not None and number > upto:
            break
        conn.executescript(f"BEGIN; {sql}; PRAGMA user_version={number}; COMMIT;")
    return conn


def fresh(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(db.fresh_schema())
    return conn


def test_migrations_are_numbered_one_by_one() -> None:
    numbers = [number for number, _ in db.migrations()]
    assert numbers == list(range(1, len(numbers) + 1))


def test_migrations_end_at_the_fresh_schema(tmp_path: Path) -> None:
    upgraded = migrated(tmp_path / "migrated.db")
    new = fresh(tmp_path / "fresh.db")
    try:
        upgraded_schema, fresh_schema = schema_of(upgraded), schema_of(new)
        assert upgraded_schema, "the migrations created nothing"
        assert upgraded_schema == fresh_schema, "schema.sql and sql/migrations disagree; update both"
    finally:
        upgraded.close()
        new.close()


async def test_migrate_sets_the_version_of_the_last_migration(tmp_path: Path) -> None:
    latest = db.migrations()[-1][0]
    by_migrations = migrated(tmp_path / "migrated.db")
    try:
        assert user_version(by_migrations) == latest
    finally:
        by_migrations.close()
    async with aiosqlite.connect(tmp_path / "new.db", isolation_level=None) as conn:
        assert await db.migrate(conn) == latest
    by_migrate = sqlite3.connect(tmp_path / "new.db")
    try:
        assert user_version(by_migrate) == latest
    finally:
        by_migrate.close()


async def test_migrate_upgrades_every_older_version_to_the_fresh_schema(tmp_path: Path) -> None:
    latest = db.migrations()[-1][0]
    reference = fresh(tmp_path / "fresh.db")
    expected = schema_of(reference)
    reference.close()
    for start in range(1, latest):
        path = tmp_path / f"from-{start}.db"
        old = migrated(path, upto=start)
        old.execute("INSERT INTO meta (key, value) VALUES ('cluster_id', 'kept')")
        old.close()
        async with aiosqlite.connect(path, isolation_level=None) as conn:
            assert await db.migrate(conn) == latest
        upgraded = sqlite3.connect(path)
        try:
            assert schema_of(upgraded) == expected, f"upgrading from version {start}"
            assert user_version(upgraded) == latest
            assert upgraded.execute("SELECT value FROM meta WHERE key = 'cluster_id'").fetchone() == ("kept",)
        finally:
            upgraded.close()


async def test_the_data_directory_and_the_database_are_private(tmp_path: Path) -> None:
    data = tmp_path / "head"
    data.mkdir(mode=0o755)
    conn, _ = await db.open_database(data)
    try:
        await conn.execute("CREATE TABLE t (x)")     # the -wal and -shm files exist from here
    finally:
        await conn.close()
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    for name in ("runyard.db", "runyard.db-wal", "runyard.db-shm"):
        found = data / name
        assert not found.exists() or stat.S_IMODE(found.stat().st_mode) == 0o600, name
    assert stat.S_IMODE((data / "runyard.db").stat().st_mode) == 0o600
