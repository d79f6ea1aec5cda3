"""A run's software environment: the normalized spec, and its identity on a platform.

`EnvSpec` is what a conda file (its `python=3.x`, its `pip:` section, other conda packages) or a container image
asks for, normalized so that two specs that ask for the same software are equal: requirement lines stripped,
comments and blank lines dropped, sorted and de-duplicated, `-r` files' contents inlined, index options kept apart.
`identity(spec, platform)` is the sha256 the head stores with each run and the agent builds `envs/<identity>`
under: the same software on the same platform is built once per node and shared by every run that asks for it.

The parsing lives here too, over data already read (the YAML is the job file's loader's to read): `from_conda()`
turns a conda file's mapping into a spec, `pip_lines()` a pip list (a conda file's `pip:` section, the job file's
short form), `check()` says what is over the caps both the CLI and the head enforce, `parse_ref()` reads a
registered environment's reference and `version_key()` orders versions as people read them (`10` after `9`).
A fault is a `JobFileError` naming the file and the YAML path, or the file and the line.
Must not: import anything beyond the standard library, `protos` and `runyard.errors` (the CLI, the head and the
agent share it).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform as _platform
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from runyard.errors import JobFileError

IDENTITY_VERSION = 1        # bump when what goes into the identity changes: every environment is built anew


@dataclass(frozen=True, slots=True)
class EnvSpec:
    python: str = ""                            # "3.11"; empty: whatever python the node has
    pip: tuple[str, ...] = ()                   # requirement lines, normalized
    index_url: str = ""
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()
    conda: tuple[str, ...] = ()                 # conda packages other than python and pip
    channels: tuple[str, ...] = ()
    image: str = ""

    @property
    def empty(self) -> bool:
        return self == EnvSpec()


def node_platform() -> str:
    """This machine's platform as environments are keyed by it, e.g. `linux-x86_64`."""
    return f"{_platform.system().lower()}-{_platform.machine().lower()}"


def identity(spec: EnvSpec, platform: str) -> str:
    """The sha256 (hex) of the spec's canonical form and the platform."""
    canonical = json.dumps({"v": IDENTITY_VERSION, "platform": platform, **asdict(spec)}, sort_keys=True,
                           separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


# --- caps, shared by the CLI (before it sends) and the head (before it stores) ---------------------------------

MAX_PIP_LINES = 2000
MAX_CONDA_PACKAGES = 500
MAX_CHANNELS = 32
MAX_URLS = 32               # extra index URLs, find-links
MAX_LINE_CHARS = 1024       # a requirement line, a conda package, a channel
MAX_URL_CHARS = 2048
MAX_IMAGE_CHARS = 512
MAX_INCLUDE_DEPTH = 8       # `-r` files within `-r` files
MAX_INCLUDE_BYTES = 1024 * 1024     # every `-r` file of one spec together
MAX_SPEC_BYTES = 128 * 1024         # the whole spec, as stored with each run
_PYTHON = re.compile(r"^\d+\.\d+$")
_NO_SPACE = re.compile(r"^\S+$")


def check(spec: EnvSpec) -> str:
    """The first thing in `spec` that no environment may be, in one line; '' when it is fine."""
    if spec.python and not _PYTHON.match(spec.python):
        return f"python must be MAJOR.MINOR such as 3.11, not {spec.python[:40]!r}"
    for what, items, most in (("pip requirement lines", spec.pip, MAX_PIP_LINES),
                              ("conda packages", spec.conda, MAX_CONDA_PACKAGES),
                              ("channels", spec.channels, MAX_CHANNELS),
                              ("extra index URLs", spec.extra_index_urls, MAX_URLS),
                              ("find-links", spec.find_links, MAX_URLS)):
        if len(items) > most:
            return f"{len(items)} {what}, over the limit of {most}"
    for what, items, most in (("a requirement line", spec.pip, MAX_LINE_CHARS),
                              ("a conda package", spec.conda, MAX_LINE_CHARS),
                              ("a channel", spec.channels, MAX_LINE_CHARS),
                              ("a URL", (spec.index_url, *spec.extra_index_urls, *spec.find_links), MAX_URL_CHARS)):
        for item in items:
            if len(item) > most or "\n" in item or "\0" in item:
                return f"{what} is over {most} characters or holds a line break: {item[:40]!r}…"
    if spec.image and (len(spec.image) > MAX_IMAGE_CHARS or not _NO_SPACE.match(spec.image)):
        return f"image must be one name of at most {MAX_IMAGE_CHARS} characters without spaces"
    size = len(json.dumps(asdict(spec)).encode())
    if size > MAX_SPEC_BYTES:
        return f"the environment is {size:,} bytes, over the limit of {MAX_SPEC_BYTES:,}; pin fewer packages"
    return ""


# --- stored form ---------------------------------------------------------------------------------------------

def to_dict(spec: EnvSpec) -> dict[str, Any]:
    """The spec as JSON-ready values (lists for tuples); `from_dict` reads it back."""
    return asdict(spec)


def from_dict(data: Mapping[str, Any]) -> EnvSpec:
    known = {f.name for f in fields(EnvSpec)}
    values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known}
    return EnvSpec(**values)


