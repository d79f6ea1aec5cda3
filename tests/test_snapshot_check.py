"""The head's snapshot checks run in processes of their own: answers carried back, a time limit that kills, a bound
on how many run at once, nothing left behind."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psutil
import pytest

from runyard.errors import SnapshotInvalid, UsageError
from runyard.snapshot import create_snapshot
from scheduler.errors import HeadError
from scheduler.snapshot_check import SnapshotChecks
from testbed import zips

MB = 1024 * 1024


def _checks(*, timeout_s: float = 60.0, workers: int = 2) -> SnapshotChecks:
    return SnapshotChecks(max_entries=100_000, max_unpacked_bytes=8 * 1024**3, timeout_s=timeout_s, workers=workers)


def _check_processes() -> list[int]:
    found = []
    for child in psutil.Process().children():
        try:
            if "scheduler.snapshot_check" in child.cmdline():
                found.append(child.pid)
        except psutil.NoSuchProcess:  # ended between the listing and the look
            pass
    return found


@pytest.fixture
def slow_bomb(tmp_path: Path) -> Path:
    """A megabyte that unpacks to a gigabyte: seconds of checking, refused as corrupt at its end."""
    return zips.deflate_bomb(tmp_path / "slow.zip", unpacked_bytes=1024 * MB)


async def test_a_good_snapshot_passes_and_a_refusal_comes_back_whole(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train.py").write_text("print('hi')\n")
    checks = _checks()
    await checks.check(create_snapshot(tmp_path / "src", tmp_path).path)
    bomb = zips.overlapping_bomb(tmp_path / "bomb.zip", entries=4, kernel_bytes=MB)
    with pytest.raises(SnapshotInvalid) as refused:
        await checks.check(bomb)
    assert refused.value.entry == "00001.bin"
    assert refused.value.why == "it overlaps entry '00000.bin': not a snapshot Runyard wrote"
    with pytest.raises(SnapshotInvalid, match="it has 1,000,000 entries; the limit is 100,000"):
        await checks.check(zips.claimed_entries(tmp_path / "claims.zip", 1_000_000))
    assert _check_processes() == []


@pytest.mark.timeout(60)
async def test_a_check_past_its_time_limit_is_killed_and_refused(slow_bomb: Path) -> None:
    with pytest.raises(SnapshotInvalid) as refused:
        await _checks(timeout_s=0.2).check(slow_bomb)
    assert str(refused.value) == ("snapshot rejected: checking it took longer than 0.2 s, "
                                  "the head's snapshot_check_timeout_s")
    assert _check_processes() == []


@pytest.mark.timeout(60)
async def test_checks_beyond_the_bound_wait_for_a_free_slot(slow_bomb: Path) -> None:
    checks = _checks(timeout_s=0.3, workers=1)
    most = 0

    async def watch() -> None:
        nonlocal most
        while True:
            most = max(most, len(_check_processes()))
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch())
    try:
        results = await asyncio.gather(*(checks.check(slow_bomb) for _ in range(3)), return_exceptions=True)
    finally:
        watcher.cancel()
    assert [type(r) for r in results] == [SnapshotInvalid] * 3
    assert all("took longer than 0.3 s" in str(r) for r in results)
    assert most == 1


@pytest.mark.timeout(60)
async def test_close_ends_the_checks_still_running(slow_bomb: Path) -> None:
    checks = _checks()
    running = asyncio.create_task(checks.check(slow_bomb))
    for _ in range(500):
        if _check_processes():
            break
        await asyncio.sleep(0.01)
    assert len(_check_processes()) == 1
    await checks.close()
    with pytest.raises(HeadError, match="the head stopped while it checked the snapshot"):
        await running
    assert _check_processes() == []


@pytest.mark.parametrize(("workers", "timeout_s", "says"), [
    (0, 60.0, "snapshot_check_workers must be at least 1"),
    (2, 0.0, "snapshot_check_timeout_s must be more than 0"),
])
def test_bad_settings_are_refused_naming_the_key(workers: int, timeout_s: float, says: str) -> None:
    with pytest.raises(UsageError, match=says):
        _checks(timeout_s=timeout_s, workers=workers)
