"""Run containment, both ways (cgroup v2 and tether), with real processes: the whole tree lives and dies together."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.cgroups import CgroupContainment, find_own_cgroup
from agent.app import open_containment
from agent.containment import Containment, Mode
from agent.errors import CannotStart, ContainmentUnavailable
from tests.fakes import eventually
from testbed.harness import process_gone

# A run whose tree escapes its process group: a grandchild in a session of its own and a plain background child.
TREE = """\
setsid sh -c 'echo $$ > grandchild.tmp; mv grandchild.tmp grandchild.pid; exec sleep 300' >/dev/null 2>&1 &
sleep 300 &
echo $! > child.pid
until [ -s grandchild.pid ]; do sleep 0.01; done
echo started
wait
"""


def cgroups_usable() -> bool:
    own = find_own_cgroup()
    return own is not None and os.access(own, os.W_OK)


MODES = [pytest.param(Mode.CGROUP, marks=pytest.mark.skipif(not cgroups_usable(), reason="no writable cgroup v2")),
         Mode.TETHER]


@pytest.fixture(params=MODES, ids=str)
async def containment(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Containment]:
    found = await open_containment(request.param, data_dir=tmp_path / "agent")
    assert found.mode is request.param
    yield found
    await found.close()


def tree_pids(cwd: Path) -> list[int]:
    files = [cwd / "grandchild.pid", cwd / "child.pid"]
    if all(f.exists() and f.read_text().strip() for f in files):
        return [int(f.read_text()) for f in files]
    return []


async def test_pid_and_exit_status_are_the_commands(containment: Containment, tmp_path: Path) -> None:
    run = await containment.spawn("r-1", ["sh", "-c", "echo $$; exit 3"], cwd=tmp_path, env=dict(os.environ))
    assert int((await run.stdout.readline()).decode()) == run.pid
    assert await run.wait() == 3
    await run.release()

    killed = await containment.spawn("r-2", ["sh", "-c", "kill -KILL $$"], cwd=tmp_path, env=dict(os.environ))
    assert await killed.wait() == 128 + signal.SIGKILL
    await killed.release()


async def test_terminate_reaches_every_process_of_the_tree(containment: Containment, tmp_path: Path) -> None:
    (tmp_path / "tree.sh").write_text(TREE)
    run = await containment.spawn("r-1", ["sh", "tree.sh"], cwd=tmp_path, env=dict(os.environ))
    assert await run.stdout.readline() == b"started\n"
    pids = await eventually("the tree to start", lambda: tree_pids(tmp_path))
    run.terminate()
    assert await run.wait() == 128 + signal.SIGTERM
    await eventually("every process of the run to be gone", lambda: all(map(process_gone, pids)), timeout_s=5)
    await run.release()


async def test_what_a_run_leaves_behind_dies_with_it(containment: Containment, tmp_path: Path) -> None:
    (tmp_path / "leave.sh").write_text(TREE.replace("wait\n", "exit 0\n"))
    run = await containment.spawn("r-1", ["sh", "leave.sh"], cwd=tmp_path, env=dict(os.environ))
    assert await run.wait() == 0
    pids = tree_pids(tmp_path)
    assert len(pids) == 2
    run.kill()
    await run.release()
    await eventually("the leftovers to be gone", lambda: all(map(process_gone, pids)), timeout_s=5)


async def test_closing_kills_runs_still_running(containment: Containment, tmp_path: Path) -> None:
    (tmp_path / "tree.sh").write_text(TREE)
    run = await containment.spawn("r-1", ["sh", "tree.sh"], cwd=tmp_path, env=dict(os.environ))
    pids = [run.pid, *await eventually("the tree to start", lambda: tree_pids(tmp_path))]
    await containment.close()
    await eventually("the run to be gone", lambda: all(map(process_gone, pids)), timeout_s=5)
    assert await run.wait() == 128 + signal.SIGKILL


async def test_a_tether_reports_a_command_it_cannot_start(tmp_path: Path) -> None:
    containment = await open_containment(Mode.TETHER, data_dir=tmp_path)
    try:
        with pytest.raises(CannotStart, match="no-such-command"):
            await containment.spawn("r-1", ["no-such-command"], cwd=tmp_path, env=dict(os.environ))
    finally:
        await containment.close()


@pytest.mark.skipif(not cgroups_usable(), reason="no writable cgroup v2")
async def test_cgroups_live_below_the_agents_own_and_are_removed(tmp_path: Path) -> None:
    containment = await CgroupContainment.open(data_dir=tmp_path)
    own = find_own_cgroup()
    assert own is not None and containment.own.parent.parent == own
    run = await containment.spawn("r/1", ["sh", "-c", "cat /proc/self/cgroup"], cwd=tmp_path, env=dict(os.environ))
    seen = (await run.stdout.read()).decode()
    assert f"/{containment.own.name}/run-r_1" in seen
    await run.wait()
    await run.release()
    assert not (containment.own / "run-r_1").exists()
    await containment.close()
    assert not containment.own.exists() and not containment.own.parent.exists()


def test_finding_the_cgroup2_mount_in_hybrid_and_pure_hierarchies() -> None:
    hybrid = ("cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n"
              "cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n")
    assert find_own_cgroup(hybrid, "4:memory:/x\n0::/\n") == Path("/sys/fs/cgroup/unified")
    pure = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n"
    assert (find_own_cgroup(pure, "0::/system.slice/runyard-agent.service\n")
            == Path("/sys/fs/cgroup/system.slice/runyard-agent.service"))
    assert find_own_cgroup("cgroup2 /mnt/with\\040space cgroup2 rw 0 0\n", "0::/a\n") == Path("/mnt/with space/a")
    assert find_own_cgroup("proc /proc proc rw 0 0\n", "0::/\n") is None
    assert find_own_cgroup(pure, "1:cpu:/\n") is None


async def test_an_unusable_cgroup_is_refused_and_auto_falls_back_to_tethers(tmp_path: Path) -> None:
    with pytest.raises(ContainmentUnavailable):
        await CgroupContainment.open(data_dir=tmp_path, base=tmp_path / "not-a-cgroup")
