"""Caps on what one caller may store, so that one user's input never breaks another's reads, and refusals that
quote a caller's input only in part."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from protos import runyard_pb2 as pb
from runyard.errors import InvalidArgument, NotFound
from testbed.harness import Cluster

SHA = "0" * 64


def _submit(cluster: Cluster, **fields: object) -> pb.SubmitResponse:
    spec = fields.pop("spec", pb.RunSpec(argv=["true"]))
    return cluster.client().submit(pb.SubmitRequest(snapshot_sha256=SHA, spec=spec, **fields))  # type: ignore[arg-type]


def test_a_ten_megabyte_environment_is_refused_and_listing_runs_still_works(cluster: Cluster) -> None:
    huge = pb.RunSpec(argv=["true"], environment={"BLOB": "x" * 10_000_000})
    for _ in range(2):
        with pytest.raises(InvalidArgument) as refused:
            _submit(cluster, spec=huge)
        assert "10,000,004 bytes, over the limit of 65,536" in str(refused.value)
    assert cluster.cli("runs", check=True).returncode == 0


@pytest.mark.parametrize(("fields", "says"), [
    ({"tags": {f"t{i}": "v" for i in range(101)}}, "tags: 101 entries, over the limit of 100"),
    ({"properties": {"k": "v" * 5000}}, "must have a key of 1 to 256 characters and a value of at most 4,096"),
    ({"tags": {f"t{i}": "v" * 4000 for i in range(20)}}, "tags: 80,"),
    ({"idempotency_key": "k" * 129}, "the idempotency key is over 128 characters"),
    ({"display_name": "n" * 257}, "the display name is over 256 characters"),
], ids=["too-many-tags", "long-property", "tags-over-64-KiB", "long-idempotency-key", "long-display-name"])
def test_tags_properties_and_ids_have_caps(cluster: Cluster, fields: dict[str, object], says: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        _submit(cluster, **fields)
    assert says in str(refused.value)


def test_an_unknown_id_is_not_echoed_whole(cluster: Cluster) -> None:
    for run_id in ("r" * 10_000, "r" * 100):
        with pytest.raises(NotFound) as missing:
            cluster.client().get_run(run_id)
        message = str(missing.value)
        assert len(message) < 120 and f"({len(run_id)} characters)" in message, message
    with pytest.raises(NotFound) as short:
        cluster.client().get_run("nosuchrun")
    assert "'nosuchrun'" in str(short.value)


def test_a_page_of_runs_at_every_cap_still_lists(cluster: Cluster, project: Path) -> None:
    """Sixty runs each holding the most one run may (about 290 KiB): more than a message may carry, so the page
    stops at its size limit and says so, instead of failing everyone's `runyard runs`."""
    first = cluster.cli("submit", str(project), "-d", "-q", "-e", "big", "-c", "gpu-pool", "--", "true", check=True)
    sha = cluster.run(first.stdout.strip())["snapshot_sha256"]
    spec = pb.RunSpec(argv=["true", "a" * 100_000], compute="gpu-pool",
                      environment={f"E{i}": "v" * 6000 for i in range(10)})
    fat = {f"k{i}": "x" * 4000 for i in range(15)}
    for _ in range(60):
        cluster.client().submit(pb.SubmitRequest(experiment="big", snapshot_sha256=sha, spec=spec, tags=fat,
                                                 properties=fat))
    listed = cluster.cli("runs", "-e", "big", "--limit", "61", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    assert "did not fit in one page" in listed.stderr
    assert 10 < len(json.loads(listed.stdout)) < 61
