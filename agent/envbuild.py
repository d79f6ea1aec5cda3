"""How an environment is built on this node: the checks a spec must pass, the command lines of each step, and
whose fault a failed build is. Pure: `environments.py` runs the steps and feeds back what happened.

What the spec asks for decides the kind:
- a venv (`python` and `pip` only): `uv venv` from the node's interpreter that `python` picks (never one uv
  would download), then `uv pip install` of the requirement lines, with bytecode compiled at build time (runs
  cannot write in the environment, so Python could never cache it for them).
- a conda prefix (other conda packages): micromamba or conda creates it with python and those packages from the
  spec's channels (conda-forge when it names none), then `uv pip install` into its python.
- an image: the container runtime pulls it (apptainer into the environment's directory, as image.sif).

Index options: the agent's `pip_index_url` replaces the spec's index ("none": no index at all, only find-links);
its `pip_extra_index_urls` and `pip_find_links` come first, the spec's own after them. The requirement lines go
into a requirements file, never onto the command line. The build runs as the agent, so a spec must not make it
read the node's files or pass it options: a requirement line that is an option (`-r`, `-e`, `--index-url`...),
spans lines, or names a local path or a file: URL is refused, and so is an index or find-links location of the
spec's that is not http(s), a conda package or channel that is an option or a path, and an image that is an
option or a local archive.

Whose fault: a build whose builder ran and refused the spec (a package not found, no solution, a bad line) is the
spec's: the run fails with `env_build_failed` and the node is not blamed. A builder that is missing or cannot
start, one killed by a signal, and a build that failed on the node's own errors (no space, quota, a read-only or
failing file system, out of memory, or less than `LOW_DISK_BYTES` left) are the node's: `agent_error`.
Must not: do I/O.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

from agent.builders import Builders
from agent.containers import pull_argv
from agent.interpreters import Interpreter, pick, versions
from runyard.envspec import EnvSpec

NO_INDEX = "none"
REQUIREMENTS_FILE = "runyard-requirements.txt"
DEFAULT_CHANNEL = "conda-forge"
LOW_DISK_BYTES = 64 * 1024**2
DETAIL_LINES = 12
DETAIL_CHARS = 1500
# Errors of the node, not of the spec, as the OS words them: "(os error 28)" from uv, strerror from Python.
NODE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.ENOMEM)
_NODE_TEXTS = tuple(f"(os error {n})" for n in NODE_ERRNOS) + tuple(os.strerror(n) for n in NODE_ERRNOS)
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S*")
_LOCAL_IMAGE = ("docker-archive:", "oci-archive:", "oci:", "file:", "/", ".", "~")


class EnvKind(StrEnum):
    VENV = "venv"
    CONDA = "conda"
    IMAGE = "image"


@dataclass(frozen=True, slots=True)
class IndexSettings:
    """The agent's own index options, applied to every build on the node."""

    index_url: str = ""                     # replaces the spec's; "none": --no-index
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()        # URLs or directories (a wheelhouse)


@dataclass(frozen=True, slots=True)
class Step:
    what: str                               # "create the venv": how the build log and a failure name it
    argv: tuple[str, ...]
    files: tuple[tuple[str, str], ...] = () # (path, text) to write before the step runs
    fresh_dir: bool = False                 # the builder creates the directory itself: remove the empty one first


@dataclass(frozen=True, slots=True)
class BuildPlan:
    kind: EnvKind
    steps: tuple[Step, ...]
    python: str = ""                        # the version of the interpreter a venv is made from
    interpreter: str = ""                   # its path, which must still be there when the build starts


@dataclass(frozen=True, slots=True)
class Refusal:
    """The spec cannot be built here; `node_fault` when that is the node's fault rather than the spec's."""

    detail: str
    node_fault: bool = False


def kind_of(spec: EnvSpec) -> EnvKind:
    if spec.image:
        return EnvKind.IMAGE
    return EnvKind.CONDA if spec.conda else EnvKind.VENV


def plan_build(spec: EnvSpec, *, dest: str, builders: Builders, interpreters: Sequence[Interpreter],
               index: IndexSettings, uv_cache: str, conda_root: str) -> BuildPlan | Refusal:
    """The steps that build `spec` into the empty directory `dest`, or why it cannot be built on this node."""
    refused = check_spec(spec)
    if refused is not None:
        return refused
    kind = kind_of(spec)
    if kind is EnvKind.IMAGE:
        if builders.runtime is None:
            return Refusal(f"image {spec.image!r}: this node has no container runtime (podman, docker or apptainer); "
                           "set container_runtime in its agent config, or run it on a node that has one")
        return BuildPlan(kind, (Step(f"pull {spec.image}",
                                     tuple(pull_argv(builders.runtime, builders.runtime_bin, spec.image, dest))),))
    if not builders.uv:
        return Refusal("uv is missing on this node (uv_bin in the agent config, or the uv package next to the agent)",
                       node_fault=True)
    install = _install_step(spec, dest=dest, uv=builders.uv, index=index, uv_cache=uv_cache)
    if kind is EnvKind.CONDA:
        if not builders.conda:
            return Refusal(f"conda packages {', '.join(spec.conda)}: this node has no conda builder (micromamba or "
                           "conda); set conda_builder in its agent config, or run it on a node that has one")
        create = Step("create the conda environment", _conda_argv(spec, builders, dest, conda_root), fresh_dir=True)
        return BuildPlan(kind, (create, *install))
    interpreter = pick(interpreters, spec.python)
    if interpreter is None:
        found = ", ".join(versions(interpreters)) or "none that runs can use"
        return Refusal(f"no python {spec.python} on this node (it has {found})")
    create = Step(f"create the venv (python {interpreter.version})",
                  (builders.uv, "venv", "--no-config", "--no-python-downloads", "--python-preference", "only-system",
                   "--cache-dir", uv_cache, "--python", str(interpreter.path), dest))
    return BuildPlan(kind, (create, *install), python=interpreter.version, interpreter=str(interpreter.path))


