"""Time, injected: the head's loops read `now()` and wait with `sleep()` through a `Clock`, so that lifecycle
tests run on a manual clock in milliseconds. `app.py` picks `SystemClock`."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
