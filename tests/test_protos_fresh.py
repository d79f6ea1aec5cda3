"""The committed generated code is what `make protos` makes from `protos/runyard.proto` today."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ("runyard_pb2.py", "runyard_pb2_grpc.py", "runyard_pb2.pyi")


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("protos")
    # The flags of the Makefile's `protos` target, with the output redirected to a temp dir.
    result = subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc", "-I.",
            f"--python_out={out}", f"--grpc_python_out={out}", f"--pyi_out={out}",
            "protos/runyard.proto",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"protoc failed:\n{result.stderr}"
    return out / "protos"


@pytest.mark.parametrize("name", GENERATED)
def test_generated_code_is_fresh(regenerated: Path, name: str) -> None:
    committed = (ROOT / "protos" / name).read_bytes()
    fresh = (regenerated / name).read_bytes()
    assert fresh == committed, f"protos/{name} is out of date with protos/runyard.proto: run `make protos`"
