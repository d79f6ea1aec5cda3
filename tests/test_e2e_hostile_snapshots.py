"""Hostile snapshot uploads against a real head: refused with INVALID_ARGUMENT and one clear line, while the head's
memory stays flat and its other calls keep answering."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from runyard.errors import InvalidArgument, RunyardError
from testbed import zips
from testbed.harness import Cluster, wait_until

MB = 1024 * 1024


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A head of its own (no agent), so that its memory is this module's alone."""
    found = Cluster.start(tmp_path_factory.mktemp("hostile"), agents=0)
    yield found
    found.stop()


def _sha(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _check_processes(cluster: Cluster) -> list[int]:
    found = []
    for child in psutil.Process(cluster.head.proc.pid).children():  # type: ignore[union-attr]
        try:
            if "scheduler.snapshot_check" in child.cmdline():
                found.append(child.pid)
        except psutil.NoSuchProcess:
            pass
    return found


class _PeakRss:
    """The largest RSS a process had while the block ran, sampled every few milliseconds."""

    def __init__(self, pid: int) -> None:
        self._process = psutil.Process(pid)
        self.before = self.peak = self._process.memory_info().rss
        self._done = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(0.005):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __enter__(self) -> _PeakRss:
        self._sampler.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._sampler.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


class _Caller:
    """Calls ListRuns and ListNodes over and over in a thread of its own until stopped; keeps what went wrong."""

    def __init__(self, cluster: Cluster) -> None:
        self._client = cluster.client()
        self.answered = 0
        self.failures: list[Exception] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._call, daemon=True)

    def _call(self) -> None:
        while not self._done.is_set():
            try:
                self._client.list_runs()
                self._client.nodes()
            except RunyardError as err:
                self.failures.append(err)
            else:
                self.answered += 1

    def __enter__(self) -> _Caller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


def test_a_million_empty_entries_are_refused_and_the_head_stays_small(head: Cluster, tmp_path: Path) -> None:
    archive = zips.many_empty_entries(tmp_path / "million.zip", 1_000_000)
    client = head.client()
    client.list_runs()  # the channel and the head's first call are warm before measuring
    with _PeakRss(head.head.proc.pid) as rss:  # type: ignore[union-attr]
        with pytest.raises(InvalidArgument) as refused:
            client.upload_snapshot(archive, _sha(archive))
    assert str(refused.value) == "snapshot rejected: it has 1,000,000 entries; the limit is 100,000"
    assert rss.peak - rss.before < 50 * MB, f"head RSS grew by {(rss.peak - rss.before) / MB:.1f} MB"
    assert not client.has_snapshot(_sha(archive))
    assert list((head.head.data_dir / "tmp").iterdir()) == []


def test_an_overlapping_bomb_is_refused_while_other_calls_answer(head: Cluster, tmp_path: Path) -> None:
    bomb = zips.overlapping_bomb(tmp_path / "bomb.zip", entries=256, kernel_bytes=MB)  # 256 MB from 30 KB
    client = head.client()
    with _Caller(head) as caller:
        for _ in range(3):
            with pytest.raises(InvalidArgument) as refused:
                client.upload_snapshot(bomb, _sha(bomb))
            assert str(refused.value) == ("snapshot entry '00001.bin' rejected: it overlaps entry '00000.bin': "
                                          "not a snapshot Runyard wrote")
        wait_until("other calls to be answered", lambda: caller.answered >= 3)
    assert caller.failures == []
    assert not client.has_snapshot(_sha(bomb))


def test_other_calls_answer_while_a_check_unpacks(head: Cluster, tmp_path: Path) -> None:
    bomb = zips.deflate_bomb(tmp_path / "slow.zip", unpacked_bytes=1024 * MB)  # seconds of work for its check
    client = head.client()
    outcome: list[BaseException] = []

    def upload() -> None:
        try:
            client.upload_snapshot(bomb, _sha(bomb))
        except BaseException as err:  # noqa: BLE001 - handed to the test's thread
            outcome.append(err)

    uploader = threading.Thread(target=upload)
    uploader.start()
    try:
        (checking,) = wait_until("the check to start", lambda: _check_processes(head))
        for _ in range(5):
            client.list_runs()
            client.nodes()
        assert checking in _check_processes(head)  # the calls above were answered while it unpacked
    finally:
        uploader.join()
    assert [type(e) for e in outcome] == [InvalidArgument]
    assert "snapshot entry 'zeros.bin' rejected: corrupt entry" in str(outcome[0])
    assert _check_processes(head) == []


def test_a_check_past_the_heads_time_limit_is_refused(tmp_path: Path) -> None:
    cluster = Cluster.start(tmp_path / "cluster", agents=0, head_settings={"snapshot_check_timeout_s": 0.3})
    try:
        bomb = zips.deflate_bomb(tmp_path / "slow.zip", unpacked_bytes=1024 * MB)
        with pytest.raises(InvalidArgument) as refused:
            cluster.client().upload_snapshot(bomb, _sha(bomb))
        assert str(refused.value) == ("snapshot rejected: checking it took longer than 0.3 s, "
                                      "the head's snapshot_check_timeout_s")
        assert _check_processes(cluster) == []
        assert list(cluster.client().list_runs().runs) == []
    finally:
        cluster.stop()