# --- references to registered environments -------------------------------------------------------------------

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,254}$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
PREFIXES = ("azureml:", "runyard:")


@dataclass(frozen=True, slots=True)
class EnvRef:
    """A registered environment: NAME:VERSION, or NAME@latest (`version` empty): resolved by the head at submit."""

    name: str
    version: str = ""

    def __str__(self) -> str:
        return f"{self.name}:{self.version}" if self.version else f"{self.name}@latest"


def valid_name(name: str) -> bool:
    return bool(_NAME.match(name))


def valid_version(version: str) -> bool:
    return bool(_VERSION.match(version))


def parse_ref(text: str) -> EnvRef:
    """`NAME:VERSION`, `NAME@latest` or `NAME` (the latest), with or without `azureml:` / `runyard:` in front.
    Raises ValueError saying what a reference looks like."""
    body = text.strip()
    for prefix in PREFIXES:
        body = body.removeprefix(prefix)
    if body.startswith("//"):
        raise ValueError(f"{text[:80]!r}: registries and asset URIs are not supported by Runyard; "
                         "name an environment of this cluster, NAME:VERSION or NAME@latest")
    name, version = body, ""
    if body.endswith("@latest"):
        name = body[: -len("@latest")]
    elif ":" in body:
        name, _, version = body.partition(":")
        if not valid_version(version):
            raise ValueError(f"environment version {version[:80]!r} must be 1 to 64 letters, digits, '_', '.' or "
                             "'-', starting with a letter or digit")
    if not valid_name(name):
        raise ValueError(f"{text[:80]!r} is not an environment reference; write NAME:VERSION or NAME@latest "
                         "(a name is letters, digits, '_', '.' or '-')")
    return EnvRef(name, version)


