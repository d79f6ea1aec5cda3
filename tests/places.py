"""Where an agent started with the default config keeps a run's files: the agent's own rule (`agent.rundirs`)."""

from __future__ import annotations

import os
from pathlib import Path

from agent.config import AgentConfig
from agent.rundirs import AttemptDirs, RunRoot, choose_run_root
from agent.runusers import RunUsers


def run_root(data_dir: Path) -> RunRoot:
    sample = RunUsers.open(AgentConfig().uid_range, allow_root_runs=False).sample()
    return RunRoot(choose_run_root(data_dir, "", sample, euid=os.geteuid()))


def attempt_dirs(data_dir: Path, run_id: str, attempt: int = 1) -> AttemptDirs:
    return run_root(data_dir).attempt(run_id, attempt)
