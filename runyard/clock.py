"""Time behind a seam, for both daemons: their loops read `now()` and wait with `sleep()` through a `Clock`, so
that tests drive a manual clock and a four-minute timer is tested in milliseconds. Each daemon's `app.py` picks
the real one: the head `SystemClock` (its times are stored), the agent `MonotonicClock` (only differences count).
Must not: be read for timestamps that leave the process unless the clock is the wall clock."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds; whether since the epoch or on a monotonic scale is the implementation's to say."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return once `seconds` have passed on this clock; cancellable."""
        ...


class SystemClock:
    """Wall-clock seconds since the epoch."""

    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(seconds, 0.0))


class MonotonicClock:
    """Monotonic seconds: only differences mean anything."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(seconds, 0.0))


async def wait_event(clock: Clock, event: asyncio.Event, timeout_s: float | None) -> bool:
    """Wait until `event` is set or `timeout_s` passed on `clock` (None: no limit); True if the event is set."""
    if event.is_set():
        return True
    if timeout_s is None:
        await event.wait()
        return True
    waiter = asyncio.ensure_future(event.wait())
    timer = asyncio.ensure_future(clock.sleep(max(timeout_s, 0.0)))
    try:
        await asyncio.wait({waiter, timer}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        timer.cancel()
    return event.is_set()
