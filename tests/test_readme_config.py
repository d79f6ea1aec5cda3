"""The head.toml shown in the README loads with the head's own loader and means what it says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from runyard.errors import UsageError
from scheduler.autoscale import policies_from_config
from scheduler.config import load_head_config

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_head_toml_loads(tmp_path: Path) -> None:
    (block,) = re.findall(r"```toml\n(.*?)```", README.read_text(), re.S)
    path = tmp_path / "head.toml"
    path.write_text(block)
    config = load_head_config(path)
    assert config.quotas() == {("team-b", "a100"): 8}
    policy = policies_from_config(config.clusters)["a100"]
    assert (policy.provider, policy.max_nodes, policy.node_memory_bytes) == ("command", 4, 512 * 1024**3)
    assert policy.nodes == ("gpu-1", "gpu-2", "gpu-3", "gpu-4")


@pytest.mark.parametrize("toml", [
    "[gpu_quotas]\nteam-b = 8\n",                 # not a table of clusters
    "[gpu_quotas.team-b]\na100 = -1\n",
    '[gpu_quotas.team-b]\na100 = "8"\n',
])
def test_bad_quotas_are_one_line_naming_the_key(tmp_path: Path, toml: str) -> None:
    path = tmp_path / "head.toml"
    path.write_text(toml)
    with pytest.raises(UsageError) as caught:
        load_head_config(path).quotas()
    assert "gpu_quotas.team-b" in str(caught.value) and "\n" not in str(caught.value)