def version_key(version: str) -> tuple[tuple[int, int, str], ...]:
    """Orders versions as people read them: runs of digits as numbers (`10` after `9`, `1.10` after `1.9`)."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part)
                 for part in re.findall(r"\d+|\D+", version))


def latest(versions: Iterable[str]) -> str:
    """The highest of `versions` by `version_key` ('' when there are none)."""
    return max(versions, key=lambda v: (version_key(v), v), default="")


# --- conda files and pip lists ---------------------------------------------------------------------------------

_CONDA_KEYS = ("name", "channels", "dependencies")
_CHANNEL = r"(?:[^\s:]+::)?"                       # `conda-forge::python=3.11`
_PYTHON_DEP = re.compile(rf"^{_CHANNEL}python(?![\w.-])\s*(?P<rest>.*)$")
_PIP_DEP = re.compile(rf"^{_CHANNEL}pip(?![\w.-])")
_PYTHON_VERSION = re.compile(r"^(?P<major>\d+)\.(?P<minor>\d+)(?:[.*][\d.*]*)?$")
_COMMENT = re.compile(r"(^|\s)#.*$")
# pip's options an environment may use, by every spelling pip accepts, and what they are.
_OPTIONS = {"-r": "requirement", "--requirement": "requirement", "-i": "index", "--index-url": "index",
            "--extra-index-url": "extra", "-f": "links", "--find-links": "links"}


@dataclass(slots=True)
class _Pip:
    """What pip lines add up to, as they are read (from YAML lists and `-r` files)."""

    code_dir: Path
    requirements: set[str] = field(default_factory=set)
    index_url: str = ""
    extra_index_urls: set[str] = field(default_factory=set)
    find_links: set[str] = field(default_factory=set)
    included_bytes: int = 0
    including: list[Path] = field(default_factory=list)     # the `-r` files being read, outermost first

    def line(self, raw: str, source: str, where: str, base_dir: Path) -> None:
        """One pip line: a comment, a requirement, or one of the options in `_OPTIONS`."""
        text = _COMMENT.sub("", raw).strip()
        if not text:
            return
        if len(text) > MAX_LINE_CHARS:
            raise JobFileError(source, where, f"a pip line is over {MAX_LINE_CHARS} characters")
        if not text.startswith("-"):
            self.requirements.add(" ".join(text.split()))
            return
        option, value = _option(text)
        kind = _OPTIONS.get(option)
        if kind is None:
            raise JobFileError(source, where, f"pip option {option} is not supported in an environment; use "
                                              "requirement lines, -r FILE, --index-url, --extra-index-url or --find-links")
        if not value:
            raise JobFileError(source, where, f"{option} needs a value")
        if kind == "requirement":
            self.include(value, source, where, base_dir)
        elif kind == "index":
            if self.index_url and self.index_url != value:
                raise JobFileError(source, where, f"a second --index-url ({value[:80]}) after {self.index_url[:80]}; "
                                                  "give one, and --extra-index-url for the others")
            self.index_url = value
        else:
            (self.extra_index_urls if kind == "extra" else self.find_links).add(value)

    def include(self, name: str, source: str, where: str, base_dir: Path) -> None:
        """Read the requirements file `name` (relative to `base_dir`) line by line into this."""
        path = Path(os.path.normpath(base_dir / name))
        if path in self.including:
            raise JobFileError(source, where, f"-r {name} includes itself (through {self.including[0].name})")
        if len(self.including) >= MAX_INCLUDE_DEPTH:
            raise JobFileError(source, where, f"-r files nest more than {MAX_INCLUDE_DEPTH} deep")
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_INCLUDE_BYTES - self.included_bytes + 1)
        except OSError as err:
            raise JobFileError(source, where, f"cannot read -r {name} ({path}): {err.strerror}") from None
        self.included_bytes += len(data)
        if self.included_bytes > MAX_INCLUDE_BYTES:
            raise JobFileError(source, where, f"-r files over {MAX_INCLUDE_BYTES // 1024} KiB together")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise JobFileError(source, where, f"-r {name} ({path}) is not UTF-8 text") from None
        self.including.append(path)
        for number, line in _joined_lines(text):
            self.line(line, f"{path}:{number}", "", path.parent)
        self.including.pop()

    def spec(self) -> EnvSpec:
        return EnvSpec(pip=tuple(sorted(self.requirements)), index_url=self.index_url,
                       extra_index_urls=tuple(sorted(self.extra_index_urls)), find_links=tuple(sorted(self.find_links)))


def _option(text: str) -> tuple[str, str]:
    """(option, value) of a pip option line: `-r x`, `-rx`, `--requirement x`, `--requirement=x`."""
    head, _, rest = text.partition(" ")
    if head.startswith("--"):
        option, eq, value = head.partition("=")
        return option, value if eq else rest.strip()
    if len(head) > 2:       # -rFILE
        return head[:2], head[2:]
    return head, rest.strip()


def _joined_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of a requirements file, a line ending in a backslash joined with the next, as pip does."""
    joined: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not pending:
            start = number
        if line.endswith("\\") and not _COMMENT.search(line):
            pending += line[:-1]
            continue
        joined.append((start, pending + line))
        pending = ""
    if pending:
        joined.append((start, pending))
    return joined


