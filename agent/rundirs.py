"""Where runs' files live on the node, who owns them, and the agent's data directory around them.

    <data_dir>/                   agent, 0700 (0711 when the run root is <data_dir>/runs and runs switch users)
      node.key, node.crt, ca.crt  agent, 0600: the node's key, its certificate, the cluster CA (`identity.py`)
      snapshots/<sha256>.zip      agent, 0700 / 0600: the snapshot cache (`snapshots.py`)
    <run root>/                   agent, 0711: others may pass through, not list
      sdk/runyard/*.py            agent, 0755 / 0644: the in-run SDK on every run's PYTHONPATH
      bin/python                  agent, 0755: a link to an interpreter runs can execute, when they need one
      lib/python3.X/site-packages agent, 0755: with bin/pyvenv.cfg, lets that python see the agent's packages
      envs/<hash>                 agent, 0711 / 0755: runs' environments, built once per node (`envcache.py`)
      attempts/                   agent, 0711
        <run>-<attempt>/          agent, 0711: what the agent keeps for itself sits here, out of the run's reach
          pgid, outputs.zip       agent, 0600
          artifacts/<run>/...     agent, 0700 / 0600: MLflow artifacts the run uploaded (`tracking.py`), staged
                                  for its outputs archive
          spool/                  agent, 0700: the run's output on its way to the head (`spool.py`)
          code/                   the run's user, 0700: the snapshot, the working directory; code/outputs/
          records.jsonl           the run's user, 0600: the SDK appends, the agent tails
          records.rank-R.jsonl    the run's user, 0600: the same, one per process R of a distributed run
          home/, tmp/             the run's user, 0700: HOME and TMPDIR

A run can write only in what it owns, so it can neither replace the agent's files of its attempt nor put a link
where the agent will look; another run (another uid) can reach none of it. The run root is `run_root` when
set; else `<data_dir>/runs` when the run's user can pass through every directory above the data dir; else a
private directory outside it, `<tmp>/runyard-runs-<euid>/<12 hex of the data dir's sha256>`, since a data dir
below a 0700 directory (a home, a pytest or `mktemp -d` directory) is out of every other user's reach.
Must not: follow a link the run may have placed, or remove anything but through `removal.remove_tree`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.errors import UnsafeDirectory
from agent.privatedirs import own_directory
from agent.reach import closed_directory
from agent.removal import remove_tree
from agent.runusers import RunUser

log = logging.getLogger(__name__)

PASS_THROUGH = 0o711     # others may traverse, not list
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


@dataclass(frozen=True, slots=True)
class AttemptDirs:
    """The paths of one attempt's directory (see the module docstring for owners and modes)."""

    top: Path

    @property
    def code(self) -> Path:
        return self.top / "code"

    @property
    def outputs(self) -> Path:
        return self.code / "outputs"

    @property
    def records(self) -> Path:
        return self.top / "records.jsonl"

    def rank_records(self, rank: int | str) -> Path:
        """The records file of a distributed run's process of global rank `rank` (`{RANK}`: the SDK fills it in)."""
        return self.top / f"records.rank-{rank}.jsonl"

    @property
    def home(self) -> Path:
        return self.top / "home"

    @property
    def tmp(self) -> Path:
        return self.top / "tmp"

    @property
    def pgid(self) -> Path:
        return self.top / "pgid"

    @property
    def spool(self) -> Path:
        return self.top / "spool"

    @property
    def outputs_zip(self) -> Path:
        return self.top / "outputs.zip"

    @property
    def artifacts(self) -> Path:
        """Where the agent stages the MLflow artifacts the run uploads: the agent's own, out of the run's reach."""
        return self.top / "artifacts"


@dataclass(frozen=True, slots=True)
class RunRoot:
    path: Path
    private: bool = False     # the agent's own directory outside its data dir, removed when the agent exits

    @property
    def attempts(self) -> Path:
        return self.path / "attempts"

    @property
    def sdk(self) -> Path:
        return self.path / "sdk"

    @property
    def bin(self) -> Path:
        return self.path / "bin"

    @property
    def envs(self) -> Path:
        return self.path / "envs"

    def attempt(self, run_id: str, attempt: int) -> AttemptDirs:
        if not run_id or "/" in run_id or run_id.startswith("."):
            raise ValueError(f"run id {run_id[:40]!r} cannot name a directory")
        return AttemptDirs(self.attempts / f"{run_id}-{attempt}")


def choose_run_root(data_dir: Path, configured: str, user: RunUser, *, euid: int, tmp: Path | None = None) -> Path:
    """Where run directories go (the rule is in the module docstring); nothing is created here."""
    if configured:
        return Path(configured)
    data_dir = Path(os.path.abspath(data_dir))
    if closed_directory(data_dir.parent, user) is None:
        return data_dir / "runs"
    tag = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]
    return Path(tmp or tempfile.gettempdir()) / f"runyard-runs-{euid}" / tag


