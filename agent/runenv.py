"""What a run's process sees: its environment, the in-run SDK on its PYTHONPATH, and its resolved command.

Must not: start processes (`containment` does), or pass any of the agent's own `RUNYARD_*` variables (the join
token, the node credential) to a run.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from agent.errors import CannotStart
from protos import runyard_pb2 as pb

_SDK_FILES = ("__init__.py", "sdk.py", "ids.py")


def install_sdk(dest: Path) -> Path:
    """Copy the stdlib-only SDK (`from runyard import Run`) to `dest/runyard`; returns the dir for PYTHONPATH."""
    import runyard

    source = Path(runyard.__file__).parent
    package = dest / "runyard"
    package.mkdir(parents=True, exist_ok=True)
    for name in _SDK_FILES:
        shutil.copyfile(source / name, package / name)
    return dest


def run_environment(asg: pb.Assignment, *, code_dir: Path, sdk_dir: Path, python_bin: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNYARD_")}
    env.update(asg.spec.environment)
    env.update(asg.extra_env)
    pythonpath = [str(sdk_dir)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env.update(
        PATH=f"{python_bin}{os.pathsep}{env.get('PATH', os.defpath)}",
        PYTHONPATH=os.pathsep.join(pythonpath),
        PYTHONUNBUFFERED="1",
        RUNYARD_RUN_ID=asg.run_id,
        RUNYARD_PARENT_RUN_ID=asg.parent_run_id,
        RUNYARD_EXPERIMENT=asg.experiment,
        RUNYARD_WORKSPACE=asg.workspace,
        RUNYARD_ATTEMPT=str(asg.attempt),
        RUNYARD_OUTPUTS_DIR=str(code_dir / "outputs"),
        RUNYARD_RECORDS_FILE=str(code_dir.parent / "records.jsonl"),
        CUDA_VISIBLE_DEVICES=",".join(str(i) for i in asg.gpu_indices),
    )
    return env


def check_command(argv: list[str], *, cwd: Path, env: dict[str, str]) -> None:
    """Raise CannotStart unless `argv[0]` names an executable file, found the way exec would find it.

    The command is started through a small wrapper (a shell that joins the run's cgroup, or the tether), so a
    missing command would otherwise show as the wrapper's own error message and exit status.
    """
    if not argv:
        raise CannotStart("cannot start the run: its command is empty")
    name = argv[0]
    if "/" in name:
        path = Path(name) if os.path.isabs(name) else cwd / name
        if not path.is_file():
            raise CannotStart(f"cannot start {name!r}: No such file or directory")
        if not os.access(path, os.X_OK):
            raise CannotStart(f"cannot start {name!r}: Permission denied")
        return
    # Relative PATH entries (and empty ones, meaning ".") are relative to the run's directory, as for exec.
    search = os.pathsep.join(entry if os.path.isabs(entry) else str(cwd / (entry or "."))
                             for entry in env.get("PATH", os.defpath).split(os.pathsep))
    if shutil.which(name, path=search) is None:
        raise CannotStart(f"cannot start {name!r}: No such file or directory")
