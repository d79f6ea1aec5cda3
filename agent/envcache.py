"""Built environments on this node, on disk: the layout, the lock per environment, publishing, leftovers, eviction.

    <run root>/envs/                    agent, 0711: runs pass through, cannot list
      <hash> -> .builds/<hash>-<tag>    a published environment: a link made under a temporary name, then renamed
                                        over this name (os.replace), so it appears whole or not at all
      .builds/                          agent, 0711
        <hash>-<tag>/                   agent, 0755 / 0644 (0755 if executable): the environment, built at its
                                        final path, since a venv is not relocatable (its scripts and its
                                        pyvenv.cfg name absolute paths); runs read and execute it, none writes
          runyard-env.json              written last, before publishing: what was built and its size on disk;
                                        its mtime is when a run last took the environment
      .locks/<hash>                     agent, 0600: flock'd while that environment is being built
      .uv-cache/                        agent, 0700: uv's cache, shared by every build and on the same filesystem
                                        as the environments, so that uv installs by hard links
      .conda/                           agent, 0700: micromamba's root prefix (its package cache)
      .home/                            agent, 0700: HOME of the builders

An environment is published when its link names a directory of `.builds/` for the same hash that holds
`runyard-env.json`. Anything else in `.builds/` (a build that failed, or an agent killed in the middle of one) is
a leftover: no run ever uses it, and `remove_leftovers()` removes it when the agent starts, unless another process
holds the environment's lock. `choose_evictions()` is the pure eviction rule.
Blocking (file system calls): the shell calls the slow ones (publish, discard, entries, removal) through
`asyncio.to_thread`. Must not: remove anything but through `removal.remove_tree`, or follow a link a run could
have made (runs cannot write anywhere below `envs/`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import stat
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.privatedirs import own_directory
from agent.removal import remove_tree

MARKER = "runyard-env.json"
PASS_THROUGH = 0o711
PRIVATE_DIR = 0o700
_HASH = re.compile(r"[0-9a-f]{64}")
_LINK_SUFFIX = ".link"


@dataclass(frozen=True, slots=True)
class CachedEnv:
    hash: str
    path: Path
    size_bytes: int
    last_used: float        # the time a run last took it (the marker's mtime)


def choose_evictions(entries: Sequence[CachedEnv], *, max_bytes: int, keep: Collection[str]) -> list[str]:
    """The environments to remove, least recently used first, until the rest fit in `max_bytes`; never one of
    `keep` (those that live runs use, or that are being taken). `max_bytes` 0 means no limit."""
    total = sum(e.size_bytes for e in entries)
    if not max_bytes or total <= max_bytes:
        return []
    chosen = []
    for entry in sorted(entries, key=lambda e: (e.last_used, e.hash)):
        if total <= max_bytes:
            break
        if entry.hash in keep:
            continue
        chosen.append(entry.hash)
        total -= entry.size_bytes
    return chosen


def valid_hash(env_hash: str) -> bool:
    return bool(_HASH.fullmatch(env_hash))


class EnvCache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def builds(self) -> Path:
        return self.root / ".builds"

    @property
    def locks(self) -> Path:
        return self.root / ".locks"

    @property
    def uv_cache(self) -> Path:
        return self.root / ".uv-cache"

    @property
    def conda_root(self) -> Path:
        return self.root / ".conda"

    @property
    def home(self) -> Path:
        return self.root / ".home"

    def open(self) -> None:
        """Create the layout with its modes; UnsafeDirectory if a directory of it is not the agent's own."""
        for path, mode in ((self.root, PASS_THROUGH), (self.builds, PASS_THROUGH), (self.locks, PRIVATE_DIR),
                           (self.uv_cache, PRIVATE_DIR), (self.conda_root, PRIVATE_DIR), (self.home, PRIVATE_DIR)):
            own_directory(path, mode)

    # --- published environments ------------------------------------------------------------------------------

    def lookup(self, env_hash: str) -> Path | None:
        """The directory of the published environment `env_hash`, or None. A few system calls: fine on the loop."""
        try:
            target = os.readlink(self.root / env_hash)
        except OSError:
            return None
        path = self.root / target
        if Path(target).parent != Path(".builds") or not Path(target).name.startswith(env_hash + "-"):
            return None
        return path if (path / MARKER).is_file() else None

    def published(self) -> dict[str, Path]:
        found = {}
        for name in os.listdir(self.root):
            if valid_hash(name) and (path := self.lookup(name)) is not None:
                found[name] = path
        return found

    def entries(self) -> list[CachedEnv]:
        """Every published environment with its size and when it was last taken."""
        found = []
        for env_hash, path in self.published().items():
            marker = path / MARKER
            with contextlib.suppress(OSError, ValueError):
                size = int(json.loads(marker.read_text()).get("size_bytes", 0))
                found.append(CachedEnv(env_hash, path, size, marker.stat().st_mtime))
        return found

    def touch(self, path: Path) -> None:
        """Note that a run took the environment at `path` now (for least-recently-used eviction)."""
        with contextlib.suppress(OSError):
            os.utime(path / MARKER)

    # --- building and publishing ------------------------------------------------------------------------------

    def new_build_dir(self, env_hash: str) -> Path:
        """A fresh, empty directory of the agent's for building `env_hash` at its final path."""
        path = self.builds / f"{env_hash}-{secrets.token_hex(6)}"
        os.mkdir(path, 0o755)
        os.chmod(path, 0o755)
        return path

    def publish(self, env_hash: str, build_dir: Path, info: dict[str, object]) -> int:
        """Make the finished build in `build_dir` the environment `env_hash`, readable by every run and writable
        by none; returns its size on disk. Whatever was published before under that hash is replaced whole."""
        open_up(build_dir)
        size = disk_bytes(build_dir)
        marker = build_dir / MARKER
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "w") as f:
            json.dump({**info, "hash": env_hash, "size_bytes": size, "built_at": time.time()}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(marker, 0o644)
        temporary = self.root / f".{env_hash}-{secrets.token_hex(6)}{_LINK_SUFFIX}"
        os.symlink(os.path.relpath(build_dir, self.root), temporary)
        os.replace(temporary, self.root / env_hash)
        _sync_dir(self.root)
        return size

    def discard(self, build_dir: Path) -> None:
        """Remove a build that will never be published."""
        remove_tree(build_dir)

    def unpublish(self, env_hash: str) -> Path | None:
        """Remove the link of a published environment (no run can take it from now on); returns the directory to
        remove, or None when it was not published."""
        path = self.lookup(env_hash)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.root / env_hash)
        return path

    # --- the lock per environment -----------------------------------------------------------------------------

    def try_lock(self, env_hash: str) -> int | None:
        """The descriptor holding the build lock of `env_hash`, or None when another process holds it."""
        fd = os.open(self.locks / env_hash, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        return fd

    @staticmethod
    def unlock(fd: int) -> None:
        os.close(fd)    # closing the only descriptor of the open file releases its flock

    # --- start-up ---------------------------------------------------------------------------------------------

    def remove_leftovers(self) -> int:
        """Remove what no run may use: builds that were never published (or were replaced), temporary links and
        links to nothing. A build whose lock another process holds is left alone. Returns how many went."""
        removed = 0
        for name in os.listdir(self.root):
            path = self.root / name
            if name.endswith(_LINK_SUFFIX) or (valid_hash(name) and self.lookup(name) is None):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                    removed += 1
        published = {path.name for path in self.published().values()}
        for name in os.listdir(self.builds):
            env_hash = name.partition("-")[0]
            if name in published:
                continue
            fd = self.try_lock(env_hash) if valid_hash(env_hash) else None
            if fd is None and valid_hash(env_hash):
                continue                # being built by another process right now
            try:
                remove_tree(self.builds / name)
                removed += 1
            finally:
                if fd is not None:
                    self.unlock(fd)
        return removed


def open_up(top: Path) -> None:
    """Make everything below `top` readable by all and writable only by its owner (the agent): directories and
    executable files 0755, other files 0644, whatever the umask was. Links are left as they are."""
    for parent, dirnames, filenames in os.walk(top, followlinks=False):
        os.chmod(parent, 0o755)
        for name in filenames:
            path = os.path.join(parent, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                os.chmod(path, 0o755 if st.st_mode & 0o111 else 0o644)


def disk_bytes(top: Path) -> int:
    """The space the tree below `top` takes on disk, each file counted once however many links it has."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for parent, dirnames, filenames in os.walk(top, followlinks=False):
        for name in (*dirnames, *filenames):
            st = os.lstat(os.path.join(parent, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
