"""What a run's process sees: its environment, the in-run SDK on its PYTHONPATH, its `python`, its command.

The environment is built from an allowlist, never inherited: a fixed PATH (with a python the run's user can
execute in front, and the `bin` of the run's own environment before it when it declared one, so that `python`
and `torchrun` are that environment's, with VIRTUAL_ENV or CONDA_PREFIX naming it), LANG, LC_ALL and TZ when
the agent has them, HOME, TMPDIR, USER and LOGNAME of the run's own, the agent's `run_environment`, the job's
`environment_variables`, the assignment's extra variables, then the run's `RUNYARD_*` variables and, when the
agent serves MLflow's tracking API (`tracking.py`), `MLFLOW_TRACKING_URI`, `MLFLOW_TRACKING_TOKEN`,
`MLFLOW_RUN_ID`, `MLFLOW_EXPERIMENT_NAME` and `MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT`, which nothing overrides.
Must not: pass anything else of the agent's environment to a run (its `RUNYARD_*` secrets above all), or
start processes (`containment` does).
"""

from __future__ import annotations

import logging
import os
import shutil
import site
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from agent.errors import CannotStart
from agent.reach import closed_directory, may_execute
from agent.rundirs import AttemptDirs
from agent.runusers import RunUser
from protos import runyard_pb2 as pb

log = logging.getLogger(__name__)

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PASSED_ON = ("LANG", "LC_ALL", "TZ")
_SDK_FILES = ("__init__.py", "sdk.py", "ids.py")
_PYTHON_NAMES = ("python", "python3")
_SCRIPT_MAX_BYTES = 64 << 10      # a console script is a few lines; anything larger is not one
_NOTHING: Mapping[str, str] = MappingProxyType({})


def install_sdk(dest: Path) -> Path:
    """Copy the stdlib-only SDK (`from runyard import Run`) to `dest/runyard`, readable by every run, writable by
    none but the agent; returns the dir for PYTHONPATH."""
    import runyard

    source = Path(runyard.__file__).parent
    package = dest / "runyard"
    package.mkdir(parents=True, exist_ok=True)
    for directory in (dest, package):
        os.chmod(directory, 0o755)
    for name in _SDK_FILES:
        shutil.copyfile(source / name, package / name)
        os.chmod(package / name, 0o644)
    return dest


def python_dir(configured: str, user: RunUser, shim_dir: Path) -> str:
    """The directory to put first on runs' PATH, so that `python` is an interpreter `user` can execute.

    `configured` (`python_bin_dir`; default: this agent's interpreter's dir) when its python is within the
    user's reach; else `shim_dir`, made to hold `python` and `python3` links to the first interpreter within
    reach (this agent's own, resolved, or python3 on the default PATH); '' when there is none.
    """
    wanted = Path(configured or Path(sys.executable).parent)
    if any(may_execute(wanted / name, user) for name in _PYTHON_NAMES):
        return str(wanted)
    found = [Path(os.path.realpath(sys.executable)),
             *(Path(p) for p in (shutil.which(name, path=DEFAULT_PATH) for name in _PYTHON_NAMES) if p)]
    interpreter = next((path for path in found if may_execute(path, user)), None)
    if interpreter is None:
        log.warning("no python that runs can execute; `python` in a run is whatever its PATH finds",
                    extra={"python_bin_dir": str(wanted), "user": user.name})
        return ""
    shim_dir.mkdir(exist_ok=True)
    os.chmod(shim_dir, 0o755)
    for name in _PYTHON_NAMES:
        link = shim_dir / name
        link.unlink(missing_ok=True)
        link.symlink_to(interpreter)
    _share_agent_packages(shim_dir, interpreter, user)
    (log.warning if configured else log.info)(
        "runs get python from a link", extra={"python_bin_dir": str(wanted), "python": str(interpreter),
                                              "link_dir": str(shim_dir), "why": "python_bin_dir is out of their reach"})
    return str(shim_dir)


