"""Environments through the whole product: a real head, a real agent building with uv from the tests' own
wheelhouse (offline), and the CLI as a user runs it: a conda file's pip section built once and shared, its build in
the BUILD stream, a registered environment resolved at submit, a changed requirement built anew."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.harness import Cluster

pytestmark = pytest.mark.timeout(180)

CONDA = """\
name: tiny
channels: [conda-forge]
dependencies:
  - python=3.11
  - pip
  - pip:
    - tinygamma==1.0   # pulls tinyalpha
    - {extra}
"""
SHOW = "import sys, tinygamma, tinybeta; print('ENV', sys.prefix, tinygamma.VALUE, tinybeta.VALUE)"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, wheelhouse: Path) -> Iterator[Cluster]:
    found = Cluster.start(tmp_path_factory.mktemp("envs"), agents=1, pip_index_url="none",
                          pip_find_links=[str(wheelhouse)])
    yield found
    found.stop()


def _run(cluster: Cluster, code: Path, *args: str) -> tuple[str, str]:
    """Submit and wait; returns (run id, the ENV line it printed)."""
    done = cluster.cli("submit", str(code), "-q", *args, "--", "python", "-c", SHOW, check=True, timeout_s=150)
    lines = done.stdout.strip().splitlines()
    return lines[0], next(line for line in lines if line.startswith("ENV "))


def test_a_conda_file_is_built_once_then_shared_and_its_build_is_the_build_stream(cluster: Cluster,
                                                                                 tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "env.yml").write_text(CONDA.format(extra="tinybeta==2.0"))
    first, said = _run(cluster, code, "--conda-file", str(code / "env.yml"))
    assert said.endswith("gamma over alpha 1.0 beta 2.0")
    prefix = said.split()[1]
    assert "/envs/" in prefix and ".venv" not in prefix, "the environment's python, not the agent's"
    build = cluster.cli("logs", first, "--stream", "build", check=True)
    assert "[build]" in build.stderr and "+ tinygamma==1.0" in build.stderr, build.stderr
    assert build.stdout == "", "only the build stream: the run's own output is not in it"
    second, again = _run(cluster, code, "--conda-file", str(code / "env.yml"))
    assert again.split()[1] == prefix, "the same spec runs in the same environment"
    assert "+ tinygamma" not in cluster.cli("logs", second, "--stream", "build", check=True).stderr, "no second build"
    assert cluster.run(first)["spec"]["env_hash"] == cluster.run(second)["spec"]["env_hash"]

    (code / "env.yml").write_text(CONDA.format(extra="tinybeta==1.0"))
    changed, other = _run(cluster, code, "--conda-file", str(code / "env.yml"))
    assert other.endswith("beta 1.0") and other.split()[1] != prefix
    assert cluster.run(changed)["spec"]["env_hash"] != cluster.run(first)["spec"]["env_hash"]


def test_a_registered_environment_resolves_latest_and_the_run_records_the_exact_version(cluster: Cluster,
                                                                                         tmp_path: Path) -> None:
    (tmp_path / "conda.yml").write_text(CONDA.format(extra="tinybeta==1.0"))
    (tmp_path / "environment.yml").write_text("name: tiny-registered\nversion: \"3\"\nconda_file: conda.yml\n")
    cluster.cli("env", "create", "-f", str(tmp_path / "environment.yml"), check=True)
    assert "tiny-registered" in cluster.cli("env", "list", check=True).stdout
    code = tmp_path / "code"
    code.mkdir()
    (code / "job.yml").write_text(f"type: command\ncode: .\ncommand: python -c \"{SHOW}\"\n"
                                  "environment: azureml:tiny-registered@latest\n")
    done = cluster.cli("submit", "-f", str(code / "job.yml"), "-q", check=True, timeout_s=150)
    run_id = done.stdout.strip().splitlines()[0]
    assert "beta 1.0" in done.stdout
    run = cluster.run(run_id)
    assert (run["env_name"], run["env_version"]) == ("tiny-registered", "3")
    shown = json.loads(cluster.cli("env", "show", "tiny-registered", "-o", "json", check=True).stdout)
    assert shown["built_on"] == ["node-1"] and shown["hash"] == run["spec"]["env_hash"]
