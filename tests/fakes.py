"""Fakes for agent tests: a manual clock, a counting `HeadFiles`, and an async wait with a deadline."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any


async def eventually(what: str, condition: Callable[[], Any], timeout_s: float = 30.0) -> Any:
    """Poll `condition` until it is truthy; fail after `timeout_s` of real time."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.01)


class ManualClock:
    """A `Clock` whose time moves only when the test calls `advance()`; sleepers wake in deadline order."""

    def __init__(self, start_s: float = 1000.0) -> None:
        self._now = start_s
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._order), future))
        await future

    def pending(self) -> list[float]:
        """How long each sleeper still has to sleep, soonest first."""
        return sorted(due - self._now for due, _, f in self._sleepers if not f.done())

    def advance(self, seconds: float) -> None:
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)


class CountingFiles:
    """A `HeadFiles` that serves `data` for every snapshot fetch, counts fetches and can hold them at half way."""

    def __init__(self, data: bytes) -> None:
        self.data = data                    # the test may change it, e.g. to bytes with the wrong sha256
        self.fetches: list[tuple[str, int, Path]] = []
        self.uploads: list[tuple[str, int, str]] = []
        self.gate = asyncio.Event()         # clear it to hold every fetch after its first half
        self.gate.set()

    async def fetch_snapshot(self, run_id: str, attempt: int, dest: Path) -> None:
        self.fetches.append((run_id, attempt, dest))
        data = self.data
        with open(dest, "wb") as f:
            f.write(data[: len(data) // 2])
            await self.gate.wait()
            f.write(data[len(data) // 2 :])

    async def upload_outputs(self, run_id: str, attempt: int, archive: Path, sha256: str) -> None:
        self.uploads.append((run_id, attempt, sha256))


async def enroll(store: Any, *, node_id: str, name: str, cluster: str = "default", labels: dict[str, str] | None = None,
                 capacity: Any, key: str = "", serial: str = "1") -> Any:
    """Enroll a node straight in the store, as a Join with a fresh join token of one use would; returns the node.
    `key` is the sha256 of its public key (default: one per name)."""
    join_sha = uuid.uuid4().hex
    await store.add_join_token(f"join-{join_sha[:8]}", join_sha, uses=1, expires_at=store.clock() + 3600.0,
                               created_by="test")
    node, _, _ = await store.enroll(join_sha=join_sha, node_id=node_id, name=name, key_sha256=key or f"key-{name}",
                                    cert_serial=serial, cluster=cluster, labels=labels or {}, capacity=capacity,
                                    approved=True)
    return node
