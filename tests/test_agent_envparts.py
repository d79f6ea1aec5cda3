"""The parts of runs' environments on a node, one by one: the container command lines, interpreter discovery,
builder detection, the build plan and whose fault a failure is, the cache's lock, publishing, leftovers and the
eviction rule. Real files and processes; no network."""

from __future__ import annotations

import errno
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.builders import Builders, find_builders
from agent.containers import (
    ContainerRun, Mount, Runtime, apptainer_ref, container_env, pull_argv, remove_argv, run_argv,
)
from agent.envbuild import (
    DETAIL_CHARS, LOW_DISK_BYTES, BuildPlan, EnvKind, IndexSettings, Refusal, failure_detail, index_options,
    is_node_fault, plan_build,
)
from agent.envcache import MARKER, CachedEnv, EnvCache, choose_evictions
from agent.interpreters import Interpreter, candidates, find_interpreters, matches, pick, version_of, versions
from runyard.envspec import EnvSpec

HASH_A, HASH_B = "a" * 64, "b" * 64

# --- container command lines ----------------------------------------------------------------------------------

RUN = ContainerRun(runtime=Runtime.DOCKER, binary="/usr/bin/docker", image="nvcr.io/nvidia/pytorch:24.05-py3",
                   name="runyard-r1-2", argv=("python", "train.py", "--lr", "3e-4"), workdir="/runs/attempts/r1-2/code",
                   mounts=(Mount("/runs/attempts/r1-2"), Mount("/runs/sdk", read_only=True)),
                   env_names=("HOME", "PATH", "RUNYARD_RUN_ID", "WANDB_API_KEY"), uid=200007, gid=200007,
                   gpus=(1, 3))
COMMON = ["--rm", "--init", "--name", "runyard-r1-2", "--pull", "never", "--user", "200007:200007", "--cap-drop", "ALL",
          "--security-opt", "no-new-privileges", "--network", "host", "--shm-size", "8g",
          "--workdir", "/runs/attempts/r1-2/code", "--volume", "/runs/attempts/r1-2:/runs/attempts/r1-2",
          "--volume", "/runs/sdk:/runs/sdk:ro", "--env", "HOME", "--env", "RUNYARD_RUN_ID", "--env", "WANDB_API_KEY"]
TAIL = ["nvcr.io/nvidia/pytorch:24.05-py3", "python", "train.py", "--lr", "3e-4"]


def with_runtime(runtime: Runtime, binary: str, **changes: object) -> ContainerRun:
    values = {f: getattr(RUN, f) for f in RUN.__dataclass_fields__}
    values.update(runtime=runtime, binary=binary, **changes)
    return ContainerRun(**values)


def test_docker_runs_the_command_as_the_runs_uid_with_its_gpus_quoted_as_one_field() -> None:
    assert run_argv(RUN) == ["/usr/bin/docker", "run", *COMMON, "--gpus", '"device=1,3"', *TAIL]


def test_podman_passes_the_gpus_as_cdi_devices() -> None:
    run = with_runtime(Runtime.PODMAN, "/usr/bin/podman")
    assert run_argv(run) == ["/usr/bin/podman", "run", *COMMON, "--device", "nvidia.com/gpu=1",
                             "--device", "nvidia.com/gpu=3", *TAIL]


def test_a_container_without_gpus_asks_for_none() -> None:
    assert run_argv(with_runtime(Runtime.DOCKER, "docker", gpus=())) == ["docker", "run", *COMMON, *TAIL]


def test_apptainer_runs_the_sif_with_the_same_paths_bound_and_the_nodes_gpus() -> None:
    run = with_runtime(Runtime.APPTAINER, "/usr/bin/apptainer", image="/envs/.builds/h-1/image.sif")
    assert run_argv(run) == [
        "/usr/bin/apptainer", "exec", "--contain", "--pwd", "/runs/attempts/r1-2/code",
        "--bind", "/runs/attempts/r1-2:/runs/attempts/r1-2", "--bind", "/runs/sdk:/runs/sdk:ro", "--nv",
        "/envs/.builds/h-1/image.sif", "python", "train.py", "--lr", "3e-4"]


def test_no_value_of_the_runs_environment_is_on_a_command_line() -> None:
    for runtime in Runtime:
        argv = run_argv(with_runtime(runtime, str(runtime)))
        assert not any("=" in arg and arg.split("=", 1)[0] in RUN.env_names for arg in argv)


