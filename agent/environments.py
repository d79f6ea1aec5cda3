"""Runs' environments on this node: built once, shared by every run that asks, kept while a run uses them.

`acquire(spec, env_hash, watcher=...)` gives an attempt a `Lease` on the published environment, building it
first when the node does not have it yet (`envcache.py` has the layout, `envbuild.py` the steps). One build per
environment at a time: inside this agent every attempt that asks while a build is under way waits for that same
build and sees its output from then on; across processes the build holds the environment's flock. A build is
made in a directory of its own and published (a link renamed into place) only once complete: a build that fails
or is stopped is removed and never used, and one that an agent killed in the middle left behind is removed when
the next agent starts. After each publish, the least recently used environments beyond `env_cache_max_bytes`
are removed, never one a lease holds.

The builders run as the agent, contained like runs (`Containment.spawn`): their whole tree dies with a stop, a
time limit (`env_build_timeout_s`) and the agent itself. Their environment is an allowlist (locale, proxies, CA
files), with uv and micromamba pointed at the node's caches and uv never downloading a Python. Every line they
write goes to the watchers (the BUILD stream of each waiting attempt) as it comes; what happens to an attempt
(it builds, it waits for another build, it takes a cached environment) is a note (a SYSTEM line).
`on_change` is called when the set of published environments changes: the head learns it with a heartbeat.
Must not: decide what a spec builds into (`envbuild.py`), run a builder as a run's user, or let a build's
failure escape as anything but `EnvironmentUnavailable` to the attempts that wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from agent.builders import Builders
from agent.containment import Containment
from agent.envbuild import (
    DETAIL_LINES, BuildPlan, EnvKind, IndexSettings, Refusal, Step, failure_detail, is_node_fault, kind_of, plan_build,
)
from agent.envcache import EnvCache, choose_evictions
from agent.errors import CannotStart, EnvironmentUnavailable
from agent.interpreters import Interpreter
from agent.output import read_records
from agent.runenv import DEFAULT_PATH
from protos import runyard_pb2 as pb
from runyard.envspec import EnvSpec, identity

log = logging.getLogger(__name__)

PASSED_ON = ("LANG", "LC_ALL", "TZ", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy",
             "no_proxy", "SSL_CERT_FILE", "SSL_CERT_DIR")
LOCK_POLL_S = 0.25                  # how often a build waiting for another process's lock tries it again
READ_AFTER_EXIT_S = 30.0            # output pipes still open this long after a builder's tree was killed: stop
_RECORD_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True, eq=False)
class Watcher:
    """Who waits for a build: `output` gets every record the builders write, `note` what happens to the wait."""

    output: Callable[[pb.LogRecord], None]
    note: Callable[[str], None]


@dataclass(slots=True, eq=False)
class Lease:
    """An attempt's hold on a published environment: it is not evicted until released."""

    env_hash: str
    path: Path                      # the environment's own directory (not the link), stable while held
    kind: EnvKind
    _release: Callable[[], None]
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._release()


@dataclass(slots=True, eq=False)
class _Build:
    watchers: set[Watcher] = field(default_factory=set)
    task: asyncio.Task[Path | Refusal] | None = None

    def note(self, text: str) -> None:
        for watcher in list(self.watchers):
            watcher.note(text)


def _nothing() -> None:
    return None


