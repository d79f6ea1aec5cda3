"""Which compute clusters exist: a run for one nobody knows is refused at submit instead of waiting forever."""

from __future__ import annotations

from pathlib import Path

from testbed.harness import Cluster, wait_until


def test_a_run_for_an_unknown_cluster_is_refused_and_known_ones_queue(tmp_path: Path, project: Path) -> None:
    cluster = Cluster.start(tmp_path / "cluster", agents=1, heartbeat_interval_s=0.2,
                            head_settings={"disconnected_after_s": 1.0, "down_after_s": 2.0,
                                           "clusters": {"configured": {}}})
    try:
        solo = cluster.add_agent("solo-1", cluster="solo", heartbeat_interval_s=0.2)
        cluster.wait_nodes_ready(2)

        refused = cluster.cli("submit", str(project), "-d", "-c", "nosuchcluster", "--", "true")
        assert refused.returncode == 1 and "Traceback" not in refused.stderr
        assert refused.stderr.strip().splitlines()[-1] == (
            "runyard: no cluster 'nosuchcluster': no node has joined it and head.toml configures no autoscaler for it "
            "(clusters: configured, default, solo)"
        )
        assert cluster.json("runs") == []

        # A cluster exists by its [clusters.NAME] section alone, or by a node of it in any state, even Down.
        configured = cluster.cli("submit", str(project), "-d", "-q", "-c", "configured", "--", "true",
                                 check=True).stdout.strip()
        solo.stop()
        wait_until("solo-1 to be Down", lambda: {n["name"]: n["state"] for n in cluster.nodes()}["solo-1"] == "Down",
                   every_s=0.1)
        lone = cluster.cli("submit", str(project), "-d", "-q", "-c", "solo", "--", "true", check=True).stdout.strip()
        for run_id, name in ((configured, "configured"), (lone, "solo")):
            run = wait_until("a pending reason", lambda: "is up" in (r := cluster.run(run_id))["pending_reason"] and r)
            assert run["state"] == "Queued" and run["pending_reason"] == f"no node in cluster {name} is up"
    finally:
        cluster.stop()