def check_spec(spec: EnvSpec) -> Refusal | None:
    """Why the spec must not be built by the agent at all, or None."""
    if spec.image and (spec.pip or spec.conda):
        return Refusal("an image environment cannot also list pip or conda packages; install them in the image")
    for number, line in enumerate(spec.pip, 1):
        text = line.strip()
        if text.startswith("-") or "\n" in text or "\r" in text:
            return Refusal(f"pip line {number} {text!r}: options are not allowed in an environment's requirements; "
                           "use its index_url, extra_index_urls or find_links")
        if _local(text):
            return Refusal(f"pip line {number} {text!r}: local paths and file: URLs are not allowed; "
                           "publish the package to an index or a wheelhouse the agent is configured with")
    for what, urls in (("index_url", (spec.index_url,) if spec.index_url else ()),
                       ("extra_index_urls", spec.extra_index_urls), ("find_links", spec.find_links)):
        for url in urls:
            if urlsplit(url).scheme not in ("http", "https"):
                return Refusal(f"{what} {url!r}: an environment's index locations must be http(s) URLs")
    for what, names in (("conda package", spec.conda), ("conda channel", spec.channels)):
        for name in names:
            if name.strip().startswith("-") or _local(name.strip()) or not name.strip():
                return Refusal(f"{what} {name!r}: options, local paths and file: URLs are not allowed")
    if spec.image and (spec.image.startswith("-") or spec.image.lower().startswith(_LOCAL_IMAGE)):
        return Refusal(f"image {spec.image!r}: options and local archives are not allowed; name an image in a registry")
    return None


def _local(text: str) -> bool:
    """True when `text` names something on the node's disk: a path, or a file: URL."""
    if text.startswith((".", "/", "~")) or "file:" in text.lower():
        return True
    outside_urls = _URL.sub("", text)
    return "/" in outside_urls or "\\" in outside_urls


def _install_step(spec: EnvSpec, *, dest: str, uv: str, index: IndexSettings, uv_cache: str) -> tuple[Step, ...]:
    if not spec.pip:
        return ()
    requirements = f"{dest}/{REQUIREMENTS_FILE}"
    argv = [uv, "pip", "install", "--no-config", "--no-python-downloads", "--cache-dir", uv_cache,
            "--python", f"{dest}/bin/python", "--compile-bytecode", *index_options(spec, index), "-r", requirements]
    text = "".join(f"{line.strip()}\n" for line in spec.pip)
    return (Step(f"install {len(spec.pip)} pip requirement{'s' if len(spec.pip) != 1 else ''}", tuple(argv),
                 files=((requirements, text),)),)


def index_options(spec: EnvSpec, index: IndexSettings) -> list[str]:
    """uv's index options for `spec` on a node with the agent's `index` settings."""
    options: list[str] = []
    if index.index_url == NO_INDEX:
        options.append("--no-index")
    else:
        chosen = index.index_url or spec.index_url
        if chosen:
            options += ["--index-url", chosen]
        for url in (*index.extra_index_urls, *spec.extra_index_urls):
            options += ["--extra-index-url", url]
    for location in (*index.find_links, *spec.find_links):
        options += ["--find-links", location]
    return options


def _conda_argv(spec: EnvSpec, builders: Builders, dest: str, conda_root: str) -> tuple[str, ...]:
    packages = list(spec.conda)
    if spec.python:
        packages.insert(0, f"python={spec.python}")
    elif spec.pip:
        packages.insert(0, "python")            # pip lines need an interpreter in the prefix
    channels = [arg for channel in (spec.channels or (DEFAULT_CHANNEL,)) for arg in ("-c", channel)]
    argv = [builders.conda, "create", "--yes", "--prefix", dest, "--override-channels", *channels]
    if builders.conda_kind == "micromamba":
        argv += ["--root-prefix", conda_root]
    return (*argv, *packages)


def is_node_fault(exit_code: int, output: Sequence[str], *, free_bytes: int) -> bool:
    """Whose fault a failed step is (see the module docstring): True for the node's."""
    if exit_code > 128 or exit_code < 0:
        return True
    if free_bytes < LOW_DISK_BYTES:
        return True
    return any(text in line for line in output for text in _NODE_TEXTS)


def failure_detail(what: str, exit_code: int, output: Sequence[str]) -> str:
    """The report's detail for a failed step: what failed and the last lines the builder wrote."""
    head = f"environment build failed: {what} exited {exit_code}"
    lines = [line for line in output if line.strip()][-DETAIL_LINES:]
    text = "\n".join(lines)
    if len(text) > DETAIL_CHARS:
        text = "..." + text[-DETAIL_CHARS:]
    return f"{head}:\n{text}" if text else head
