"""Environments end to end, against a real head: registered environments through the CLI (create, list, show,
versions that never change, `@latest` resolved at submit and recorded exactly), the refusals at submit that name
what no node of the cluster has, the assignment carrying the spec and its hash, the placement that prefers a node
with the environment built, `env build` reaching the nodes, and `logs --stream`.

One real agent in cluster `default` (it reports the pythons it found, here 3.11, and uv), and two scripted nodes in cluster `envs` that report python 3.10 and 3.11, uv and micromamba on
platform `linux-testarch`; `built-1` has ENV and WARM built already, `fresh-1` has nothing built and more CPUs.
Each test leaves the nodes as it found them but for WARM, which only the `env build` test builds on fresh-1.
"""

from __future__ import annotations

import json
import re
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from protos import runyard_pb2 as pb
from runyard.client import Client
from runyard.envspec import EnvSpec, identity, node_platform
from runyard.envwire import env_to_pb
from testbed.harness import Cluster, wait_until
from tests.scriptednode import ScriptedNode

pytestmark = pytest.mark.timeout(180)

PLATFORM = "linux-testarch"
CONDA = """\
name: train
channels: [conda-forge]
dependencies:
  - python=3.11
  - pip
  - libgomp
  - pip:
    - -r requirements.txt
    - torch==2.3.0  # pinned
"""
REQUIREMENTS = "numpy>=2\n# for the plots\nmatplotlib\n"
ENV = EnvSpec(python="3.11", pip=("matplotlib", "numpy>=2", "torch==2.3.0"), conda=("libgomp",),
              channels=("conda-forge",))
ENV_HASH = identity(ENV, PLATFORM)
WARM = EnvSpec(python="3.11", pip=("warm-pkg",))   # what `env build` warms; built-1 has it built too
WARM_HASH = identity(WARM, PLATFORM)


class Setup:
    def __init__(self, cluster: Cluster, built: ScriptedNode, fresh: ScriptedNode) -> None:
        self.cluster, self.built, self.fresh = cluster, built, fresh


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    cluster = Cluster.start(tmp_path_factory.mktemp("envs"), agents=1, head_settings={"clusters": {"later": {}}})
    nodes: list[ScriptedNode] = []
    try:
        for name, cpus, built in (("built-1", 2.0, [ENV_HASH, WARM_HASH]), ("fresh-1", 8.0, [])):
            nodes.append(ScriptedNode(cluster, name, compute="envs", cpus=cpus, platform=PLATFORM,
                                      interpreters=["3.11.7", "3.10.12"], builders=["uv", "micromamba"],
                                      env_hashes=built))
        yield Setup(cluster, *nodes)
    finally:
        for node in nodes:
            node.close()
        cluster.stop()


