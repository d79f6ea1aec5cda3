"""`Environments` in the agent's process with real uv, real venvs and real contained builders, offline from the
tests' own wheelhouse: one build however many ask, leases that keep environments from eviction, whose fault a
failure is, and nothing half-built ever used."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.app import open_containment
from agent.builders import Builders, find_builders
from agent.containment import Containment, Mode
from agent.envbuild import IndexSettings
from agent.envcache import EnvCache
from agent.environments import Environments, Lease, Watcher
from agent.errors import EnvironmentUnavailable
from agent.interpreters import Interpreter, candidates, find_interpreters
from runyard.envspec import EnvSpec, identity, node_platform
from tests.fakes import eventually
from testbed.harness import process_gone

GAMMA = EnvSpec(python="3.11", pip=("tinygamma",))


@dataclass
class Seen:
    """A watcher's view of a build: the output lines and the notes."""

    lines: list[bytes] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def watcher(self) -> Watcher:
        return Watcher(output=lambda r: self.lines.append(r.data), note=self.notes.append)


@pytest.fixture(scope="module")
def interpreters() -> list[Interpreter]:
    return find_interpreters(candidates(), usable=lambda path: True)


@pytest.fixture
async def containment(tmp_path: Path) -> AsyncIterator[Containment]:
    found = await open_containment(Mode.AUTO, data_dir=tmp_path)
    yield found
    await found.close()


@dataclass
class Node:
    envs: Environments
    cache: EnvCache
    changes: list[list[str]]

    def builds(self) -> list[str]:
        return sorted(p.name for p in self.cache.builds.iterdir())


@pytest.fixture
def make_node(tmp_path: Path, wheelhouse: Path, interpreters: list[Interpreter], containment: Containment,
              ) -> object:
    async def make(tasks: asyncio.TaskGroup, *, builders: Builders | None = None, max_bytes: int = 0,
                   timeout_s: float = 120.0, found: list[Interpreter] | None = None) -> Node:
        cache = EnvCache(tmp_path / "envs")
        cache.open()
        envs = Environments(cache=cache, builders=builders or find_builders(), interpreters=found or interpreters,
                            index=IndexSettings("none", (), (str(wheelhouse),)), containment=containment,
                            tasks=tasks, platform=node_platform(), max_bytes=max_bytes, timeout_s=timeout_s)
        node = Node(envs, cache, [])
        envs.on_change = lambda: node.changes.append(envs.hashes())
        return node
    return make


def python_of(lease: Lease, code: str) -> str:
    return subprocess.run([str(lease.path / "bin" / "python"), "-c", code], capture_output=True, text=True,
                          check=True, timeout=30).stdout.strip()


@pytest.mark.timeout(60)
async def test_ten_at_once_share_one_build_and_see_its_output(make_node: object) -> None:
    async with asyncio.TaskGroup() as tasks:
        node: Node = await make_node(tasks)  # type: ignore[operator]
        seen = [Seen() for _ in range(10)]
        leases = await asyncio.gather(*(node.envs.acquire(GAMMA, "", watcher=s.watcher()) for s in seen))
        key = identity(GAMMA, node_platform())
        assert {lease.path for lease in leases} == {node.cache.lookup(key)}
        assert len(node.builds()) == 1, "one build for ten runs"
        firsts = [s.notes[0] for s in seen]
        assert firsts.count(f"environment {key[:12]}: building it on this node") == 1
        assert firsts.count(f"environment {key[:12]}: being built for another run; waiting for that build") == 9
        assert all(s.notes[-1].startswith(f"environment {key[:12]}: ready after ") for s in seen)
        assert all(b" + tinygamma==1.0" in s.lines for s in seen), "every waiter sees the build's output"
        assert python_of(leases[0], "import tinygamma; print(tinygamma.VALUE)") == "gamma over alpha 1.0"
        assert node.changes == [[key]] and node.envs.hashes() == [key]
        later = Seen()
        again = await node.envs.acquire(GAMMA, key, watcher=later.watcher())
        assert again.path == leases[0].path and later.notes == [f"environment {key[:12]}: taken from the node's cache"]
        assert later.lines == [] and len(node.builds()) == 1


@pytest.mark.timeout(60)
async def test_a_waiter_that_gives_up_does_not_stop_the_build(make_node: object) -> None:
    async with asyncio.TaskGroup() as tasks:
        node: Node = await make_node(tasks)  # type: ignore[operator]
        quitter = asyncio.create_task(node.envs.acquire(GAMMA, "", watcher=Seen().watcher()))
        await eventually("the build to start", lambda: node.builds())
        quitter.cancel()
        stayer = await node.envs.acquire(GAMMA, "", watcher=Seen().watcher())
        assert node.cache.lookup(stayer.env_hash) == stayer.path
        assert node.envs.in_use() == {stayer.env_hash}, "the one that gave up holds nothing"


