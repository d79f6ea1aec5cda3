"""The agent's snapshot cache: one download per snapshot, however many attempts need it at once.

`SnapshotCache.archive()` returns the path of a zip whose sha256 was checked just before it is handed out. Each
sha256 has its own lock: the first attempt that needs an uncached snapshot fetches it while the others wait,
then find it cached. A fetch writes to a temporary name of its own and is moved into place only once its
sha256 is right, so a cut-off download never looks cached. A cached zip that no longer matches its sha256 (a
bad disk, a truncated copy) is fetched again. A fetch interrupted by its attempt's stop releases the lock; the
next waiter fetches with its own credentials. The cache is the agent's alone (directory 0700, files 0600): no
run can read a snapshot it was not given, nor change one between its check and its extraction.
Must not: talk gRPC (the `HeadFiles` seam does), or extract anything (the supervisor does, safely).
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from agent.digest import file_sha256

log = logging.getLogger(__name__)

_PRIVATE_DIR = 0o700
_PRIVATE_FILE = 0o600


class HeadFiles(Protocol):
    """Blob transfers with the head. Both retry until they succeed or fail for good; cancellation ends them."""

    async def fetch_snapshot(self, run_id: str, attempt: int, dest: Path) -> None: ...

    async def upload_outputs(self, run_id: str, attempt: int, archive: Path, sha256: str) -> None: ...


class SnapshotMismatch(Exception):
    """The head sent a snapshot whose sha256 is not the one the attempt names."""


@dataclass(slots=True)
class _Slot:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class SnapshotCache:
    def __init__(self, directory: Path, files: HeadFiles) -> None:
        self._dir = directory
        self._files = files
        directory.mkdir(mode=_PRIVATE_DIR, parents=True, exist_ok=True)
        os.chmod(directory, _PRIVATE_DIR)  # also a cache an older agent left open to others
        self._slots: dict[str, _Slot] = {}  # sha256 -> its lock, while some attempt needs it

    async def archive(self, sha256: str, run_id: str, attempt: int) -> Path:
        """The checked zip of snapshot `sha256`, fetched for (`run_id`, `attempt`) if it is not cached."""
        slot = self._slots.setdefault(sha256, _Slot())
        slot.users += 1
        try:
            async with slot.lock:
                path = self._dir / f"{sha256}.zip"
                if not await self._is_intact(path, sha256):
                    await self._fetch(path, sha256, run_id, attempt)
                return path
        finally:
            slot.users -= 1
            if not slot.users:
                del self._slots[sha256]

    async def _is_intact(self, path: Path, sha256: str) -> bool:
        if not path.exists():
            return False
        if await asyncio.to_thread(file_sha256, path) == sha256:
            return True
        log.warning("cached snapshot is corrupt; fetching it again", extra={"sha256": sha256})
        path.unlink(missing_ok=True)
        return False

    async def _fetch(self, path: Path, sha256: str, run_id: str, attempt: int) -> None:
        self._dir.mkdir(mode=_PRIVATE_DIR, parents=True, exist_ok=True)
        os.chmod(self._dir, _PRIVATE_DIR)
        part = self._dir / f"{sha256}.{uuid.uuid4().hex}.part"
        # Created here, private, so that the download (which truncates it) never makes a file others may read.
        os.close(os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, _PRIVATE_FILE))
        try:
            await self._files.fetch_snapshot(run_id, attempt, part)
            digest = await asyncio.to_thread(file_sha256, part)
            if digest != sha256:
                raise SnapshotMismatch(f"the snapshot the head sent has sha256 {digest[:12]}, not {sha256[:12]}")
            os.chmod(part, _PRIVATE_FILE)
            os.replace(part, path)
            log.info("snapshot fetched", extra={"sha256": sha256, "run_id": run_id, "attempt": attempt,
                                                "size_bytes": path.stat().st_size})
        finally:
            part.unlink(missing_ok=True)
