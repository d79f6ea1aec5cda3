"""Who a run executes as: an unprivileged uid of its own per live attempt, when the agent is root.

An agent running as root takes a uid (and the same number as gid) for each attempt from `run_uid_range`. No
account is needed: the command is started through util-linux's `setpriv`, found once at start by absolute path,
which sets the real and effective uid and gid, clears the supplementary groups, empties the inheritable and
bounding capability sets and sets no_new_privs, then execs the command. The containment wrapper (the shell that
joins the run's cgroup, or the tether) stays root and execs `setpriv` last, so it can still join the cgroup and
reap, and the agent can still signal every process of the run.

Uids are handed out round robin over the range, so a uid comes back as late as possible, and never to two live
attempts at once, also of two agents on one machine (`runyard up --agents 2`, the tests): each taken uid is
claimed with an `flock` on `/run/runyard-uids/<uid>`, held while the attempt lives and released by the kernel
when the agent dies. An agent that is not root has nothing to switch to: its runs execute as its own user (and
can read its files; said once at start). An agent that is root with an empty range refuses to run anything
unless `allow_root_runs = true`.
Must not: create accounts, or give a uid back while files of its attempt may remain (`Supervisor._release`).
"""

from __future__ import annotations

import fcntl
import logging
import os
import pwd
import tempfile
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path

from agent.errors import NoRunUser
from agent.privatedirs import own_directory

log = logging.getLogger(__name__)

SETPRIV_PATHS = ("/usr/bin/setpriv", "/bin/setpriv")
CLAIMS_DIR = Path("/run" if os.path.isdir("/run") else tempfile.gettempdir()) / "runyard-uids"


@dataclass(frozen=True, slots=True)
class RunUser:
    """The user one attempt runs as. `setpriv` is the absolute path of setpriv when the run switches to `uid`, ''
    when it keeps the agent's own user."""

    uid: int
    gid: int
    name: str                 # USER and LOGNAME in the run's environment
    setpriv: str = ""

    @property
    def switches(self) -> bool:
        return bool(self.setpriv)

    def command(self, argv: list[str]) -> list[str]:
        """`argv` as this user runs it: behind setpriv when the run switches users, else unchanged."""
        if not self.switches:
            return list(argv)
        ids = str(self.uid), str(self.gid)
        return [self.setpriv, "--reuid", ids[0], "--regid", ids[1], "--clear-groups", "--inh-caps=-all",
                "--bounding-set=-all", "--no-new-privs", "--", *argv]


def _always(uid: int) -> bool:
    return True


def _nothing(uid: int) -> None:
    return None


class UidPool:
    """The uids LO..HI (inclusive), one per live key, handed out round robin.

    `take()` returns the first uid after the one handed out last that no live key holds and that `claim` grants
    (another agent on the machine may hold it), wrapping around, so a uid given back is the last to be handed out
    again. `release` is called for a uid given back. Without claims it is pure bookkeeping.
    """

    def __init__(self, low: int, high: int, *, claim: Callable[[int], bool] = _always,
                 release: Callable[[int], None] = _nothing) -> None:
        if not 0 < low <= high:
            raise ValueError(f"bad uid range {low}-{high}")
        self.low, self.high = low, high
        self._claim = claim
        self._release = release
        self._next = low
        self._held: dict[Hashable, int] = {}
        self._taken: set[int] = set()

    @property
    def size(self) -> int:
        return self.high - self.low + 1

    def take(self, key: Hashable) -> int:
        """The uid of `key` (the same one again while it holds one); NoRunUser when every uid is held."""
        if key in self._held:
            return self._held[key]
        uid = self._next
        for _ in range(self.size):
            if uid not in self._taken and self._claim(uid):
                self._next = self._after(uid)
                self._held[key] = uid
                self._taken.add(uid)
                return uid
            uid = self._after(uid)
        raise NoRunUser(f"every uid of run_uid_range {self.low}-{self.high} is held by a live run (of this agent or "
                        "another on this machine): widen run_uid_range in the agent config")

    def give_back(self, key: Hashable) -> None:
        uid = self._held.pop(key, None)
        if uid is not None:
            self._taken.discard(uid)
            self._release(uid)

    def _after(self, uid: int) -> int:
        return self.low if uid == self.high else uid + 1

    def holders(self) -> dict[Hashable, int]:
        return dict(self._held)


