"""Content-addressed artifact store (snapshots and run outputs) on any fsspec filesystem.

Objects live at `<root>/<kind>/<sha[:2]>/<sha>.zip`. A blob is written once: uploads go to a local temp file
(hashed and checked while they arrive), then `put()` moves it into place; an existing sha256 is never written
again, which is how a resubmit of an unchanged directory uploads nothing.
On the local filesystem the file is fsynced and renamed into place, so an acknowledged upload survives a crash.
All methods but `stream` block: call them through `asyncio.to_thread`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import IO

import fsspec
from fsspec.implementations.local import LocalFileSystem

CHUNK_BYTES = 1024 * 1024


class ArtifactStore:
    def __init__(self, url: str) -> None:
        self._fs, self._root = fsspec.core.url_to_fs(url)
        self._local = isinstance(self._fs, LocalFileSystem)
        self._fs.makedirs(self._root, exist_ok=True)

    def _path(self, kind: str, sha256: str) -> str:
        return f"{self._root}/{kind}/{sha256[:2]}/{sha256}.zip"

    def exists(self, kind: str, sha256: str) -> bool:
        return bool(self._fs.exists(self._path(kind, sha256)))

    def put(self, kind: str, sha256: str, local_file: Path) -> bool:
        """Move `local_file` into the store under its sha256; False (and the file removed) if it was there."""
        dest = self._path(kind, sha256)
        if self._fs.exists(dest):
            local_file.unlink(missing_ok=True)
            return False
        self._fs.makedirs(os.path.dirname(dest), exist_ok=True)
        if self._local:
            with open(local_file, "rb") as f:
                os.fsync(f.fileno())
            os.replace(local_file, dest)
            dir_fd = os.open(os.path.dirname(dest), os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        else:
            self._fs.put_file(str(local_file), dest)
            local_file.unlink(missing_ok=True)
        return True

    def size(self, kind: str, sha256: str) -> int:
        return int(self._fs.size(self._path(kind, sha256)))

    def read_chunks(self, kind: str, sha256: str) -> Iterator[bytes]:
        with self._fs.open(self._path(kind, sha256), "rb") as f:
            while chunk := f.read(CHUNK_BYTES):
                yield chunk

    async def stream(self, kind: str, sha256: str) -> AsyncIterator[tuple[bytes, int]]:
        """(chunk, total size) of an object, read off the event loop; the one way the head sends a blob."""
        size = await asyncio.to_thread(self.size, kind, sha256)
        chunks = self.read_chunks(kind, sha256)
        while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
            yield chunk, size

    def open(self, kind: str, sha256: str) -> IO[bytes]:
        """The object, open for reading (seekable: the MLflow API reads single members of an outputs zip)."""
        return self._fs.open(self._path(kind, sha256), "rb")

    def local_path(self, kind: str, sha256: str) -> Path | None:
        """The object's path when the store is on the local disk (for validation without a copy)."""
        return Path(self._path(kind, sha256)) if self._local else None
