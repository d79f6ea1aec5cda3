"""Queue order and pending reasons through the CLI: one agent with one CPU, so runs must wait their turn."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from testbed.harness import Cluster, wait_until


def test_priorities_then_fifo_and_the_reason_each_waits(tmp_path: Path, project: Path, shared: Path) -> None:
    cluster = Cluster.start(tmp_path / "cluster", agents=1, cpus=1.0)
    try:
        gate = shared / "gate"
        (project / "block.py").write_text(
            f"import os, time\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.01)\n")

        def submit(*args: str) -> str:
            return cluster.cli("submit", str(project), "-d", "-q", *args, check=True).stdout.strip()

        blocker = submit("-n", "blocker", "--", "python", "block.py")
        cluster.wait_state(blocker, "Running")
        low = submit("-n", "low", "--priority", "low", "--", "true")
        medium_1 = submit("-n", "medium-1", "--", "true")
        high = submit("-n", "high", "--priority", "high", "--", "true")
        medium_2 = submit("-n", "medium-2", "--priority", "medium", "--", "true")

        expected = [high, medium_1, medium_2, low]
        queue = wait_until("every queued run to have its reason", lambda: (
            q := cluster.json("queue")) and all("waiting for the scheduler" not in r["pending_reason"] for r in q) and q)
        assert [r["id"] for r in queue] == expected
        assert "waiting for 1 CPUs" in queue[0]["pending_reason"] and "node-1" in queue[0]["pending_reason"]
        assert [r["pending_reason"].rsplit("; ", 1)[1] for r in queue[1:]] == ["1 run ahead", "2 runs ahead", "3 runs ahead"]
        table = cluster.cli("queue", check=True).stdout
        assert table.index("high") < table.index("medium-1") < table.index("low")
        assert cluster.run(low)["priority"] == 100 and cluster.run(high)["priority"] == 300

        gate.touch()
        runs = [cluster.wait_state(run_id, "Completed") for run_id in expected]
        started = [r["started_at"] for r in runs]
        assert started == sorted(started)  # they ran in queue order
    finally:
        cluster.stop()


def test_submit_says_why_its_run_waits_once_per_reason_then_streams_it(tmp_path: Path, project: Path,
                                                                       shared: Path) -> None:
    cluster = Cluster.start(tmp_path / "cluster", agents=1, cpus=1.0)
    try:
        gate = shared / "gate"
        (project / "block.py").write_text(
            f"import os, time\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.01)\n")
        blocker = cluster.cli("submit", str(project), "-d", "-q", "--", "python", "block.py", check=True).stdout.strip()
        cluster.wait_state(blocker, "Running")

        out, err = tmp_path / "submit.out", tmp_path / "submit.err"
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            waiting = subprocess.Popen([sys.executable, "-m", "runyard", "submit", str(project), "--", "python",
                                        "hello.py"], stdout=stdout, stderr=stderr, env=cluster.env())
        try:
            wait_until("submit to say why the run waits", lambda: "waiting for 1 CPUs" in err.read_text())
            run_id = next(r["id"] for r in cluster.json("queue"))
            created = cluster.run(run_id)["created_at"]
            # Several more looks at the unchanged reason, none printed again.
            wait_until("the run to have waited 3 s", lambda: time.time() - created >= 3.0, every_s=0.2)
            gate.touch()
            assert waiting.wait(timeout=60) == 0, err.read_text()
        finally:
            waiting.kill()
        assert out.read_text() == "hello from the run\n"
        reasons = [line for line in err.read_text().splitlines() if line.startswith("queued: ")]
        assert len(set(reasons)) == len(reasons), reasons
        assert reasons[-1].startswith("queued: waiting for 1 CPUs") and "on node-1" in reasons[-1], reasons
        assert cluster.run(run_id)["state"] == "Completed"

        at_once = cluster.cli("submit", str(project), "--", "python", "hello.py", check=True)
        assert at_once.stdout == "hello from the run\n" and "queued:" not in at_once.stderr, at_once.stderr
    finally:
        cluster.stop()
