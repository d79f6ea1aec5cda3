"""A manual clock for lifecycle tests: time moves only when the test says, so a 5-minute timer takes no time."""

from __future__ import annotations

import asyncio


class ManualClock:
    """`now()` is what the test set; `sleep()` returns once the test advanced the clock past its end."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._moved = asyncio.Condition()

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        until = self._now + seconds
        async with self._moved:
            await self._moved.wait_for(lambda: self._now >= until)

    async def advance(self, seconds: float) -> None:
        self._now += seconds
        async with self._moved:
            self._moved.notify_all()
        await asyncio.sleep(0)   # let the sleepers run