def open_run_root(data_dir: Path, configured: str, user: RunUser, *, tmp: Path | None = None) -> RunRoot:
    """Choose the run root, create it (and the data dir) with the modes above, refusing an unsafe existing one.

    `user` stands for every run (`RunUsers.sample()`). Raises UnsafeDirectory with one line saying what to fix.
    """
    euid = os.geteuid()
    data_dir = Path(os.path.abspath(data_dir))
    root = Path(os.path.abspath(choose_run_root(data_dir, configured, user, euid=euid, tmp=tmp)))
    inside = root.parent == data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, PASS_THROUGH if inside and user.switches else PRIVATE_DIR)
    if inside and user.switches:
        _warn_open_entries(data_dir, keep=root.name)
    if configured or inside:
        root.parent.mkdir(parents=True, exist_ok=True)
    else:
        own_directory(root.parent, PASS_THROUGH)
    own_directory(root, PASS_THROUGH)
    own_directory(RunRoot(root).attempts, PASS_THROUGH)
    closed = closed_directory(root, user)
    if closed is not None:
        raise UnsafeDirectory(f"runs (as {user.name}) cannot reach their directories in {root}: {closed} is closed "
                              "to them; set run_root to a directory every user may pass through")
    where = "configured" if configured else "data dir" if inside else "private, outside the data dir"
    log.info("run directories", extra={"run_root": str(root), "where": where})
    return RunRoot(root, private=not (configured or inside))


def _warn_open_entries(data_dir: Path, *, keep: str) -> None:
    """Runs pass through the data dir: whatever in it others may read or enter is open to them by its name."""
    with os.scandir(data_dir) as entries:
        for entry in entries:
            if entry.name != keep and entry.stat(follow_symlinks=False).st_mode & 0o007:
                log.warning("open to runs by its name in the data dir; chmod o-rwx it", extra={"path": entry.path})


def close_run_root(root: RunRoot) -> None:
    """The agent is exiting: remove a private run root once no attempt directory is left in it."""
    if root.private and not (root.attempts.is_dir() and os.listdir(root.attempts)):
        remove_tree(root.path)


def remove_leftovers(root: RunRoot) -> int:
    """Remove the attempt directories an earlier agent process left (their runs are dead); returns how many."""
    try:
        names = os.listdir(root.attempts)
    except FileNotFoundError:
        return 0
    for name in names:
        remove_tree(root.attempts / name)
    return len(names)


def make_attempt_dir(dirs: AttemptDirs) -> None:
    """A fresh top directory of the attempt, the agent's own (an earlier agent's copy is removed), with the
    agent's private artifacts staging directory in it."""
    remove_tree(dirs.top)
    os.mkdir(dirs.top, PASS_THROUGH)
    os.chmod(dirs.top, PASS_THROUGH)
    os.mkdir(dirs.artifacts, PRIVATE_DIR)
    os.chmod(dirs.artifacts, PRIVATE_DIR)


def hand_over(dirs: AttemptDirs, user: RunUser, ranks: Sequence[int] = ()) -> None:
    """Give the run what is its own: the extracted code (with outputs/), records file (one per rank in `ranks`,
    the global ranks of a distributed run's processes on this node), HOME and TMPDIR.

    Called before the run starts, on directories only the agent has written, so nothing in them is a link.
    """
    dirs.outputs.mkdir(exist_ok=True)
    for directory in (dirs.home, dirs.tmp):
        os.mkdir(directory, PRIVATE_DIR)
    records = [dirs.records, *(dirs.rank_records(rank) for rank in ranks)]
    for path in records:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE))
    for path in (dirs.home, dirs.tmp, *records):
        _give(path, user)
    own_tree(dirs.code, user)


def own_tree(top: Path, user: RunUser) -> None:
    """Make every directory and file below `top` (included) `user`'s, 0700 / 0600 (0700 if executable).

    Links are neither followed nor changed; there should be none (extraction refuses them).
    """
    _give(top, user)
    for parent, dirnames, filenames in os.walk(top, followlinks=False):
        for name in (*dirnames, *filenames):
            _give(Path(parent) / name, user)


def _give(path: Path, user: RunUser) -> None:
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return
    if user.switches:
        os.lchown(path, user.uid, user.gid)
    executable = stat.S_ISDIR(st.st_mode) or st.st_mode & stat.S_IXUSR
    os.chmod(path, PRIVATE_DIR if executable else PRIVATE_FILE)