def pip_lines(lines: Sequence[tuple[str, str]], *, source: str, code_dir: Path) -> EnvSpec:
    """The spec of pip lines, each given with the YAML path it was read at: requirement lines and the options of
    `_OPTIONS`, `-r FILE` relative to the code directory (and within a file, relative to that file)."""
    pip = _Pip(code_dir)
    for where, line in lines:
        pip.line(line, source, where, code_dir)
    spec = pip.spec()
    problem = check(spec)
    if problem:
        raise JobFileError(source, "", problem)
    return spec


def from_conda(data: object, *, source: str, code_dir: Path, image: str = "") -> EnvSpec:
    """The spec of a conda file's mapping: `python=3.x` its python, `pip` dropped, a `pip:` list its pip lines
    (`-r` relative to the code directory), every other dependency a conda package; `name` plays no part."""
    if not isinstance(data, Mapping):
        raise JobFileError(source, "", "is not a mapping; a conda file has name, channels and dependencies")
    for key in data:
        if key not in _CONDA_KEYS:
            raise JobFileError(source, str(key), "unknown key; a conda file has name, channels and dependencies")
    channels = _strings(data.get("channels"), source, "channels")
    dependencies = data.get("dependencies")
    if dependencies is not None and not isinstance(dependencies, list):
        raise JobFileError(source, "dependencies", "must be a list")
    python, conda, pip = "", set(), _Pip(code_dir)
    for index, dep in enumerate(dependencies or ()):
        where = f"dependencies[{index}]"
        if isinstance(dep, Mapping):
            if set(dep) != {"pip"}:
                raise JobFileError(source, where, "a mapping among the dependencies must be `pip: [lines]` alone")
            lines = dep["pip"]
            if not isinstance(lines, list):
                raise JobFileError(source, f"{where}.pip", "must be a list of requirement lines")
            for n, line in enumerate(lines):
                if not isinstance(line, str):
                    raise JobFileError(source, f"{where}.pip[{n}]", "must be a requirement line (a string)")
                pip.line(line, source, f"{where}.pip[{n}]", code_dir)
            continue
        if not isinstance(dep, str) or not dep.strip():
            raise JobFileError(source, where, "must be a package such as numpy=1.26, or `pip: [lines]`")
        text = " ".join(dep.split())
        if (found := _PYTHON_DEP.match(text)) is not None:
            version = _python_version(found["rest"], source, where, text)
            if python and version and version != python:
                raise JobFileError(source, where, f"python {version} after python {python}; ask for one")
            python = version or python
        elif not _PIP_DEP.match(text):
            conda.add(text)
    spec = pip.spec()
    spec = EnvSpec(python=python, pip=spec.pip, index_url=spec.index_url, extra_index_urls=spec.extra_index_urls,
                   find_links=spec.find_links, conda=tuple(sorted(conda)), channels=tuple(channels), image=image)
    problem = check(spec)
    if problem:
        raise JobFileError(source, "", problem)
    return spec


def _python_version(rest: str, source: str, where: str, text: str) -> str:
    """`3.11` of `=3.11`, `==3.11.7`, ` 3.11`, `=3.11.*`, `=3.11.7=h1234_0` (a build string); '' for a bare `python`."""
    if not rest:
        return ""
    found = None
    if not rest.startswith(("<", ">", "!", "~")):
        found = _PYTHON_VERSION.match(rest.lstrip("=").strip().split("=")[0].split()[0])
    if found is None:
        raise JobFileError(source, where, f"pin python to one version such as python=3.11, not {text!r}")
    return f"{int(found['major'])}.{int(found['minor'])}"


def _strings(value: object, source: str, where: str) -> list[str]:
    """A list of strings, stripped, in order, each once."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise JobFileError(source, where, "must be a list")
    seen: list[str] = []
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise JobFileError(source, f"{where}[{index}]", "must be a non-empty string")
        if item.strip() not in seen:
            seen.append(item.strip())
    return seen


__all__ = ["EnvSpec", "EnvRef", "identity", "node_platform", "check", "from_conda", "pip_lines", "parse_ref",
           "version_key", "latest", "to_dict", "from_dict"]