def _share_agent_packages(shim_dir: Path, interpreter: Path, user: RunUser) -> None:
    """Make the linked `python` see the agent's installed packages, as runs see them when the agent's own python is
    within their reach: `shim_dir` becomes a venv of `interpreter` (with its system packages) whose site-packages
    names the agent's, when `interpreter` is the agent's python version and the runs can read those packages.
    As in any venv, the prefix is the parent of the directory holding `python`: its `lib` is made there."""
    prefix = shim_dir.parent
    (shim_dir / "pyvenv.cfg").unlink(missing_ok=True)
    if (prefix / "lib").is_dir():
        shutil.rmtree(prefix / "lib")
    wanted = f"{sys.version_info.major}.{sys.version_info.minor}"
    try:
        version = subprocess.run([str(interpreter), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError) as err:
        log.warning("cannot ask the runs' python for its version", extra={"python": str(interpreter), "error": str(err)})
        return
    packages = [p for p in site.getsitepackages() if Path(p).is_dir() and closed_directory(Path(p), user) is None]
    if version != wanted or not packages:
        return
    (shim_dir / "pyvenv.cfg").write_text(
        f"home = {interpreter.parent}\ninclude-system-site-packages = true\nversion = {version}\n")
    own = prefix / "lib" / f"python{version}" / "site-packages"
    own.mkdir(parents=True)
    for directory in (prefix / "lib", own.parent, own):
        os.chmod(directory, 0o755)
    (own / "agent.pth").write_text("".join(f"{p}\n" for p in packages))
    os.chmod(own / "agent.pth", 0o644)
    os.chmod(shim_dir / "pyvenv.cfg", 0o644)
    _share_agent_commands(shim_dir, Path(sys.executable).parent)


def _share_agent_commands(shim_dir: Path, bin_dir: Path) -> None:
    """The commands of the agent's packages (`torchrun`, `mlflow`), for runs that cannot reach `bin_dir`: each
    script there whose `#!` names a python of `bin_dir` is copied to `shim_dir`, naming the linked python."""
    for script in sorted(bin_dir.iterdir()):
        target = shim_dir / script.name
        if script.name.startswith(_PYTHON_NAMES) or not script.is_file():
            continue
        try:
            with script.open("rb") as f:
                text = f.read(_SCRIPT_MAX_BYTES + 1)
        except OSError:
            continue
        first, _, rest = text.partition(b"\n")
        interpreter = first[2:].strip().split(b" ")[0] if first.startswith(b"#!") else b""
        # the same directory, also when one of the two paths goes through a link (a venv reached by a symlink)
        if len(text) > _SCRIPT_MAX_BYTES or (os.path.realpath(os.path.dirname(os.fsdecode(interpreter)))
                                             != os.path.realpath(bin_dir)):
            continue
        target.unlink(missing_ok=True)
        target.write_bytes(b"#!" + os.fsencode(shim_dir / "python") + b"\n" + rest)
        os.chmod(target, 0o755)


def run_environment(asg: pb.Assignment, *, dirs: AttemptDirs, user: RunUser, sdk_dir: Path, python_bin: str,
                    extra: Mapping[str, str] = _NOTHING, agent_env: Mapping[str, str] = os.environ,
                    env_dir: str = "", env_variable: str = "VIRTUAL_ENV", tracking_uri: str = "",
                    tracking_token: str = "") -> dict[str, str]:
    """The whole environment of one run; nothing of `agent_env` but the `PASSED_ON` variables. `env_dir`: the
    run's built environment (a venv, or a conda prefix with `env_variable` CONDA_PREFIX). `tracking_uri` and
    `tracking_token`: the agent's MLflow endpoint and the attempt's token there."""
    env = {name: agent_env[name] for name in PASSED_ON if name in agent_env}
    env.update(HOME=str(dirs.home), TMPDIR=str(dirs.tmp), USER=user.name, LOGNAME=user.name)
    env.update(extra)
    env.update(asg.spec.environment)
    env.update(asg.extra_env)
    path = env.get("PATH") or DEFAULT_PATH
    first = [os.path.join(env_dir, "bin")] if env_dir else []
    first += [python_bin] if python_bin else []
    pythonpath = [str(sdk_dir)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    if env_dir:
        env[env_variable] = env_dir
    env.update(
        PATH=os.pathsep.join([*first, path]),
        PYTHONPATH=os.pathsep.join(pythonpath),
        PYTHONUNBUFFERED="1",
        RUNYARD_RUN_ID=asg.run_id,
        RUNYARD_PARENT_RUN_ID=asg.parent_run_id,
        RUNYARD_EXPERIMENT=asg.experiment,
        RUNYARD_WORKSPACE=asg.workspace,
        RUNYARD_ATTEMPT=str(asg.attempt),
        RUNYARD_OUTPUTS_DIR=str(dirs.outputs),
        RUNYARD_RECORDS_FILE=str(dirs.records),
        CUDA_VISIBLE_DEVICES=",".join(str(i) for i in asg.gpu_indices),
    )
    if tracking_uri:
        # the endpoint has no UI: the client's "View run ... at http://127.0.0.1:PORT" would point nowhere
        env.update(MLFLOW_TRACKING_URI=tracking_uri, MLFLOW_TRACKING_TOKEN=tracking_token, MLFLOW_RUN_ID=asg.run_id,
                   MLFLOW_EXPERIMENT_NAME=asg.experiment, MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT="true")
    return env


def check_command(argv: list[str], *, cwd: Path, env: dict[str, str], user: RunUser) -> None:
    """Raise CannotStart unless `argv[0]` names a file `user` can execute, found the way exec would find it.

    The command is started through a small wrapper (a shell that joins the run's cgroup, or the tether, then
    setpriv), so a missing command would otherwise show as the wrapper's own error message and exit status.
    """
    if not argv:
        raise CannotStart("cannot start the run: its command is empty")
    name = argv[0]
    if "/" in name:
        path = Path(name) if os.path.isabs(name) else cwd / name
        if not path.is_file():
            raise CannotStart(f"cannot start {name!r}: No such file or directory")
        if not may_execute(path, user):
            raise CannotStart(f"cannot start {name!r}: Permission denied")
        return
    # Relative PATH entries (and empty ones, meaning ".") are relative to the run's directory, as for exec.
    for entry in env.get("PATH", DEFAULT_PATH).split(os.pathsep):
        if may_execute((Path(entry) if os.path.isabs(entry) else cwd / (entry or ".")) / name, user):
            return
    raise CannotStart(f"cannot start {name!r}: No such file or directory")