@pytest.mark.parametrize(("runtime", "visible"), [
    (Runtime.DOCKER, "0,1"), (Runtime.PODMAN, "0,1"), (Runtime.APPTAINER, "1,3")])
def test_cuda_visible_devices_as_the_container_numbers_the_gpus(runtime: Runtime, visible: str) -> None:
    env = container_env(runtime, {"CUDA_VISIBLE_DEVICES": "1,3", "HOME": "/h"}, [1, 3])
    assert env == {"CUDA_VISIBLE_DEVICES": visible, "HOME": "/h"}


def test_pulling_and_removing() -> None:
    assert pull_argv(Runtime.DOCKER, "docker", "alpine:3", "/envs/x") == ["docker", "pull", "alpine:3"]
    assert pull_argv(Runtime.PODMAN, "podman", "alpine:3", "/envs/x") == ["podman", "pull", "alpine:3"]
    assert pull_argv(Runtime.APPTAINER, "apptainer", "alpine:3", "/envs/x") == [
        "apptainer", "pull", "/envs/x/image.sif", "docker://alpine:3"]
    assert apptainer_ref("oras://ghcr.io/x/y:1") == "oras://ghcr.io/x/y:1"
    assert remove_argv(Runtime.DOCKER, "docker", "runyard-r-1") == ["docker", "rm", "--force", "runyard-r-1"]
    assert remove_argv(Runtime.PODMAN, "podman", "runyard-r-1") == ["podman", "rm", "--force", "runyard-r-1"]
    assert remove_argv(Runtime.APPTAINER, "apptainer", "runyard-r-1") is None


# --- interpreters ----------------------------------------------------------------------------------------------