class Environments:
    def __init__(self, *, cache: EnvCache, builders: Builders, interpreters: Sequence[Interpreter],
                 index: IndexSettings, containment: Containment, tasks: asyncio.TaskGroup, platform: str,
                 max_bytes: int = 0, timeout_s: float = 3600.0, agent_env: Mapping[str, str] = os.environ) -> None:
        self._cache = cache
        self.builders = builders
        self._interpreters = list(interpreters)
        self._index = index
        self._containment = containment
        self._tasks = tasks
        self._platform = platform
        self._max_bytes = max_bytes
        self._timeout_s = timeout_s
        self._env = builder_environment(cache, agent_env)
        self._builds: dict[str, _Build] = {}
        self._pins: Counter[str] = Counter()
        self._mismatches: set[tuple[str, str]] = set()
        self._evicting = asyncio.Lock()     # one eviction at a time: two would pick and remove the same ones
        self._over_budget = True            # unknown until the first eviction: look when a lease is released
        self._published = sorted(cache.published())
        self.on_change: Callable[[], None] = _nothing
        self.on_build: Callable[[str, float], None] = lambda outcome, seconds: None  # ok|spec|node (the metrics)

    def hashes(self) -> list[str]:
        """The environments this node has published, as it reports them to the head (kept in memory: the link
        asks often)."""
        return list(self._published)

    def _changed(self) -> None:
        self._published = sorted(self._cache.published())
        self.on_change()

    def in_use(self) -> set[str]:
        """Environments a lease holds now."""
        return {h for h, n in self._pins.items() if n > 0}

    async def acquire(self, spec: EnvSpec, env_hash: str, *, watcher: Watcher) -> Lease:
        """A lease on the environment of `spec`, built first if the node does not have it yet.

        `env_hash` is the head's identity of the spec; the node keys the environment by its own (the same when
        both run one version on one platform). Raises EnvironmentUnavailable; cancelling stops only this wait.
        """
        key = self._key(spec, env_hash)
        self._pins[key] += 1                # held from now on: eviction never takes what is being taken
        try:
            path = self._cache.lookup(key)
            if path is not None:
                watcher.note(f"environment {key[:12]}: taken from the node's cache")
            else:
                path = await self._wait_for_build(key, spec, watcher)
        except BaseException:
            self._unpin(key)
            raise
        self._cache.touch(path)
        return Lease(key, path, kind_of(spec), lambda: self._unpin(key))

    def warm(self, spec: EnvSpec, env_hash: str) -> None:
        """Build the environment for no run (the head's `build_env`); the result is logged."""
        self._tasks.create_task(self._warm(spec, env_hash), name=f"env-warm-{env_hash[:12]}")

    async def close(self) -> None:
        """The agent is stopping: stop every build (its processes are killed, its directory removed)."""
        tasks = [b.task for b in self._builds.values() if b.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def evict(self) -> int:
        """Remove the least recently used environments beyond `max_bytes` that no lease holds; returns how many."""
        if not self._max_bytes:
            return 0
        async with self._evicting:
            return await self._evict()

    async def _evict(self) -> int:
        entries = await asyncio.to_thread(self._cache.entries)
        victims = choose_evictions(entries, max_bytes=self._max_bytes, keep=self.in_use() | set(self._builds))
        removed = 0
        total = sum(e.size_bytes for e in entries)
        sizes = {e.hash: e.size_bytes for e in entries}
        for victim in victims:
            if self._pins[victim] or victim in self._builds:
                continue                    # taken while the sizes were read
            path = self._cache.unpublish(victim)   # on the loop: no lease can be taken between the check and this
            log.info("environment evicted", extra={"env_hash": victim, "max_bytes": self._max_bytes})
            removed += 1
            total -= sizes[victim]
            if path is not None:
                await asyncio.to_thread(self._cache.discard, path)
        self._over_budget = total > self._max_bytes
        if removed:
            self._changed()
        return removed

    # --- inside ----------------------------------------------------------------------------------------------

    def _key(self, spec: EnvSpec, env_hash: str) -> str:
        key = identity(spec, self._platform)
        if env_hash and env_hash != key and (env_hash, key) not in self._mismatches:
            self._mismatches.add((env_hash, key))
            log.warning("the head's environment hash differs from this node's; built under the node's",
                        extra={"env_hash": env_hash, "node_hash": key, "platform": self._platform})
        return key

    def _unpin(self, key: str) -> None:
        self._pins[key] -= 1
        if self._pins[key] <= 0:
            del self._pins[key]
            if self._max_bytes and self._over_budget:   # what the leases kept may go now
                self._evict_soon(key)

    async def _wait_for_build(self, key: str, spec: EnvSpec, watcher: Watcher) -> Path:
        build = self._builds.get(key)
        if build is None:
            build = self._builds[key] = _Build()
            build.task = self._tasks.create_task(self._build(key, spec, build), name=f"env-build-{key[:12]}")
            watcher.note(f"environment {key[:12]}: building it on this node")
        else:
            watcher.note(f"environment {key[:12]}: being built for another run; waiting for that build")
        assert build.task is not None
        build.watchers.add(watcher)
        try:
            result = await asyncio.shield(build.task)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if build.task.cancelled() and not (task is not None and task.cancelling()):
                raise EnvironmentUnavailable("the build was stopped: the agent is stopping", node_fault=True) from None
            raise
        finally:
            build.watchers.discard(watcher)
        if isinstance(result, Refusal):
            raise EnvironmentUnavailable(result.detail, node_fault=result.node_fault)
        return result

    async def _build(self, key: str, spec: EnvSpec, build: _Build) -> Path | Refusal:
        """Build and publish one environment; returns where, or why not. Never raises but CancelledError."""
        started = time.monotonic()
        try:
            result = await self._build_locked(key, spec, build)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            log.exception("environment build failed in the agent", extra={"env_hash": key})
            result = Refusal(f"environment build failed in the agent: {type(err).__name__}: {err}", node_fault=True)
        finally:
            self._builds.pop(key, None)
        self.on_build("ok" if not isinstance(result, Refusal) else "node" if result.node_fault else "spec",
                      time.monotonic() - started)
        if isinstance(result, Refusal):
            log.warning("environment build failed", extra={"env_hash": key, "node_fault": result.node_fault,
                                                          "detail": result.detail})
            return result
        elapsed_s = time.monotonic() - started
        log.info("environment built", extra={"env_hash": key, "path": str(result), "seconds": round(elapsed_s, 2)})
        build.note(f"environment {key[:12]}: ready after {elapsed_s:.1f}s")
        self._changed()
        if self._max_bytes:
            self._evict_soon(key)
        return result

    def _evict_soon(self, key: str) -> None:
        try:
            self._tasks.create_task(self._evict_logged(), name=f"env-evict-{key[:12]}")
        except RuntimeError:                # the agent's task group is closing: the next agent evicts
            log.info("environment eviction skipped: the agent is stopping", extra={"env_hash": key})

    async def _evict_logged(self) -> None:
        """`evict()` as a task of its own, so that the waiters of a build need not wait for it; never raises."""
        try:
            await self.evict()
        except Exception:
            log.exception("environment eviction failed")

    async def _build_locked(self, key: str, spec: EnvSpec, build: _Build) -> Path | Refusal:
        fd = await self._lock(key, build)
        try:
            found = self._cache.lookup(key)
            if found is not None:           # another process built it while this one waited for the lock
                return found
            dest = await asyncio.to_thread(self._cache.new_build_dir, key)
            try:
                result = await self._run_plan(spec, dest, build)
            except BaseException:
                await asyncio.to_thread(self._cache.discard, dest)
                raise
            if isinstance(result, Refusal):
                await asyncio.to_thread(self._cache.discard, dest)
                return result
            return await self._publish(key, dest, {"spec": asdict(spec), **result})
        finally:
            self._cache.unlock(fd)

    async def _publish(self, key: str, dest: Path, info: dict[str, object]) -> Path | Refusal:
        """Publish a complete build. A stop meanwhile waits for the publish to end: a complete build is kept."""
        publishing = asyncio.ensure_future(asyncio.to_thread(self._cache.publish, key, dest, info))
        try:
            await asyncio.shield(publishing)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await publishing
            raise
        except OSError as err:
            await asyncio.to_thread(self._cache.discard, dest)
            return Refusal(f"environment build failed: cannot publish it: {err}", node_fault=True)
        return dest

    async def _lock(self, key: str, build: _Build) -> int:
        said = False
        while (fd := self._cache.try_lock(key)) is None:
            if not said:
                said = True
                build.note(f"environment {key[:12]}: another process on this node is building it; waiting")
            await asyncio.sleep(LOCK_POLL_S)
        return fd

    async def _run_plan(self, spec: EnvSpec, dest: Path, build: _Build) -> dict[str, str] | Refusal:
        plan = plan_build(spec, dest=str(dest), builders=self.builders, interpreters=self._interpreters,
                          index=self._index, uv_cache=str(self._cache.uv_cache),
                          conda_root=str(self._cache.conda_root))
        if isinstance(plan, Refusal):
            return plan
        if plan.interpreter and not os.access(plan.interpreter, os.X_OK):
            return Refusal(f"python {plan.python} at {plan.interpreter} is gone from this node", node_fault=True)
        try:
            async with asyncio.timeout(self._timeout_s):
                for number, step in enumerate(plan.steps):
                    refused = await self._run_step(step, dest, build, name=f"env-{dest.name}-{number}")
                    if refused is not None:
                        return refused
        except TimeoutError:
            return Refusal(f"environment build took longer than env_build_timeout_s ({self._timeout_s:g}s)")
        return _described(plan)

    async def _run_step(self, step: Step, dest: Path, build: _Build, *, name: str) -> Refusal | None:
        await asyncio.to_thread(_prepare, step, dest)
        self._emit(build, f"==> {step.what}".encode())
        try:
            process = await self._containment.spawn(name, list(step.argv), cwd=self._cache.root, env=self._env)
        except (CannotStart, OSError) as err:
            return Refusal(f"environment build failed: {step.what}: cannot start {step.argv[0]}: {err}",
                           node_fault=True)
        tail: deque[str] = deque(maxlen=DETAIL_LINES * 4)

        def emit(record: pb.LogRecord) -> None:
            tail.append(record.data.decode("utf-8", "replace"))
            self._forward(build, record)

        try:
            readers = [asyncio.create_task(read_records(stream, pb.BUILD, emit, record_bytes=_RECORD_BYTES),
                                           name=f"{name}-{which}")
                       for which, stream in (("stdout", process.stdout), ("stderr", process.stderr))]
            try:
                exit_code = await process.wait()
                process.kill()              # what the builder left behind
                await asyncio.wait(readers, timeout=READ_AFTER_EXIT_S)
            finally:
                for reader in readers:
                    reader.cancel()
                await asyncio.gather(*readers, return_exceptions=True)
        finally:
            process.kill()
            await process.release()
        if exit_code == 0:
            return None
        free_bytes = await asyncio.to_thread(_free_bytes, self._cache.root)
        return Refusal(failure_detail(step.what, exit_code, list(tail)),
                       node_fault=is_node_fault(exit_code, list(tail), free_bytes=free_bytes))

    def _emit(self, build: _Build, data: bytes) -> None:
        self._forward(build, pb.LogRecord(stream=pb.BUILD, ts=time.time(), data=data))

    @staticmethod
    def _forward(build: _Build, record: pb.LogRecord) -> None:
        for watcher in list(build.watchers):
            watcher.output(record)

    async def _warm(self, spec: EnvSpec, env_hash: str) -> None:
        def output(record: pb.LogRecord) -> None:
            log.debug("environment build output", extra={"env_hash": env_hash, "line": record.data[:500]})

        def note(text: str) -> None:
            log.info("environment build for no run", extra={"env_hash": env_hash, "note": text})

        try:
            lease = await self.acquire(spec, env_hash, watcher=Watcher(output, note))
        except EnvironmentUnavailable as err:
            log.warning("environment the head asked for could not be built",
                        extra={"env_hash": env_hash, "node_fault": err.node_fault, "detail": err.detail})
            return
        except Exception:
            log.exception("environment the head asked for could not be built", extra={"env_hash": env_hash})
            return
        lease.release()
        log.info("environment the head asked for is ready", extra={"env_hash": lease.env_hash, "path": str(lease.path)})


def builder_environment(cache: EnvCache, agent_env: Mapping[str, str]) -> dict[str, str]:
    """The environment every builder runs with: an allowlist of the agent's, and the node's caches."""
    env = {name: agent_env[name] for name in PASSED_ON if name in agent_env}
    env.update(PATH=DEFAULT_PATH, HOME=str(cache.home), UV_CACHE_DIR=str(cache.uv_cache), UV_NO_CONFIG="1",
               UV_PYTHON_DOWNLOADS="never", UV_PYTHON_PREFERENCE="only-system", MAMBA_ROOT_PREFIX=str(cache.conda_root),
               NO_COLOR="1")
    return env


def _prepare(step: Step, dest: Path) -> None:
    if step.fresh_dir:
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(dest)
    for path, text in step.files:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(text)


def _free_bytes(path: Path) -> int:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 0


def _described(plan: BuildPlan) -> dict[str, str]:
    return {"kind": str(plan.kind), "python": plan.python, "interpreter": plan.interpreter}


__all__ = ["Environments", "Lease", "Watcher", "builder_environment"]
