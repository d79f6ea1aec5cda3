"""Wake-ups for readers that follow a run: `logs -f` and `submit` waiting for new lines or a state change.

A follower registers first, then reads the store, then waits; the writer calls `notify(run_id)` after it
committed. Registering before reading means a commit between the read and the wait is never missed. Each follower
has its own event, so a slow follower never holds up ingestion.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Iterator


class Followers:
    def __init__(self) -> None:
        self._waiting: dict[str, set[asyncio.Event]] = defaultdict(set)

    def notify(self, run_id: str) -> None:
        for event in self._waiting.get(run_id, ()):
            event.set()

    @contextlib.contextmanager
    def follow(self, run_id: str) -> Iterator[asyncio.Event]:
        """An event set whenever `run_id` changes; clear it before each read of the store."""
        event = asyncio.Event()
        self._waiting[run_id].add(event)
        try:
            yield event
        finally:
            self._waiting[run_id].discard(event)
            if not self._waiting[run_id]:
                del self._waiting[run_id]


async def wait_changed(event: asyncio.Event, timeout_s: float) -> None:
    """Wait until `event` is set or `timeout_s` passed."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await event.wait()