def fake_python(path: Path, version: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho {version}\n")
    path.chmod(0o755)
    return path


def test_candidates_are_the_agents_own_then_python3_names_in_the_searched_dirs_and_path(tmp_path: Path) -> None:
    usr, extra = tmp_path / "usr-bin", tmp_path / "on-path"
    for name in ("python3", "python3.11", "python3.11-config", "python2.7", "pythonista"):
        fake_python(usr / name, "3.11.7")
    fake_python(extra / "python3.12", "3.12.1")
    found = candidates(own="/opt/agent/bin/python", dirs=(str(usr),), search_path=f"relative:{extra}")
    assert found == [Path("/opt/agent/bin/python"), usr / "python3", usr / "python3.11", extra / "python3.12"]


def binary(path: Path) -> Path:
    """An executable ELF file at `path` (a copy of /bin/true): a stand-in interpreter, asked through `ask`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(shutil.which("true") or "/bin/true", path)
    return path


def test_interpreters_are_one_per_file_and_only_those_runs_can_use(tmp_path: Path) -> None:
    real = binary(tmp_path / "bin" / "python3.11")
    (tmp_path / "bin" / "python3").symlink_to("python3.11")
    hidden = binary(tmp_path / "hidden" / "python3.10")
    broken = binary(tmp_path / "bin" / "python3.9")
    shim = fake_python(tmp_path / "shims" / "python3.12", "3.12.1")     # a script in front of an interpreter
    answers = {real: "3.11.7", hidden: "3.10.4", shim: "3.12.1"}
    asked: list[Path] = []

    def ask(path: Path) -> str | None:
        asked.append(path)
        return answers.get(path)

    found = find_interpreters([real, tmp_path / "bin" / "python3", hidden, broken, shim, tmp_path / "missing"],
                              usable=lambda path: "hidden" not in str(path), ask=ask)
    assert found == [Interpreter(real, "3.11.7", own=True)]
    assert asked == [real, broken], "each file once; neither one out of the runs' reach nor a script is asked"


def test_the_version_is_asked_of_the_interpreter_itself() -> None:
    assert version_of(Path(sys.executable)) == "%d.%d.%d" % sys.version_info[:3]
    assert version_of(Path("/bin/true")) is None


OWN = Interpreter(Path("/agent/python3.11"), "3.11.7", own=True)
SYS11 = Interpreter(Path("/usr/bin/python3.11"), "3.11.2")
SYS12 = Interpreter(Path("/usr/bin/python3.12"), "3.12.1")
LOCAL11 = Interpreter(Path("/usr/local/bin/python3.11"), "3.11.9")


@pytest.mark.parametrize(("wanted", "found", "chosen"), [
    ("3.11", [OWN, SYS11, SYS12], OWN),             # the highest matching release
    ("3.11", [OWN, SYS11, LOCAL11], LOCAL11),
    ("3.11.2", [OWN, SYS11, LOCAL11], SYS11),
    ("3", [OWN, SYS11, SYS12], SYS12),
    ("3.1", [OWN, SYS11, SYS12], None),             # 3.1 is not 3.11
    ("3.9", [OWN, SYS11], None),
    ("", [SYS12, OWN], OWN),                        # none asked: the agent's own
    ("", [SYS11, SYS12], SYS12),                    # ... or the highest when runs cannot use the agent's
    ("", [], None),
])
def test_picking_an_interpreter(wanted: str, found: list[Interpreter], chosen: Interpreter | None) -> None:
    assert pick(found, wanted) == chosen


def test_versions_are_reported_once_each_highest_first() -> None:
    assert versions([SYS11, OWN, SYS12, Interpreter(Path("/x"), "3.11.2")]) == ["3.12.1", "3.11.7", "3.11.2"]
    assert matches("3.11.7", "3.11") and matches("3.11.7", "") and not matches("3.11.7", "3.1")


# --- builders --------------------------------------------------------------------------------------------------


def which_of(found: dict[str, str]) -> Callable[[str], str | None]:
    return lambda name: found.get(name)


def test_a_docker_client_without_a_daemon_is_not_offered_but_a_podman_that_answers_is(tmp_path: Path) -> None:
    on_path = {"docker": "/usr/local/bin/docker", "podman": "/usr/bin/podman", "micromamba": "/opt/mm/micromamba"}
    answering = {"/usr/bin/podman"}
    found = find_builders(uv_bin=sys.executable, which=which_of(on_path),
                          probe=lambda runtime, binary: binary in answering)
    assert found == Builders(uv=sys.executable, conda="/opt/mm/micromamba", runtime=Runtime.PODMAN,
                             runtime_bin="/usr/bin/podman")
    assert found.names() == ["uv", "micromamba", "podman"]
    only_docker = find_builders(uv_bin=sys.executable, which=which_of({"docker": "/usr/local/bin/docker"}),
                                probe=lambda runtime, binary: False)
    assert only_docker.runtime is None and only_docker.names() == ["uv"]


def test_configured_builders_win_and_none_turns_images_off(tmp_path: Path) -> None:
    conda = fake_python(tmp_path / "conda", "x")
    apptainer = fake_python(tmp_path / "apptainer", "x")
    found = find_builders(uv_bin=sys.executable, conda_builder=str(conda), container_runtime=str(apptainer),
                          which=which_of({"podman": "/usr/bin/podman"}), probe=lambda r, b: True)
    assert (found.conda_kind, found.runtime, found.runtime_bin) == ("conda", Runtime.APPTAINER, str(apptainer))
    off = find_builders(uv_bin=sys.executable, container_runtime="none",
                        which=which_of({"podman": "/usr/bin/podman"}), probe=lambda r, b: True)
    assert off.runtime is None


def test_uv_is_found_next_to_the_agent_and_a_missing_one_is_not_offered(tmp_path: Path) -> None:
    assert find_builders(which=which_of({})).uv
    assert find_builders(uv_bin=str(tmp_path / "uv"), which=which_of({})).names() == []


# --- the build plan ------------------------------------------------------------------------------------------

UV = "/opt/agent/bin/uv"
OFFLINE = IndexSettings("none", (), ("/srv/wheelhouse",))
DEST = "/envs/.builds/h-1"


def plan(spec: EnvSpec, builders: Builders = Builders(uv=UV), index: IndexSettings = OFFLINE) -> BuildPlan | Refusal:
    return plan_build(spec, dest=DEST, builders=builders, interpreters=[OWN, SYS11, SYS12], index=index,
                      uv_cache="/envs/.uv-cache", conda_root="/envs/.conda")


def test_a_venv_from_the_nodes_interpreter_then_the_requirements_from_a_file() -> None:
    found = plan(EnvSpec(python="3.11", pip=("numpy==2.0", "tinyalpha")))
    assert isinstance(found, BuildPlan) and found.kind is EnvKind.VENV
    assert (found.python, found.interpreter) == ("3.11.7", "/agent/python3.11")
    venv, install = found.steps
    assert venv.argv == (UV, "venv", "--no-config", "--no-python-downloads", "--python-preference", "only-system",
                         "--cache-dir", "/envs/.uv-cache", "--python", "/agent/python3.11", DEST)
    assert install.argv == (UV, "pip", "install", "--no-config", "--no-python-downloads", "--cache-dir",
                            "/envs/.uv-cache", "--python", f"{DEST}/bin/python", "--compile-bytecode", "--no-index",
                            "--find-links", "/srv/wheelhouse", "-r", f"{DEST}/runyard-requirements.txt")
    assert install.files == ((f"{DEST}/runyard-requirements.txt", "numpy==2.0\ntinyalpha\n"),)


@pytest.mark.parametrize("line", [
    "numpy==2.0", "torch>=2.3; platform_machine == 'x86_64'", "pkg[extra]~=1.2", "tinyalpha --hash=sha256:abc",
    "pkg @ https://example.org/pkg-1.0-py3-none-any.whl", "pkg @ git+https://github.com/org/pkg@v1.0",
])
def test_requirement_lines_that_name_packages_pass(line: str) -> None:
    found = plan(EnvSpec(python="3.11", pip=(line,)))
    assert isinstance(found, BuildPlan), found


def test_python_alone_is_only_a_venv() -> None:
    found = plan(EnvSpec(python="3.12"))
    assert isinstance(found, BuildPlan) and [s.what for s in found.steps] == ["create the venv (python 3.12.1)"]


@pytest.mark.parametrize(("spec", "index", "options"), [
    (EnvSpec(), IndexSettings(), []),
    (EnvSpec(index_url="https://spec/simple", extra_index_urls=("https://x/simple",),
             find_links=("https://links/",)), IndexSettings(),
     ["--index-url", "https://spec/simple", "--extra-index-url", "https://x/simple", "--find-links", "https://links/"]),
    (EnvSpec(index_url="https://spec/simple", extra_index_urls=("https://x/simple",)),
     IndexSettings("https://mirror/simple", ("https://node-extra/simple",), ("/srv/wheels",)),
     ["--index-url", "https://mirror/simple", "--extra-index-url", "https://node-extra/simple",
      "--extra-index-url", "https://x/simple", "--find-links", "/srv/wheels"]),
    (EnvSpec(index_url="https://spec/simple", extra_index_urls=("https://x/simple",), find_links=("https://l/",)),
     IndexSettings("none", ("https://ignored/simple",), ("/srv/wheels",)),
     ["--no-index", "--find-links", "/srv/wheels", "--find-links", "https://l/"]),
])
def test_the_nodes_index_settings_replace_or_add_to_the_specs(spec: EnvSpec, index: IndexSettings,
                                                               options: list[str]) -> None:
    assert index_options(spec, index) == options


def test_conda_packages_are_created_by_micromamba_then_pip_lines_by_uv() -> None:
    found = plan(EnvSpec(python="3.10", pip=("tinyalpha",), conda=("cudatoolkit=11.8",), channels=("nvidia",)),
                 Builders(uv=UV, conda="/usr/bin/micromamba"))
    assert isinstance(found, BuildPlan) and found.kind is EnvKind.CONDA
    create, install = found.steps
    assert create.fresh_dir and create.argv == (
        "/usr/bin/micromamba", "create", "--yes", "--prefix", DEST, "--override-channels", "-c", "nvidia",
        "--root-prefix", "/envs/.conda", "python=3.10", "cudatoolkit=11.8")
    assert install.argv[:3] == (UV, "pip", "install") and f"{DEST}/bin/python" in install.argv


def test_an_image_is_pulled_by_the_nodes_runtime() -> None:
    found = plan(EnvSpec(image="alpine:3"), Builders(uv=UV, runtime=Runtime.APPTAINER, runtime_bin="/bin/apptainer"))
    assert isinstance(found, BuildPlan) and found.kind is EnvKind.IMAGE
    assert [s.argv for s in found.steps] == [("/bin/apptainer", "pull", f"{DEST}/image.sif", "docker://alpine:3")]


@pytest.mark.parametrize(("spec", "builders", "says", "node_fault"), [
    (EnvSpec(pip=("-r /etc/shadow",)), Builders(uv=UV), "pip line 1 '-r /etc/shadow': options are not allowed", False),
    (EnvSpec(pip=("ok", "--index-url=http://x")), Builders(uv=UV), "pip line 2", False),
    (EnvSpec(pip=("/root/secret",)), Builders(uv=UV), "local paths and file: URLs are not allowed", False),
    (EnvSpec(pip=("./here",)), Builders(uv=UV), "local paths", False),
    (EnvSpec(pip=("pkg @ file:///etc",)), Builders(uv=UV), "local paths", False),
    (EnvSpec(pip=("pkg @ /root/project",)), Builders(uv=UV), "local paths", False),
    (EnvSpec(pip=("some/dir",)), Builders(uv=UV), "local paths", False),
    (EnvSpec(pip=("tinyalpha\n-r /etc/shadow",)), Builders(uv=UV), "options are not allowed", False),
    (EnvSpec(conda=("--prefix=/",)), Builders(uv=UV, conda="/bin/micromamba"), "conda package '--prefix=/'", False),
    (EnvSpec(conda=("x",), channels=("file:///srv/chan",)), Builders(uv=UV, conda="/bin/micromamba"),
     "conda channel 'file:///srv/chan'", False),
    (EnvSpec(image="--privileged"), Builders(uv=UV, runtime=Runtime.DOCKER, runtime_bin="docker"),
     "options and local archives are not allowed", False),
    (EnvSpec(image="docker-archive:/root/x.tar"), Builders(uv=UV, runtime=Runtime.APPTAINER, runtime_bin="a"),
     "local archives", False),
    (EnvSpec(pip=("x",), find_links=("/srv/wheels",)), Builders(uv=UV), "find_links '/srv/wheels'", False),
    (EnvSpec(index_url="file:///etc"), Builders(uv=UV), "index_url 'file:///etc'", False),
    (EnvSpec(python="3.9"), Builders(uv=UV), "no python 3.9 on this node (it has 3.12.1, 3.11.7, 3.11.2)", False),
    (EnvSpec(conda=("cudnn",)), Builders(uv=UV), "this node has no conda builder (micromamba or conda)", False),
    (EnvSpec(image="alpine"), Builders(uv=UV), "this node has no container runtime", False),
    (EnvSpec(image="alpine", pip=("x",)), Builders(uv=UV), "cannot also list pip or conda packages", False),
    (EnvSpec(python="3.11"), Builders(), "uv is missing on this node", True),
])
def test_specs_the_node_refuses_before_running_anything(spec: EnvSpec, builders: Builders, says: str,
                                                       node_fault: bool) -> None:
    found = plan(spec, builders)
    assert isinstance(found, Refusal) and says in found.detail and found.node_fault is node_fault


@pytest.mark.parametrize(("exit_code", "output", "free", "node"), [
    (1, ["error: No solution found when resolving dependencies"], 10**12, False),
    (2, ["error: Failed to parse: `numpy==>1`"], 10**12, False),
    (1, ["error: Failed to install: x.whl", "  Caused by: No space left on device (os error 28)"], 10**12, True),
    (1, ["OSError: [Errno 122] Disk quota exceeded"], 10**12, True),
    (1, ["error: Read-only file system (os error 30)"], 10**12, True),
    (137, ["Resolved 200 packages"], 10**12, True),       # killed: the OOM killer
    (1, ["error: something"], LOW_DISK_BYTES - 1, True),   # hardly any space left on the node
])
def test_whose_fault_a_failed_step_is(exit_code: int, output: list[str], free: int, node: bool) -> None:
    assert is_node_fault(exit_code, output, free_bytes=free) is node
    assert os.strerror(errno.ENOSPC) == "No space left on device"


def test_the_failure_detail_is_the_last_lines_of_the_builder() -> None:
    lines = [f"line {i}" for i in range(40)] + ["", "error: the end"]
    detail = failure_detail("install 2 pip requirements", 1, lines)
    assert detail.startswith("environment build failed: install 2 pip requirements exited 1:\nline 29\n")
    assert detail.endswith("line 39\nerror: the end")
    long = failure_detail("x", 1, ["y" * 5000])
    assert len(long) < DETAIL_CHARS + 100 and long.endswith("y" * 10)


# --- the cache on disk ---------------------------------------------------------------------------------------


@pytest.fixture
def cache(tmp_path: Path) -> EnvCache:
    found = EnvCache(tmp_path / "envs")
    found.open()
    return found


def built(cache: EnvCache, env_hash: str, content: str = "x") -> Path:
    path = cache.new_build_dir(env_hash)
    (path / "bin").mkdir()
    (path / "bin" / "tool").write_text(content)
    (path / "bin" / "tool").chmod(0o700)
    return path


def test_an_environment_is_used_only_once_published_and_then_readable_by_all_writable_by_none(
        cache: EnvCache) -> None:
    path = built(cache, HASH_A)
    assert cache.lookup(HASH_A) is None and cache.published() == {}
    size = cache.publish(HASH_A, path, {"kind": "venv"})
    assert cache.lookup(HASH_A) == path and cache.published() == {HASH_A: path} and size > 0
    assert os.readlink(cache.root / HASH_A) == f".builds/{path.name}"
    assert (path / "bin" / "tool").stat().st_mode & 0o777 == 0o755
    assert path.stat().st_mode & 0o777 == 0o755 and (path / MARKER).stat().st_mode & 0o777 == 0o644
    assert [e.hash for e in cache.entries()] == [HASH_A] and not list(cache.root.glob(".*.link"))


def test_publishing_again_replaces_the_link_whole(cache: EnvCache) -> None:
    first = built(cache, HASH_A)
    cache.publish(HASH_A, first, {})
    second = built(cache, HASH_A)
    cache.publish(HASH_A, second, {})
    assert cache.lookup(HASH_A) == second
    assert cache.remove_leftovers() == 1 and not first.exists() and second.exists()


def test_the_build_lock_is_exclusive_and_released_on_close(cache: EnvCache) -> None:
    held = cache.try_lock(HASH_A)
    assert held is not None
    assert cache.try_lock(HASH_A) is None, "a second open file of this very process is refused too"
    other = cache.try_lock(HASH_B)
    assert other is not None
    cache.unlock(held)
    again = cache.try_lock(HASH_A)
    assert again is not None
    for fd in (again, other):
        cache.unlock(fd)


def test_leftovers_are_every_unpublished_build_but_one_being_built(cache: EnvCache) -> None:
    published = built(cache, HASH_A)
    cache.publish(HASH_A, published, {})
    half_built = built(cache, HASH_A)                   # an agent killed in the middle of a rebuild
    failed = built(cache, HASH_B)                       # a build that failed and could not be removed
    (cache.root / ("c" * 64)).symlink_to(".builds/gone")        # a link to nothing
    (cache.root / f".{HASH_B}-1234.link").symlink_to(f".builds/{failed.name}")   # a link never renamed into place
    in_progress = built(cache, "d" * 64)
    lock = cache.try_lock("d" * 64)                     # another process is building this one
    try:
        assert cache.remove_leftovers() == 4
    finally:
        assert lock is not None
        cache.unlock(lock)
    assert sorted(p.name for p in cache.builds.iterdir()) == sorted([published.name, in_progress.name])
    assert cache.published() == {HASH_A: published}
    assert sorted(p.name for p in cache.root.iterdir() if not p.name.startswith(".")) == [HASH_A]


def test_unpublishing_removes_the_link_first(cache: EnvCache) -> None:
    path = built(cache, HASH_A)
    cache.publish(HASH_A, path, {})
    assert cache.unpublish(HASH_A) == path and cache.lookup(HASH_A) is None and path.exists()
    assert cache.unpublish(HASH_A) is None


def env(name: str, size: int, used: float) -> CachedEnv:
    return CachedEnv(name, Path(name), size, used)


@pytest.mark.parametrize(("entries", "max_bytes", "keep", "evicted"), [
    ([env("a", 10, 1), env("b", 10, 2)], 20, set(), []),                   # within the limit
    ([env("a", 10, 1), env("b", 10, 2)], 0, set(), []),                    # 0: no limit
    ([env("a", 10, 3), env("b", 10, 1), env("c", 10, 2)], 15, set(), ["b", "c"]),    # least recently used first
    ([env("a", 10, 3), env("b", 10, 1), env("c", 10, 2)], 25, set(), ["b"]),         # only as many as needed
    ([env("a", 10, 3), env("b", 10, 1), env("c", 10, 2)], 15, {"b"}, ["c", "a"]),    # never one in use
    ([env("a", 10, 1), env("b", 10, 2)], 5, {"a", "b"}, []),                # everything in use: over the limit
    ([env("b", 10, 1), env("a", 10, 1)], 10, set(), ["a"]),                 # a tie goes by name, the same each time
])
def test_eviction_order(entries: list[CachedEnv], max_bytes: int, keep: set[str], evicted: list[str]) -> None:
    assert choose_evictions(entries, max_bytes=max_bytes, keep=keep) == evicted
