"""The agent's snapshot cache: one download per snapshot, checked before every use."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from agent.snapshots import SnapshotCache, SnapshotMismatch
from tests.fakes import CountingFiles, eventually

DATA = b"PK-pretend-this-is-a-zip" * 1000
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.mark.timeout(30)
async def test_concurrent_attempts_share_one_fetch(tmp_path: Path) -> None:
    files = CountingFiles(DATA)
    files.gate.clear()  # hold the first fetch half way, until every attempt is waiting for the snapshot
    cache = SnapshotCache(tmp_path / "snapshots", files)
    waiting = [asyncio.create_task(cache.archive(SHA, f"run-{i}", 1)) for i in range(8)]
    await eventually("the first fetch to begin", lambda: files.fetches)
    await asyncio.sleep(0)
    files.gate.set()
    paths = await asyncio.gather(*waiting)
    assert len(files.fetches) == 1
    assert {p.read_bytes() for p in paths} == {DATA}
    assert [p.name for p in (tmp_path / "snapshots").iterdir()] == [f"{SHA}.zip"], "no temporary file is left"


async def test_a_stopped_fetch_leaves_nothing_and_the_next_attempt_fetches_under_its_own_name(tmp_path: Path) -> None:
    files = CountingFiles(DATA)
    files.gate.clear()
    cache = SnapshotCache(tmp_path / "snapshots", files)
    first = asyncio.create_task(cache.archive(SHA, "run-a", 1))
    second = asyncio.create_task(cache.archive(SHA, "run-b", 1))
    await eventually("the first fetch to begin", lambda: files.fetches)
    first.cancel()  # the attempt that was fetching is stopped
    with pytest.raises(asyncio.CancelledError):
        await first
    await eventually("the second attempt to fetch", lambda: len(files.fetches) == 2)
    files.gate.set()
    assert (await second).read_bytes() == DATA
    (_, _, first_part), (_, _, second_part) = files.fetches
    assert first_part != second_part and first_part.name.endswith(".part")
    assert not first_part.exists() and not second_part.exists()


async def test_a_corrupt_cached_snapshot_is_fetched_again(tmp_path: Path) -> None:
    files = CountingFiles(DATA)
    cache = SnapshotCache(tmp_path / "snapshots", files)
    path = await cache.archive(SHA, "run-a", 1)
    assert await cache.archive(SHA, "run-b", 1) == path and len(files.fetches) == 1, "an intact copy is reused"
    path.write_bytes(DATA[:-1] + b"!")  # a flipped byte on disk
    assert (await cache.archive(SHA, "run-c", 1)).read_bytes() == DATA
    assert [run for run, _, _ in files.fetches] == ["run-a", "run-c"]


async def test_a_fetch_with_the_wrong_content_is_not_cached(tmp_path: Path) -> None:
    files = CountingFiles(b"something else entirely")
    cache = SnapshotCache(tmp_path / "snapshots", files)
    with pytest.raises(SnapshotMismatch, match="sha256"):
        await cache.archive(SHA, "run-a", 1)
    assert list((tmp_path / "snapshots").iterdir()) == []
