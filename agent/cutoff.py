"""Stopping this node's runs when the head has been silent too long, before the head places them elsewhere.

The head declares a silent node Down after `down_after_s` (5 min) and requeues its runs; the agent stops them
itself after `stop_runs_after_s` (4 min), so a requeued run never has two live attempts. Each stopped attempt
reports EXITED with reason `cut_off` and a detail saying how long the head was silent.
Must not: read the system clock (time comes from the `Clock`), or decide anything about the link.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from runyard.clock import Clock
from agent.runmodel import Reason

log = logging.getLogger(__name__)


class Runs(Protocol):
    def live(self) -> set[tuple[str, int]]: ...

    def stop(self, run_id: str, attempt: int, reason: Reason, detail: str = "") -> None: ...


async def watch_cut_off(*, clock: Clock, last_contact: Callable[[], float], runs: Runs, after_s: float) -> None:
    """Stop every live attempt once `clock.now() - last_contact()` reaches `after_s`. Runs until cancelled.

    It sleeps until the moment the silence would reach `after_s`, then looks again (the head may have spoken
    meanwhile); while the head stays silent it looks every `min(1, after_s / 4)` seconds for new attempts.
    """
    recheck_s = min(1.0, after_s / 4)
    stopped: set[tuple[str, int]] = set()
    while True:
        silent_s = clock.now() - last_contact()
        if silent_s < after_s:
            stopped.clear()
            await clock.sleep(after_s - silent_s)
            continue
        new = runs.live() - stopped
        if new:
            log.warning("cut off from the head; stopping runs",
                        extra={"silent_s": round(silent_s, 3), "after_s": after_s, "runs": len(new)})
            detail = f"cut off from the head for {silent_s:.1f}s (stop_runs_after_s = {after_s:g})"
            for run_id, attempt in sorted(new):
                runs.stop(run_id, attempt, Reason.CUT_OFF, detail)
            stopped |= new
        await clock.sleep(recheck_s)
