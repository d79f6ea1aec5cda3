"""Where runs' files live: the choice of the run root, refusing an unsafe one, and who owns what in an attempt's
directory. Real directories, real modes, real owners (a uid of the range when the tests run as root)."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.errors import UnsafeDirectory
from agent.rundirs import close_run_root, choose_run_root, hand_over, make_attempt_dir, open_run_root
from agent.runusers import RunUser, find_setpriv

EUID = os.geteuid()
RUN_UID = 200777


@pytest.fixture
def user() -> RunUser:
    """A run's user: a uid of its own when the tests run as root, else the tests' own user."""
    if EUID == 0:
        return RunUser(RUN_UID, RUN_UID, f"runyard-{RUN_UID}", find_setpriv())
    return RunUser(EUID, os.getegid(), "me")


@pytest.fixture
def open_parent() -> Iterator[Path]:
    """A directory every user may pass through (pytest's tmp_path is below a 0700 one)."""
    path = Path(tempfile.mkdtemp(prefix="runyard-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def owner(path: Path) -> int:
    return os.lstat(path).st_uid


def test_runs_live_in_the_data_dir_when_every_directory_above_it_is_open(open_parent: Path, user: RunUser) -> None:
    data = open_parent / "agent"
    assert choose_run_root(data, "", user, euid=EUID) == data / "runs"
    root = open_run_root(data, "", user)
    assert root.path == data / "runs" and not root.private
    assert mode(data) == (0o711 if user.switches else 0o700), "runs pass through the data dir, never list it"
    assert (mode(root.path), mode(root.attempts), owner(root.path)) == (0o711, 0o711, EUID)


@pytest.mark.skipif(EUID != 0, reason="a directory closed to others is open to its owner")
def test_a_data_dir_below_a_closed_directory_gets_a_private_run_root_outside_it(tmp_path: Path,
                                                                                  user: RunUser) -> None:
    data = tmp_path / "agent"          # pytest makes the directories above tmp_path 0700
    tag = hashlib.sha256(str(data.resolve()).encode()).hexdigest()[:12]
    expected = Path(tempfile.gettempdir()) / f"runyard-runs-{EUID}" / tag
    assert choose_run_root(data, "", user, euid=EUID) == expected
    root = open_run_root(data, "", user)
    try:
        assert root.path == expected and root.private
        assert mode(data) == 0o700 and mode(expected.parent) == 0o711 and mode(expected) == 0o711
    finally:
        close_run_root(root)
    assert not expected.exists(), "an empty private run root goes with its agent"


def test_a_configured_run_root_wins(open_parent: Path, user: RunUser) -> None:
    assert choose_run_root(open_parent / "agent", "/srv/runs", user, euid=EUID) == Path("/srv/runs")
    root = open_run_root(open_parent / "agent", str(open_parent / "runs"), user)
    assert root.path == open_parent / "runs" and mode(root.path) == 0o711 and not root.private


@pytest.mark.skipif(EUID != 0, reason="a directory closed to others is open to its owner")
@pytest.mark.parametrize("trap", ["link", "group-writable", "someone-elses"])
def test_an_unsafe_private_run_root_is_refused(open_parent: Path, tmp_path: Path, user: RunUser, trap: str) -> None:
    """Someone got to /tmp/runyard-runs-<euid> first; the data dir is below a closed directory (tmp_path)."""
    shared_tmp = open_parent / "tmp"
    shared_tmp.mkdir(mode=0o1777)
    planted = shared_tmp / f"runyard-runs-{EUID}"
    if trap == "link":
        (open_parent / "elsewhere").mkdir()
        planted.symlink_to(open_parent / "elsewhere")
    else:
        planted.mkdir()
        if trap == "group-writable":
            planted.chmod(0o775)
        else:
            os.chown(planted, 4242, 4242)
    with pytest.raises(UnsafeDirectory, match=f"will not use {planted}"):
        open_run_root(tmp_path / "agent", "", user, tmp=shared_tmp)
    assert not (open_parent / "elsewhere" / "attempts").exists()


def test_a_configured_run_root_runs_cannot_reach_is_refused(tmp_path: Path, user: RunUser) -> None:
    if not user.switches:
        pytest.skip("a run of the agent's own user reaches what the agent reaches")
    with pytest.raises(UnsafeDirectory, match="cannot reach their directories"):
        open_run_root(tmp_path / "agent", str(tmp_path / "runs"), user)


def test_an_attempt_directory_is_the_agents_and_what_is_inside_the_runs(open_parent: Path, user: RunUser) -> None:
    root = open_run_root(open_parent / "agent", "", user)
    dirs = root.attempt("run1", 2)
    make_attempt_dir(dirs)
    (dirs.code / "sub").mkdir(parents=True)
    (dirs.code / "train.py").write_text("print('hi')\n")
    (dirs.code / "run.sh").write_text("echo hi\n")
    (dirs.code / "run.sh").chmod(0o755)
    hand_over(dirs, user)
    assert (owner(dirs.top), mode(dirs.top)) == (EUID, 0o711), "the run cannot replace what the agent keeps here"
    assert (owner(dirs.artifacts), mode(dirs.artifacts)) == (EUID, 0o700), "MLflow artifacts are staged out of reach"
    for path, expected in [(dirs.code, 0o700), (dirs.code / "sub", 0o700), (dirs.outputs, 0o700),
                           (dirs.home, 0o700), (dirs.tmp, 0o700), (dirs.code / "train.py", 0o600),
                           (dirs.code / "run.sh", 0o700), (dirs.records, 0o600)]:
        assert (owner(path), mode(path)) == (user.uid, expected), path
    assert dirs.records.read_bytes() == b""

    (dirs.code / "left").write_text("from an earlier agent process")
    make_attempt_dir(dirs)
    assert os.listdir(dirs.top) == ["artifacts"], "a new attempt directory starts empty but for the staging dir"
    assert os.listdir(dirs.artifacts) == []


def test_a_run_id_that_is_no_directory_name_is_refused(open_parent: Path, user: RunUser) -> None:
    root = open_run_root(open_parent / "agent", "", user)
    for bad in ("", "../x", ".hidden", "a/b"):
        with pytest.raises(ValueError):
            root.attempt(bad, 1)