@pytest.mark.timeout(60)
async def test_eviction_keeps_what_leases_hold_and_takes_the_least_recently_used(make_node: object) -> None:
    specs = {name: EnvSpec(python="3.11", pip=(f"tinybeta=={version}",) if version else ("tinyalpha",))
             for name, version in (("a", "1.0"), ("b", "2.0"), ("c", ""))}
    async with asyncio.TaskGroup() as tasks:
        node: Node = await make_node(tasks, max_bytes=1)  # type: ignore[operator]
        held_a = await node.envs.acquire(specs["a"], "", watcher=Seen().watcher())
        used_b = await node.envs.acquire(specs["b"], "", watcher=Seen().watcher())
        used_b.release()
        held_c = await node.envs.acquire(specs["c"], "", watcher=Seen().watcher())
        expected = sorted([held_a.env_hash, held_c.env_hash])
        await eventually("b to be evicted", lambda: node.envs.hashes() == expected)
        assert held_a.path.exists() and not used_b.path.exists()
        assert python_of(held_a, "import tinybeta; print(tinybeta.VALUE)") == "beta 1.0"
        held_a.release()
        await node.envs.evict()
        assert node.envs.hashes() == [held_c.env_hash] and not held_a.path.exists() and held_c.path.exists()
        assert node.changes[-1] == [held_c.env_hash]


@pytest.mark.timeout(60)
async def test_a_spec_the_builder_refuses_is_the_specs_fault_and_leaves_nothing(make_node: object) -> None:
    async with asyncio.TaskGroup() as tasks:
        node: Node = await make_node(tasks)  # type: ignore[operator]
        seen = Seen()
        with pytest.raises(EnvironmentUnavailable) as caught:
            await node.envs.acquire(EnvSpec(python="3.11", pip=("tinyalpha", "nosuchpkg>=1")), "",
                                    watcher=seen.watcher())
    assert not caught.value.node_fault
    assert caught.value.detail.startswith("environment build failed: install 2 pip requirements exited 1:")
    assert "nosuchpkg" in caught.value.detail and "No solution found" in caught.value.detail
    assert any(b"nosuchpkg" in line for line in seen.lines)
    assert node.builds() == [] and node.envs.hashes() == [] and node.changes == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("missing", ["uv", "interpreter"])
async def test_a_missing_builder_or_interpreter_is_the_nodes_fault(make_node: object, tmp_path: Path,
                                                                  missing: str) -> None:
    gone = Interpreter(tmp_path / "python3.11", "3.11.4")
    async with asyncio.TaskGroup() as tasks:
        if missing == "uv":
            node: Node = await make_node(tasks, builders=Builders())  # type: ignore[operator]
        else:
            node = await make_node(tasks, found=[gone])  # type: ignore[operator]
        with pytest.raises(EnvironmentUnavailable) as caught:
            await node.envs.acquire(GAMMA, "", watcher=Seen().watcher())
    assert caught.value.node_fault
    assert ("uv is missing on this node" if missing == "uv" else f"python 3.11.4 at {gone.path} is gone") \
        in caught.value.detail
    assert node.builds() == []


@pytest.mark.timeout(60)
async def test_a_build_past_its_time_limit_is_killed_and_removed(make_node: object, tmp_path: Path) -> None:
    started = tmp_path / "started"
    hanging = tmp_path / "uv"
    hanging.write_text(f"#!/bin/sh\necho $$ > {started}\nexec sleep 600\n")
    hanging.chmod(0o755)
    async with asyncio.TaskGroup() as tasks:
        node: Node = await make_node(tasks, builders=Builders(uv=str(hanging)), timeout_s=1.0)  # type: ignore[operator]
        with pytest.raises(EnvironmentUnavailable) as caught:
            await node.envs.acquire(GAMMA, "", watcher=Seen().watcher())
    assert not caught.value.node_fault and "longer than env_build_timeout_s (1s)" in caught.value.detail
    pid = int(started.read_text())
    assert process_gone(pid)
    assert node.builds() == []


@pytest.mark.timeout(60)
async def test_a_stopping_agent_stops_the_build_and_its_waiters_hear_why(make_node: object, tmp_path: Path) -> None:
    hanging = tmp_path / "uv"
    hanging.write_text("#!/bin/sh\nexec sleep 600\n")
    hanging.chmod(0o755)
    async with asyncio.TaskGroup() as tasks:
        node: Node = await make_node(tasks, builders=Builders(uv=str(hanging)))  # type: ignore[operator]
        waiter = asyncio.create_task(node.envs.acquire(GAMMA, "", watcher=Seen().watcher()))
        await eventually("the build to start", lambda: node.builds())
        await node.envs.close()
        with pytest.raises(EnvironmentUnavailable) as caught:
            await waiter
    assert caught.value.node_fault and "the agent is stopping" in caught.value.detail
    assert node.builds() == []

