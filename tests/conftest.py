from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.harness import Cluster
from testbed.wheelhouse import build_wheelhouse


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A head and two agents shared by the tests of one module, and a cluster `gpu-pool` that head.toml names but
    no node has joined (a run for it queues)."""
    found = Cluster.start(tmp_path_factory.mktemp("cluster"), agents=2, head_settings={"clusters": {"gpu-pool": {}}})
    yield found
    found.stop()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A small code directory to submit."""
    code = tmp_path / "project"
    code.mkdir()
    (code / "hello.py").write_text("print('hello from the run')\n")
    return code


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory a test shares with its runs (gates, marks, pid files). Runs execute as uids of their own and
    cannot reach `tmp_path`, which pytest makes below a 0700 directory."""
    path = Path(tempfile.mkdtemp(prefix="runyard-test-"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of tiny wheels (testbed/wheelhouse.py), built once per test process, for agents that install
    offline from it (`pip_index_url = "none"`, `pip_find_links = [wheelhouse]`)."""
    return build_wheelhouse(tmp_path_factory.mktemp("wheelhouse"))
