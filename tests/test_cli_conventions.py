"""The conventions people rely on, through the real CLI against a real head and agents on loopback: `submit -d`
prints the run id on stdout, JSON integers are numbers, an empty answer says so, a usage mistake is one line; and
a directory submitted again unchanged is neither zipped nor hashed again (one Submit call), while any change to a
file (content, size or mtime) zips it again."""

from __future__ import annotations

import io
import json
import os
import tokenize
from pathlib import Path
from typing import Any

import pytest

from protos import runyard_pb2 as pb
from runyard.client import Client
from runyard.jobfile import build_request
from runyard.runrequest import CliOptions
from runyard.snapshot import SnapshotCache, scan_directory
from runyard.submit import submit_run
from testbed.harness import Cluster

ROOT = Path(__file__).resolve().parents[1]


class Recording(Client):
    """The real client, noting which calls it made to the head."""

    def __init__(self, cluster: Cluster) -> None:
        super().__init__(cluster.head.client_config(), timeout_s=30)
        self.calls: list[str] = []

    def has_snapshot(self, sha256: str) -> bool:
        self.calls.append("HasSnapshot")
        return super().has_snapshot(sha256)

    def upload_snapshot(self, *args: Any, **kwargs: Any) -> bool:
        self.calls.append("UploadSnapshot")
        return super().upload_snapshot(*args, **kwargs)

    def submit(self, request: pb.SubmitRequest) -> pb.SubmitResponse:
        self.calls.append("Submit")
        return super().submit(request)


def _one_line(done: Any, code: int) -> str:
    assert done.returncode == code, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and "Usage:" not in done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith("runyard: ")
    return str(line)


@pytest.mark.timeout(300)
def test_submit_detached_prints_the_run_id_on_stdout(cluster: Cluster, project: Path) -> None:
    done = cluster.cli("submit", "-d", str(project), "--", "true", check=True)
    run_id = done.stdout.strip()
    assert cluster.run(run_id)["id"] == run_id                      # stdout is the id alone
    assert f"run {run_id} queued" in done.stderr                    # progress is on stderr
    parsable = cluster.cli("submit", "--parsable", "-d", str(project), "--", "true", check=True)
    assert parsable.stderr == "" and cluster.run(parsable.stdout.strip())["id"] == parsable.stdout.strip()


