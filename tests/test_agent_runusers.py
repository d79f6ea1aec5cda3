"""Who a run executes as: the uid pool (round robin, one uid per live attempt, machine-wide claims), the agent's
choice from its config and its own uid, and setpriv with real processes."""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.errors import NoRunUser, UnsafeDirectory
from agent.runusers import RunUser, RunUsers, UidClaims, UidPool, find_setpriv
from runyard.errors import UsageError

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch users")


def test_uids_go_round_robin_so_a_uid_given_back_comes_back_last() -> None:
    pool = UidPool(10, 13)
    assert [pool.take(k) for k in "abc"] == [10, 11, 12]
    pool.give_back("a")
    assert pool.take("d") == 13, "the next after the last handed out, not the one just given back"
    assert pool.take("e") == 10, "wraps around to the first free one"
    pool.give_back("c")
    pool.give_back("b")
    assert pool.take("f") == 11 and pool.take("g") == 12
    assert pool.take("e") == 10, "a key that holds a uid keeps it"


def test_never_two_live_attempts_on_one_uid() -> None:
    pool = UidPool(100, 107)
    rng = random.Random(7)
    live: dict[int, int] = {}
    for step in range(2000):
        if live and (len(live) == 8 or rng.random() < 0.5):
            key = rng.choice(list(live))
            pool.give_back(key)
            del live[key]
        else:
            live[step] = pool.take(step)
        assert len(set(live.values())) == len(live)
        assert pool.holders() == live


def test_an_exhausted_range_is_refused_with_what_to_change() -> None:
    pool = UidPool(5, 6)
    pool.take("a")
    pool.take("b")
    with pytest.raises(NoRunUser, match=r"every uid of run_uid_range 5-6 is held by a live run.*widen run_uid_range"):
        pool.take("c")
    pool.give_back("a")
    assert pool.take("c") == 5


def test_two_agents_on_one_machine_never_share_a_uid(tmp_path: Path) -> None:
    first, second = UidClaims(tmp_path / "claims"), UidClaims(tmp_path / "claims")
    one = UidPool(20, 22, claim=first.claim, release=first.release)
    other = UidPool(20, 22, claim=second.claim, release=second.release)
    assert [one.take("a"), other.take("x"), one.take("b")] == [20, 21, 22]
    with pytest.raises(NoRunUser, match="another on this machine"):
        other.take("y")
    one.give_back("a")
    assert other.take("y") == 20
    assert (tmp_path / "claims").stat().st_mode & 0o777 == 0o700


def test_claims_refuse_a_directory_someone_else_could_fill(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "claims").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafeDirectory, match="symbolic link"):
        UidClaims(tmp_path / "claims")


def test_a_root_agent_without_a_range_refuses_runs_unless_allowed(tmp_path: Path) -> None:
    refusing = RunUsers.open(None, allow_root_runs=False, euid=0, claims_dir=tmp_path / "claims")
    with pytest.raises(NoRunUser) as caught:
        refusing.take(("run", 1))
    assert "set run_uid_range" in str(caught.value) and "allow_root_runs = true" in str(caught.value)
    allowed = RunUsers.open(None, allow_root_runs=True, euid=0, claims_dir=tmp_path / "claims")
    assert allowed.take(("run", 1)).command(["true"]) == ["true"], "runs as root, nothing to switch"


def test_a_root_agent_without_setpriv_refuses_runs(tmp_path: Path) -> None:
    users = RunUsers.open((200000, 200010), allow_root_runs=False, euid=0, setpriv_paths=(str(tmp_path / "none"),),
                          claims_dir=tmp_path / "claims")
    with pytest.raises(NoRunUser, match="setpriv"):
        users.take(("run", 1))


def test_an_agent_that_is_not_root_runs_everything_as_itself(tmp_path: Path) -> None:
    users = RunUsers.open((200000, 200010), allow_root_runs=False, euid=4321, claims_dir=tmp_path / "claims")
    user = users.take(("run", 1))
    assert (user.uid, user.switches, users.isolated) == (4321, False, False)


def test_a_root_agent_gives_each_attempt_a_uid_of_its_own(tmp_path: Path) -> None:
    users = RunUsers.open((200000, 200010), allow_root_runs=False, euid=0, claims_dir=tmp_path / "claims")
    first, second = users.take(("run", 1)), users.take(("run", 2))
    assert (first.uid, first.gid, first.name) == (200000, 200000, "runyard-200000")
    assert second.uid == 200001 and first.switches and users.isolated
    users.give_back(("run", 1))
    assert users.take(("run", 3)).uid == 200002


@pytest.mark.parametrize("text", ["200000", "a-b", "10-5", "0-10", "1-4294967295", "-5"])
def test_a_malformed_uid_range_is_a_config_error(text: str) -> None:
    with pytest.raises(UsageError, match="run_uid_range"):
        AgentConfig(run_uid_range=text)


def test_uid_range_defaults() -> None:
    assert AgentConfig().uid_range == (200000, 265535)
    assert AgentConfig(run_uid_range=" ").uid_range is None
    assert AgentConfig().allow_root_runs is False


@as_root
def test_setpriv_drops_every_privilege_before_the_command(tmp_path: Path) -> None:
    setpriv = find_setpriv()
    assert setpriv, "util-linux's setpriv is part of the test machine"
    user = RunUser(200123, 200123, "runyard-200123", setpriv)
    script = "id -u; id -g; id -G; grep -E '^(CapEff|CapBnd|CapInh|NoNewPrivs)' /proc/self/status"
    seen = subprocess.run(user.command(["sh", "-c", script]), capture_output=True, text=True, check=True).stdout
    lines = seen.split("\n")
    assert lines[:3] == ["200123", "200123", "200123"], "no supplementary group is left"
    status = dict(line.split(":\t") for line in lines[3:] if line)
    assert status == {"CapInh": "0000000000000000", "CapEff": "0000000000000000", "CapBnd": "0000000000000000",
                      "NoNewPrivs": "1"}