class UidClaims:
    """Claims on uids shared by every agent on this machine: an exclusive `flock` on `<directory>/<uid>`, held
    by an open descriptor for as long as the uid is the agent's. The directory is root's, 0700."""

    def __init__(self, directory: Path = CLAIMS_DIR) -> None:
        own_directory(directory, 0o700)
        self._dir = directory
        self._held: dict[int, int] = {}   # uid -> the descriptor holding its lock

    def claim(self, uid: int) -> bool:
        fd = os.open(self._dir / str(uid), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._held[uid] = fd
        return True

    def release(self, uid: int) -> None:
        fd = self._held.pop(uid, None)
        if fd is not None:
            os.close(fd)   # the file stays: removing it could race another agent's claim


def find_setpriv(candidates: tuple[str, ...] = SETPRIV_PATHS) -> str:
    """The absolute path of setpriv, or '' when none of `candidates` is an executable file."""
    return next((path for path in candidates if os.path.isfile(path) and os.access(path, os.X_OK)), "")


class RunUsers:
    """The agent's choice of user for each attempt, made once at start from its config and its own uid."""

    def __init__(self, *, pool: UidPool | None, own: RunUser, refusal: str = "") -> None:
        self._pool = pool
        self._own = own
        self._refusal = refusal   # why no attempt can run here; '' when attempts can run

    @classmethod
    def open(cls, uid_range: tuple[int, int] | None, *, allow_root_runs: bool, euid: int | None = None,
             setpriv_paths: tuple[str, ...] = SETPRIV_PATHS, claims_dir: Path = CLAIMS_DIR) -> RunUsers:
        """Decide who runs execute as and say it once in the log. UnsafeDirectory if `claims_dir` is not safe."""
        euid = os.geteuid() if euid is None else euid
        own = RunUser(euid, os.getegid() if euid == os.geteuid() else euid, _account_name(euid))
        if euid != 0:
            log.warning("agent is not root: runs execute as its own user and cannot be isolated from its files",
                        extra={"user": own.name, "uid": euid})
            return cls(pool=None, own=own)
        if uid_range is None:
            if allow_root_runs:
                log.warning("runs execute as root (allow_root_runs = true): they can read and change everything")
                return cls(pool=None, own=own)
            refusal = ('the agent runs as root and run_uid_range is empty: set run_uid_range (e.g. '
                       '"200000-265535") or allow_root_runs = true in the agent config')
            log.error("no user to run attempts as", extra={"why": refusal})
            return cls(pool=None, own=own, refusal=refusal)
        setpriv = find_setpriv(setpriv_paths)
        if not setpriv:
            refusal = (f"cannot run attempts as an unprivileged user: setpriv (util-linux) is in none of "
                       f"{', '.join(setpriv_paths)}; install util-linux")
            log.error("no user to run attempts as", extra={"why": refusal})
            return cls(pool=None, own=own, refusal=refusal)
        low, high = uid_range
        claims = UidClaims(claims_dir)
        log.info("runs execute as uids of their own", extra={"uid_range": f"{low}-{high}", "setpriv": setpriv})
        return cls(pool=UidPool(low, high, claim=claims.claim, release=claims.release),
                   own=RunUser(0, 0, "root", setpriv))

    @property
    def isolated(self) -> bool:
        """True when each attempt gets a uid of its own."""
        return self._pool is not None

    def sample(self) -> RunUser:
        """A user standing for every run: a uid of the range that owns nothing, or the agent's own user."""
        if self._pool is None:
            return self._own
        return self._user(self._pool.low)

    def take(self, key: Hashable) -> RunUser:
        """The user attempt `key` runs as; NoRunUser (with what to change) when it cannot run."""
        if self._refusal:
            raise NoRunUser(self._refusal)
        if self._pool is None:
            return self._own
        return self._user(self._pool.take(key))

    def give_back(self, key: Hashable) -> None:
        if self._pool is not None:
            self._pool.give_back(key)

    def _user(self, uid: int) -> RunUser:
        return RunUser(uid, uid, f"runyard-{uid}", self._own.setpriv)


def _account_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)