@pytest.fixture
def code(tmp_path: Path) -> Path:
    """A project whose conda file asks for ENV, its requirements file beside it."""
    directory = tmp_path / "code"
    directory.mkdir()
    (directory / "hello.py").write_text("print('hello from the run')\n")
    (directory / "env.yml").write_text(CONDA)
    (directory / "requirements.txt").write_text(REQUIREMENTS)
    return directory


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def one_line_refusal(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    """The command failed with status 1 and one line that says why (after what it did before, e.g. an upload)."""
    assert result.returncode == 1, result
    errors = [line for line in result.stderr.splitlines() if line.startswith("runyard: ")]
    assert len(errors) == 1 and fragment in errors[0] and "Traceback" not in result.stderr, result.stderr


# --- registered environments ------------------------------------------------------------------------------------

def test_environments_are_created_listed_shown_and_never_change(setup: Setup, code: Path) -> None:
    cli = setup.cluster.cli
    path = write(code / "environment.yml", """\
        $schema: https://azuremlschemas.azureedge.net/latest/environment.schema.json
        name: torch
        version: 1
        description: torch and friends
        tags: {team: vision}
        conda_file: env.yml
    """)

    made = cli("env", "create", "-f", str(path), check=True)
    assert made.stdout.startswith("environment torch:1 (python 3.11, 3 pip, 1 conda; hash ")
    assert cli("env", "create", "-f", str(path), check=True).stdout == made.stdout    # the same spec: a no-op

    (code / "requirements.txt").write_text(REQUIREMENTS + "scipy\n")
    one_line_refusal(cli("env", "create", "-f", str(path)),
                     "environment torch:1 exists with another spec, and versions never change; create version 2")
    write(path, "name: torch\nconda_file: env.yml\n")
    assert cli("env", "create", "-f", str(path), check=True).stdout.startswith("environment torch:2 ")
    write(path, "name: torch\nversion: '10'\nimage: docker.io/library/python:3.11-slim\n")
    cli("env", "create", "-f", str(path), check=True)

    listed = setup.cluster.json("env", "list")
    assert [(e["name"], e["version"]) for e in listed if e["name"] == "torch"] == [("torch", "1"), ("torch", "2"),
                                                                                ("torch", "10")]
    first = next(e for e in listed if e["version"] == "1" and e["name"] == "torch")
    assert first["spec"]["pip"] == list(ENV.pip) and first["tags"] == {"team": "vision"}
    assert first["hash"] == identity(ENV, node_platform())  # cluster default's nodes report no platform
    assert setup.cluster.json("env", "show", "torch")["version"] == "10"
    shown = cli("env", "show", "torch:2", check=True).stdout
    assert "torch:2" in shown and "scipy" in shown and "python" in shown
    one_line_refusal(cli("env", "show", "torch:7"), "environment 'torch' has no version '7' (it has 1, 2, 10)")
    one_line_refusal(cli("env", "show", "nothing"), "no environment 'nothing' in this workspace")


def test_latest_is_resolved_at_submit_and_the_run_records_the_exact_version(setup: Setup, code: Path) -> None:
    client = setup.cluster.client()
    for version, pip in (("9", ["numpy<2"]), ("10", ["numpy>=2"])):
        client.create_environment(pb.Environment(name="pinned", version=version, spec=pb.EnvironmentSpec(pip=pip)))

    latest = setup.cluster.cli("submit", str(code), "-d", "-q", "--env", "pinned@latest", "--", "python", "hello.py",
                               check=True).stdout.strip()
    client.create_environment(pb.Environment(name="pinned", version="11", spec=pb.EnvironmentSpec(pip=["numpy>=3"])))
    job = write(code / "job.yml", "command: python hello.py\nenvironment: azureml:pinned:9\n")
    by_file = setup.cluster.cli("submit", "-f", str(job), "-d", "-q", check=True).stdout.strip()

    ran = setup.cluster.wait_state(latest, "Completed")
    assert (ran["env_name"], ran["env_version"]) == ("pinned", "10")
    assert ran["spec"]["env"]["pip"] == ["numpy>=2"]
    assert ran["spec"]["env_hash"] == identity(EnvSpec(pip=("numpy>=2",)), node_platform())
    assert f"pinned:10 ({ran['spec']['env_hash'][:12]})" in setup.cluster.cli("show", latest, check=True).stdout
    assert setup.cluster.run(by_file)["env_version"] == "9"
    setup.cluster.wait_state(by_file, "Completed")


def test_an_inline_environment_shows_as_inline_and_a_run_without_one_as_the_node_s(setup: Setup, code: Path) -> None:
    inline = setup.cluster.cli("submit", str(code), "-d", "-q", "-f",
                               str(write(code / "job.yml", "command: python hello.py\nenvironment: {pip: [scipy]}\n")),
                               check=True).stdout.strip()
    plain = setup.cluster.cli("submit", str(code), "-d", "-q", "--", "true", check=True).stdout.strip()

    env_hash = identity(EnvSpec(pip=("scipy",)), node_platform())
    assert f"inline ({env_hash[:12]})" in setup.cluster.cli("show", inline, check=True).stdout
    shown = setup.cluster.run(plain)
    assert "env" not in shown["spec"] and shown["spec"]["env_hash"] == ""
    assert re.search(r"^environment +- *$", setup.cluster.cli("show", plain, check=True).stdout, re.MULTILINE)
    # The hash is the head's to set: one a client sends is not taken.
    forged = setup.cluster.client().submit(pb.SubmitRequest(
        snapshot_sha256=shown["snapshot_sha256"], spec=pb.RunSpec(argv=["true"], env_hash="f" * 64))).run_id
    assert setup.cluster.run(forged)["spec"]["env_hash"] == ""
    for run_id in (inline, plain, forged):
        setup.cluster.wait_state(run_id, "Completed")


# --- refusals at submit -----------------------------------------------------------------------------------------

def test_submit_refuses_what_no_node_of_the_cluster_can_build_naming_it(setup: Setup, code: Path) -> None:
    cli = setup.cluster.cli
    py312 = write(code / "py312.yml", "dependencies: [python=3.12, {pip: [numpy]}]\n")
    conda = write(code / "conda.yml", "dependencies: [libgomp]\n")
    image = write(code / "image.yml", "command: python hello.py\nenvironment: {image: python:3.11}\n")

    one_line_refusal(cli("submit", str(code), "--conda-file", str(py312), "--", "true"),
                     "runyard: no node in cluster default has python 3.12 (they have 3.11)")
    one_line_refusal(cli("submit", str(code), "--conda-file", str(conda), "--", "true"),
                     "no node in cluster default has a conda builder (micromamba or conda) for its conda packages")
    one_line_refusal(cli("submit", "-f", str(image), "-d"),
                     "no node in cluster default has a container runtime (podman, docker or apptainer) for its image")
    one_line_refusal(cli("submit", str(code), "-c", "envs", "--conda-file", str(py312), "--", "true"),
                     "no node in cluster envs has python 3.12 (they have 3.10, 3.11)")
    one_line_refusal(cli("submit", "-f", str(image), "-c", "envs", "-d"),
                     "no node in cluster envs has a container runtime")
    one_line_refusal(cli("submit", str(code), "--env", "no-such-env:1", "--", "true"),
                     "no environment 'no-such-env' in this workspace")

    # No node of `later` is known yet: it waits for one, whatever it asks for.
    waiting = cli("submit", str(code), "-c", "later", "-d", "-q", "--conda-file", str(py312), "--", "true",
                  check=True).stdout.strip()
    assert setup.cluster.run(waiting)["state"] == "Queued"
    cli("cancel", waiting, check=True)


# --- placement and the assignment -------------------------------------------------------------------------------

def test_the_node_with_the_environment_built_is_preferred_and_the_assignment_carries_it(setup: Setup,
                                                                                      code: Path) -> None:
    run_id = setup.cluster.cli("submit", str(code), "-c", "envs", "-d", "-q", "--conda-file", str(code / "env.yml"),
                               "--", "python", "hello.py", check=True).stdout.strip()

    assignment = setup.built.wait_assignment(run_id)
    assert assignment.spec.env == env_to_pb(ENV)
    assert assignment.spec.env_hash == ENV_HASH and not assignment.spec.env_ref
    run = setup.cluster.run(run_id)
    assert run["node"] == "built-1" and run["spec"]["env_hash"] == ENV_HASH
    assert run["events"][-1]["detail"] == "placed on built-1 (environment already built there)"
    setup.built.exited(assignment)
    setup.cluster.wait_state(run_id, "Completed")

    other = setup.cluster.cli("submit", str(code), "-c", "envs", "-d", "-q", "--env", "A=1", "-f",
                              str(write(code / "job.yml", "command: python hello.py\nenvironment: {pip: [scipy]}\n")),
                              check=True).stdout.strip()
    elsewhere = setup.fresh.wait_assignment(other)
    assert elsewhere.spec.env_hash == identity(EnvSpec(pip=("scipy",)), PLATFORM)
    assert elsewhere.spec.environment["A"] == "1"
    assert setup.cluster.run(other)["events"][-1]["detail"] == "placed on fresh-1 (environment to be built there)"
    setup.fresh.exited(elsewhere)
    setup.cluster.wait_state(other, "Completed")


def test_env_build_reaches_the_nodes_and_show_names_those_that_have_it_built(setup: Setup, code: Path) -> None:
    cluster = setup.cluster
    write(code / "warm.yml", "dependencies: [python=3.11, {pip: [warm-pkg]}]\n")
    path = write(code / "environment.yml", "name: warm\nconda_file: warm.yml\n")
    cluster.cli("env", "create", "-f", str(path), check=True)
    assert cluster.json("env", "show", "warm")["built_on"] == ["built-1"]
    node = cluster.json("nodes", "built-1")
    assert node["capacity"]["env_hashes"] == sorted([ENV_HASH, WARM_HASH])
    assert (node["capacity"]["platform"], node["capacity"]["builders"]) == (PLATFORM, ["micromamba", "uv"])

    asked = cluster.cli("env", "build", "warm", "--nodes", "fresh-1", check=True)
    assert asked.stdout.strip() == "build of warm asked of 1 node: fresh-1"
    build = wait_until("fresh-1 to be asked to build", lambda: next(iter(setup.fresh.builds()), None))
    assert (build.env, build.env_hash) == (env_to_pb(WARM), WARM_HASH)
    setup.fresh.built([WARM_HASH])
    wait_until("show to name fresh-1 too",
               lambda: cluster.json("env", "show", "warm")["built_on"] == ["built-1", "fresh-1"])

    # Every Ready node that can build it: the real agent node-1 has a python 3.11 too.
    assert cluster.cli("env", "build", "warm", check=True).stdout.strip() == \
        "build of warm asked of 3 nodes: built-1, fresh-1, node-1"
    cluster.client().create_environment(pb.Environment(name="new-python", spec=pb.EnvironmentSpec(python="3.13")))
    one_line_refusal(cluster.cli("env", "build", "new-python", "--nodes", "fresh-1"),
                     "node fresh-1 cannot build new-python:1: it has no python 3.13 (it has 3.10, 3.11)")
    one_line_refusal(cluster.cli("env", "build", "new-python"), "no Ready node can build new-python:1 now")


# --- logs by stream ---------------------------------------------------------------------------------------------

def test_logs_show_one_stream_when_asked(setup: Setup, code: Path) -> None:
    cluster = setup.cluster
    run_id = cluster.cli("submit", str(code), "-d", "-q", "--timeout", "1", "--", "sh", "-c",
                         "echo out; echo err >&2; exec sleep 60", check=True).stdout.strip()
    cluster.wait_state(run_id, "Failed")

    system = cluster.cli("logs", run_id, "--stream", "system", check=True)
    stdout = cluster.cli("logs", run_id, "--stream", "stdout", check=True)
    stderr = cluster.cli("logs", run_id, "--stream", "stderr", check=True)
    build = cluster.cli("logs", run_id, "--stream", "build", check=True)
    everything = cluster.cli("logs", run_id, check=True)

    assert system.stdout == "" and system.stderr.startswith("[runyard] stopping the run: timeout")
    assert (stdout.stdout, stdout.stderr) == ("out\n", "")
    assert (stderr.stdout, stderr.stderr) == ("", "err\n")
    assert (build.stdout, build.stderr) == ("", "")
    assert everything.stdout == "out\n" and "err\n" in everything.stderr and "[runyard] stopping" in everything.stderr
    tail = cluster.cli("logs", run_id, "--stream", "stdout", "--tail", "1", check=True)
    assert tail.stdout == "out\n"


def test_a_registered_environment_reaches_the_node_at_the_version_recorded(setup: Setup, code: Path) -> None:
    write(code / "environment.yml", "name: exact\nversion: 4\nconda_file: env.yml\n")
    setup.cluster.cli("env", "create", "-f", str(code / "environment.yml"), check=True)

    run_id = setup.cluster.cli("submit", str(code), "-c", "envs", "-d", "-q", "--env", "exact", "--", "true",
                               check=True).stdout.strip()

    node, assignment = wait_until("the run to be assigned to a node of envs", lambda: next(
        ((n, a) for n in (setup.built, setup.fresh) for a in n.assignments() if a.run_id == run_id), None))
    assert (assignment.spec.env, assignment.spec.env_hash) == (env_to_pb(ENV), ENV_HASH)
    shown = json.loads(setup.cluster.cli("show", run_id, "-o", "json", check=True).stdout)
    assert (shown["env_name"], shown["env_version"], shown["spec"]["env"]["python"]) == ("exact", "4", "3.11")
    node.exited(assignment)
    setup.cluster.wait_state(run_id, "Completed")


def test_a_workspace_s_long_list_of_environments_still_fits_one_reply(setup: Setup) -> None:
    admin = setup.cluster.client()
    admin.create_workspace("big-envs")
    token = admin.create_token(pb.CreateTokenRequest(workspace="big-envs", role=pb.ROLE_USER, name="big")).secret
    with Client(setup.cluster.head.client_config(token), timeout_s=30) as big:
        for version in range(1, 51):      # 50 specs of 100 KB: more than one reply's 4 MiB
            pip = [f"pkg{version}-{i:03}-{'x' * 990}==1.0" for i in range(100)]
            big.create_environment(pb.Environment(name="huge", version=str(version), spec=pb.EnvironmentSpec(pip=pip)))
        listed = big.list_environments()
        shown = big.get_environment("huge:50")

    assert [e.version for e in listed] == [str(v) for v in range(1, 51)]
    assert listed[0].HasField("spec") and not listed[-1].HasField("spec")
    assert len(shown.spec.pip) == 100
    assert all(e.name != "huge" for e in setup.cluster.client().list_environments())   # another workspace's
