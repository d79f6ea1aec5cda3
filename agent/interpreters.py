"""The Python interpreters of this node: found once at start, reported to the head, picked for environments.

Candidates are this agent's own interpreter, then `python3` and `python3.N` in /usr/bin, /usr/local/bin and on the
agent's PATH. Each executable (ELF) file among them is asked its version (isolated, without site,
`VERSION_TIMEOUT_S` at most); one entry per resolved file. A script standing in front of an interpreter (pyenv's
shims) is not asked: it is slow to start and names whatever its configuration picks at the time. Only
interpreters every run can execute are kept: a run's environment is a venv whose `python` is a link to its base
interpreter, so an interpreter below a directory closed to runs (a root-only pyenv) is no use.
`pick()` chooses among them for an environment's `python = "3.11"`: the highest patch release that matches.
Blocking: call `find_interpreters` through `asyncio.to_thread`. Must not: download or install an interpreter.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SEARCHED_DIRS = ("/usr/bin", "/usr/local/bin")
VERSION_TIMEOUT_S = 5.0
_NAME = re.compile(r"python3(\.\d+)?")
_VERSION = re.compile(r"\d+\.\d+\.\d+")
_ASK = "import sys; print('%d.%d.%d' % sys.version_info[:3])"


@dataclass(frozen=True, slots=True)
class Interpreter:
    path: Path          # resolved: the file itself, not a link to it
    version: str        # "3.11.7"
    own: bool = False   # the interpreter this agent runs on

    @property
    def release(self) -> tuple[int, ...]:
        return tuple(int(part) for part in self.version.split("."))


def candidates(*, own: str = sys.executable, dirs: Sequence[str] = SEARCHED_DIRS,
               search_path: str | None = None) -> list[Path]:
    """The files to ask, in order: `own` first, then the python3* names in `dirs` and on `search_path`."""
    search_path = os.environ.get("PATH", "") if search_path is None else search_path
    found = [Path(own)] if own else []
    for directory in (*dirs, *search_path.split(os.pathsep)):
        if not directory or not os.path.isabs(directory):
            continue
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue
        found.extend(Path(directory) / name for name in names if _NAME.fullmatch(name))
    return found


def version_of(path: Path) -> str | None:
    """The interpreter's version as "3.11.7", or None when `path` is no working Python 3."""
    try:
        done = subprocess.run([str(path), "-I", "-S", "-c", _ASK], capture_output=True, text=True,
                              timeout=VERSION_TIMEOUT_S, env={"PATH": os.environ.get("PATH", "")}, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    version = done.stdout.strip()
    return version if done.returncode == 0 and _VERSION.fullmatch(version) else None


def find_interpreters(paths: Iterable[Path], *, usable: Callable[[Path], bool],
                      ask: Callable[[Path], str | None] = version_of) -> list[Interpreter]:
    """One `Interpreter` per distinct resolved file among `paths` that `usable` accepts and that answers `ask`;
    the first of `paths` is this agent's own."""
    found: dict[Path, Interpreter] = {}
    for index, path in enumerate(paths):
        resolved = Path(os.path.realpath(path))
        if resolved in found or not _is_binary(resolved):
            continue
        if not usable(resolved):
            log.info("python out of the runs' reach; not offered for environments", extra={"python": str(resolved)})
            continue
        version = ask(resolved)
        if version is not None:
            found[resolved] = Interpreter(resolved, version, own=index == 0)
    return list(found.values())


def _is_binary(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def matches(version: str, wanted: str) -> bool:
    """True when `version` ("3.11.7") is what `wanted` asks for: "3", "3.11" or "3.11.7"; "" takes any."""
    return not wanted or version == wanted or version.startswith(wanted + ".")


def pick(interpreters: Sequence[Interpreter], wanted: str) -> Interpreter | None:
    """The interpreter an environment asking for `wanted` gets: the highest matching release, this agent's own
    first among equals; for "" this agent's own when it is usable, else the highest. None when none matches."""
    if not wanted:
        own = next((i for i in interpreters if i.own), None)
        if own is not None:
            return own
    fitting = [i for i in interpreters if matches(i.version, wanted)]
    return max(fitting, key=lambda i: (i.release, i.own), default=None)


def versions(interpreters: Iterable[Interpreter]) -> list[str]:
    """The distinct versions, highest first, as the node reports them."""
    return sorted({i.version for i in interpreters}, key=lambda v: tuple(int(p) for p in v.split(".")), reverse=True)