@pytest.mark.timeout(300)
def test_an_unchanged_directory_is_submitted_in_one_call_and_any_change_zips_it_again(
        cluster: Cluster, project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = SnapshotCache(tmp_path / "cache" / "snapshots.json", racy_ns=0)
    (project / "unique.txt").write_text(str(tmp_path))                # bytes the head has not seen from other tests
    request = build_request(CliOptions(directory=project, command=("true",)))
    hello = project / "hello.py"

    def submitted() -> tuple[list[str], str]:
        client = Recording(cluster)
        try:
            assert submit_run(client, request, detach=True, quiet=True, cache=cache) == 0
        finally:
            client.close()
        run_id = capsys.readouterr().out.strip()
        return client.calls, cluster.run(run_id)["snapshot_sha256"]

    calls, first = submitted()
    assert calls == ["HasSnapshot", "UploadSnapshot", "Submit"]
    assert submitted() == (["Submit"], first)                       # unchanged: one round trip, nothing zipped

    stat = hello.stat()
    hello.write_text(hello.read_text().replace("hello", "HELLO"))    # the same size, its mtime put back
    os.utime(hello, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert hello.stat().st_size == stat.st_size
    calls, changed = submitted()
    assert calls == ["HasSnapshot", "UploadSnapshot", "Submit"] and changed != first
    assert submitted() == (["Submit"], changed)

    os.utime(hello, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # only the mtime: zipped again, same bytes
    assert submitted() == (["HasSnapshot", "Submit"], changed)
    hello.write_text(hello.read_text() + "# more\n")                  # the size
    calls, longer = submitted()
    assert calls == ["HasSnapshot", "UploadSnapshot", "Submit"] and longer not in (first, changed)

    # a hash remembered from a head that no longer has it (or never had it): the directory is uploaded again
    entries = json.loads(cache.path.read_text())
    entries[str(project.resolve())]["sha256"] = "0" * 64
    cache.path.write_text(json.dumps(entries))
    assert submitted() == (["Submit", "HasSnapshot", "HasSnapshot", "Submit"], longer)
    assert submitted() == (["Submit"], longer)


def test_a_directory_changed_within_the_timestamp_granularity_is_not_remembered(tmp_path: Path) -> None:
    from runyard.snapshot import write_snapshot

    code = tmp_path / "code"
    code.mkdir()
    (code / "a.py").write_text("x = 1\n")
    listing = scan_directory(code)
    cache = SnapshotCache(tmp_path / "snapshots.json")              # 2 s: a.py was written just now
    cache.put(listing, write_snapshot(listing, tmp_path))
    assert cache.get(listing) is None and not cache.path.exists()
    (tmp_path / "snapshots.json").write_text("{not json")             # a broken cache is an empty one
    assert cache.get(listing) is None


@pytest.mark.timeout(300)
def test_json_integers_are_numbers_and_states_any_case(cluster: Cluster, project: Path) -> None:
    (project / "fail.py").write_text("import sys\nprint('out')\nsys.exit(3)\n")
    run_id = cluster.cli("submit", "-d", "-q", str(project), "--", "python", "fail.py", check=True).stdout.strip()
    cluster.wait_state(run_id, "Failed")
    shown = cluster.json("show", run_id)
    assert (shown["attempt"], shown["exit_code"]) == (1, 3)
    assert isinstance(shown["spec"]["resources"]["memory_bytes"], int)
    assert list(shown)[0] == "id" and list(shown) == list(cluster.json("show", run_id))   # a stable order
    node = cluster.json("nodes")[0]
    assert isinstance(node["capacity"]["memory_bytes"], int)

    listed = cluster.cli("runs", "--state", "failed", "-o", "json", check=True)
    assert run_id in {r["id"] for r in json.loads(listed.stdout)}
    assert cluster.cli("runs", "--state", "FAILED,completed", check=True).returncode == 0

    follow = cluster.cli("logs", "-f", run_id)                        # ends as submit does: the run's exit code
    assert follow.returncode == 3 and follow.stdout == "out\n"


@pytest.mark.timeout(300)
def test_an_empty_answer_says_so(cluster: Cluster, project: Path) -> None:
    none = cluster.cli("runs", "-e", "no-such-experiment")
    assert (none.returncode, none.stdout, none.stderr) == (0, "", "no run matched these filters\n")
    assert cluster.json("runs", "-e", "no-such-experiment") == []
    run_id = cluster.cli("submit", "-d", "-q", str(project), "--", "true", check=True).stdout.strip()
    missing = cluster.cli("metrics", run_id, "--key", "nosuchkey")
    assert missing.returncode == 0 and f"no metric 'nosuchkey' in run {run_id}" in missing.stderr
    assert missing.stdout == ""                 # no empty table under the message


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("args", "said"), [
    (("runz",), "runyard: no command 'runz'; did you mean runs? (see runyard --help)"),
    (("runs", "--bogus"), "runyard: No such option '--bogus'. Did you mean '--user'? (see runyard runs --help)"),
    (("runs", "--limit", "x"), "runyard: Invalid value for '--limit': 'x' is not a valid integer range. "
                               "(see runyard runs --help)"),
    (("node", "drain"), "runyard: Missing argument 'NAME'. (see runyard node drain --help)"),
    (("download", "RUN", "--outputs", "--snapshot"),
     "runyard: --outputs and --snapshot: give one (one download is one archive)"),
])
def test_a_usage_mistake_is_one_line_and_exit_2(cluster: Cluster, args: tuple[str, ...], said: str) -> None:
    assert _one_line(cluster.cli(*args), 2) == said


def test_no_message_says_s_in_parentheses() -> None:
    """Plural forms are written out ("1 node", "2 nodes"), never "node(s)"; MLflow's own message is MLflow's."""
    found = []
    for package in ("runyard", "scheduler", "agent"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for token in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
                text = token.string
                docstring = text.startswith(('"' * 3, "'" * 3))
                plural = text.replace("http(s)", "").replace("Invalid clause(s)", "")
                if token.type == tokenize.STRING and not docstring and "(s)" in plural:
                    found.append(f"{path.relative_to(ROOT)}:{token.start[0]}: {text}")
    assert found == []
