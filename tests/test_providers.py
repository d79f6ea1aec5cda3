"""Node providers with real processes and real files: the local provider starts a stand-in agent (and once the real
one), the command provider runs real power commands that write what they were asked to do.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shlex
import stat
import subprocess
import sys
import time
import tomllib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from agent.config import load_agent_config
from scheduler.autoscale import ClusterPolicy
from runyard import pki
from scheduler.providers import CommandProvider, LocalHead, LocalProvider, ProviderError, ProviderNode, ProviderStatus
from testbed.harness import process_gone

DEADLINE_S = 20.0

# Stands in for `python -m agent --config <path>`: reads the config the provider wrote, records how it was
# started, then runs until SIGTERM (or ignores it, or exits at once, as its config says).
STAND_IN = """
import json, os, signal, sys, time, tomllib
from pathlib import Path
config = tomllib.loads(Path(sys.argv[1]).read_text())
data = Path(config["data_dir"])
def on_term(signum, frame):
    (data / "got-term").write_text("")
    sys.exit(0)
signal.signal(signal.SIGTERM, signal.SIG_IGN if config.get("ignore_term") else on_term)
print("stand-in up", config["name"], flush=True)
with open(data / "pids", "a") as f:
    f.write(f"{os.getpid()}\\n")
(data / "started.tmp").write_text(json.dumps({
    "pid": os.getpid(), "sid": os.getsid(0), "runyard_env": sorted(k for k in os.environ if k.startswith("RUNYARD_")),
}))
os.replace(data / "started.tmp", data / "started.json")  # the test polls it: never let it see a half-written file
if "exit_code" in config:
    sys.exit(config["exit_code"])
while True:
    time.sleep(1)
"""


async def eventually(what: str, condition: Callable[[], object], timeout_s: float = DEADLINE_S) -> object:
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.02)
    return value


def started(data_dir: Path, name: str) -> dict[str, object]:
    path = data_dir / name / "started.json"
    return json.loads(path.read_text()) if path.exists() else {}


@pytest.fixture
def stand_in(tmp_path: Path) -> Callable[[Path], list[str]]:
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    return lambda config: [sys.executable, str(script), str(config)]


def head_at(tmp_path: Path, address: str = "127.0.0.1:7433", node_address: str = "127.0.0.1:7434") -> LocalHead:
    """A head for the provider: its addresses, a CA file, and join tokens numbered from 1."""
    ca_file = tmp_path / "ca.crt"
    ca_file.write_bytes(pki.create_ca("test").cert_pem)
    minted = itertools.count(1)

    async def join_token() -> str:
        return f"join-secret-{next(minted)}"
    return LocalHead(address, node_address, ca_file, join_token)


def local(tmp_path: Path, command: Callable[[Path], list[str]] | None = None, *, stop_timeout_s: float = 10.0,
          **settings: object) -> LocalProvider:
    extra = {"command": command} if command else {}
    return LocalProvider(head=head_at(tmp_path), data_dir=tmp_path / "agents",
                         agent_settings=settings, log_dir=tmp_path / "logs", stop_timeout_s=stop_timeout_s,
                         **extra)  # type: ignore[arg-type]


@pytest.fixture
async def providers() -> AsyncIterator[list[LocalProvider]]:
    """Local providers to close after the test, whatever happened in it."""
    made: list[LocalProvider] = []
    yield made
    for provider in made:
        await provider.close()


async def test_local_launch_writes_the_agent_config_and_starts_it_in_its_own_session(
        tmp_path: Path, stand_in: Callable[[Path], list[str]], providers: list[LocalProvider],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNYARD_TOKEN", "the-user's-secret")
    provider = local(tmp_path, stand_in, fake_gpus=2, cpus=2.0, memory_bytes=4 << 30, heartbeat_interval_s=2.0,
                     labels={"zone": "a b"})
    providers.append(provider)
    node = await provider.launch("gpu", "gpu-1")
    assert node == ProviderNode("auto-gpu-1", "gpu", ProviderStatus.RUNNING)
    info = await eventually("the stand-in to start", lambda: started(tmp_path / "agents", "auto-gpu-1"))
    assert info["sid"] == info["pid"], "the agent runs in its own session"
    assert info["runyard_env"] == [], "RUNYARD_* variables of the head must not reach an agent"
    config_file = tmp_path / "agents" / "auto-gpu-1" / "agent.toml"
    agent_dir = tmp_path / "agents" / "auto-gpu-1"
    assert tomllib.loads(config_file.read_text()) == {
        "head_address": "127.0.0.1:7433", "head_node_address": "127.0.0.1:7434",
        "head_ca_file": str(tmp_path / "ca.crt"), "join_token_file": str(agent_dir / "join.token"),
        "name": "auto-gpu-1", "cluster": "gpu", "data_dir": str(agent_dir), "cpus": 2.0, "fake_gpus": 2,
        "heartbeat_interval_s": 2.0, "labels": {"zone": "a b"}, "memory_bytes": 4 << 30,
    }
    real = load_agent_config(config_file)
    assert (real.name, real.cluster, real.fake_gpus, real.join_secret()) == ("auto-gpu-1", "gpu", 2, "join-secret-1")
    assert stat.S_IMODE((agent_dir / "join.token").stat().st_mode) == 0o600, "the join token is the agent's only"
    log = tmp_path / "logs" / "auto-gpu-1.log"
    await eventually("the agent's output in its log", lambda: "stand-in up auto-gpu-1" in log.read_text())


async def test_local_launch_is_idempotent_by_key(
        tmp_path: Path, stand_in: Callable[[Path], list[str]], providers: list[LocalProvider]) -> None:
    provider = local(tmp_path, stand_in)
    providers.append(provider)
    first = await provider.launch("c", "c-1")
    assert await provider.launch("c", "c-1") == first
    second = await provider.launch("c", "c-2")
    assert (first.name, second.name) == ("auto-c-1", "auto-c-2")
    await eventually("both to start", lambda: all(started(tmp_path / "agents", n) for n in ("auto-c-1", "auto-c-2")))
    assert len((tmp_path / "agents" / "auto-c-1" / "pids").read_text().split()) == 1, "one process for one key"
    assert await provider.list() == [ProviderNode("auto-c-1", "c", ProviderStatus.RUNNING),
                                     ProviderNode("auto-c-2", "c", ProviderStatus.RUNNING)]


async def test_local_terminate_sends_sigterm_and_frees_the_name(
        tmp_path: Path, stand_in: Callable[[Path], list[str]], providers: list[LocalProvider]) -> None:
    provider = local(tmp_path, stand_in)
    providers.append(provider)
    await provider.launch("c", "c-1")
    pid = (await eventually("start", lambda: started(tmp_path / "agents", "auto-c-1")))["pid"]  # type: ignore[index]
    assert await provider.terminate("auto-c-1") is None
    assert (tmp_path / "agents" / "auto-c-1" / "got-term").exists(), "stopped with SIGTERM, so it can stop its runs"
    assert process_gone(pid)  # type: ignore[arg-type]
    assert await provider.list() == []
    assert await provider.terminate("auto-c-1") is None, "terminating what is gone is not an error"
    assert (await provider.launch("c", "c-1")).status is ProviderStatus.STOPPED, "a used key launches nothing"
    again = await provider.launch("c", "c-2")
    assert again.name == "auto-c-1", "the lowest free name, so the data dir and node identity are reused"


async def test_local_terminate_kills_an_agent_that_ignores_sigterm(
        tmp_path: Path, stand_in: Callable[[Path], list[str]], providers: list[LocalProvider]) -> None:
    provider = local(tmp_path, stand_in, stop_timeout_s=0.3, ignore_term=True)
    providers.append(provider)
    await provider.launch("c", "c-1")
    pid = (await eventually("start", lambda: started(tmp_path / "agents", "auto-c-1")))["pid"]  # type: ignore[index]
    began = time.monotonic()
    assert await provider.terminate("auto-c-1") is None
    assert time.monotonic() - began < 5
    assert process_gone(pid)  # type: ignore[arg-type]
    assert not (tmp_path / "agents" / "auto-c-1" / "got-term").exists()


async def test_local_agent_that_exits_by_itself_is_reported_stopped(
        tmp_path: Path, stand_in: Callable[[Path], list[str]], providers: list[LocalProvider]) -> None:
    provider = local(tmp_path, stand_in, exit_code=3)
    providers.append(provider)
    await provider.launch("c", "c-1")

    async def status() -> list[ProviderNode] | ProviderError:
        return await provider.list()

    deadline = time.monotonic() + DEADLINE_S
    while (listed := await status()) != [ProviderNode("auto-c-1", "c", ProviderStatus.STOPPED)]:
        assert time.monotonic() < deadline, f"still {listed}"
        await asyncio.sleep(0.02)
    assert await provider.terminate("auto-c-1") is None
    assert await provider.list() == []


async def test_local_close_stops_every_agent(
        tmp_path: Path, stand_in: Callable[[Path], list[str]]) -> None:
    provider = local(tmp_path, stand_in)
    await provider.launch("a", "a-1")
    await provider.launch("b", "b-1")
    infos = [await eventually("start", lambda n=n: started(tmp_path / "agents", n)) for n in ("auto-a-1", "auto-b-1")]
    await provider.close()
    assert all(process_gone(info["pid"]) for info in infos)  # type: ignore[index]
    assert await provider.list() == []


async def test_local_launch_errors_are_data(tmp_path: Path, providers: list[LocalProvider]) -> None:
    provider = local(tmp_path, lambda config: [str(tmp_path / "no-such-agent"), str(config)])
    providers.append(provider)
    failed = await provider.launch("c", "c-1")
    assert isinstance(failed, ProviderError)
    assert "cannot start agent auto-c-1" in failed.message and "no-such-agent" in failed.message
    assert await provider.list() == []
    bad_name = await provider.launch("../etc", "x-1")
    assert isinstance(bad_name, ProviderError) and "not a valid cluster name" in bad_name.message


def test_local_refuses_settings_it_sets_itself(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="agent_settings must not set name"):
        local(tmp_path, name="x")
    with pytest.raises(ValueError, match="is not a string, number, boolean or table"):
        local(tmp_path, cpus=[1, 2])
    with pytest.raises(ValueError, match="'x = 1' is not an agent config key"):
        local(tmp_path, **{"x = 1": 2})


async def test_local_starts_the_real_agent(tmp_path: Path, providers: list[LocalProvider]) -> None:
    """The generated agent.toml is one the real agent accepts; SIGTERM stops it although no head answers."""
    provider = LocalProvider(head=head_at(tmp_path, f"unix:{tmp_path}/no-head.sock", f"unix:{tmp_path}/no-node.sock"),
                             data_dir=tmp_path / "agents", agent_settings={"fake_gpus": 1, "cpus": 1.0},
                             log_dir=tmp_path / "logs")
    providers.append(provider)
    node = await provider.launch("default", "default-1")
    assert node == ProviderNode("auto-default-1", "default", ProviderStatus.RUNNING)
    log = tmp_path / "logs" / "auto-default-1.log"
    await eventually("the agent to start", lambda: "agent starting" in log.read_text())
    assert await provider.list() == [node]
    assert await provider.terminate("auto-default-1") is None
    assert await provider.list() == []
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


# Both providers as the head runs them: under uvloop, in a process that serves gRPC. Prints how many of the agents
# it launched were reported stopped at once and how many power commands failed, and whether an at-fork handler
# of the head ran in a child.
IN_THE_HEAD = """
import asyncio, json, os, sys
from pathlib import Path
import grpc, uvloop
from scheduler.autoscale import ClusterPolicy
from scheduler.providers import CommandProvider, LocalHead, LocalProvider, ProviderStatus

root, count = Path(sys.argv[1]), int(sys.argv[2])
forked = root / "at-fork-handler-ran"
os.register_at_fork(after_in_child=lambda: os.close(os.open(forked, os.O_WRONLY | os.O_CREAT)))

async def main():
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")

    async def traffic():
        while True:
            try:
                await channel.unary_unary("/runyard.Nobody/Calls")(b"", timeout=1.0)
            except grpc.aio.AioRpcError:
                pass

    calls = asyncio.create_task(traffic())
    async def join_token():
        return "join-secret"
    head = LocalHead(f"127.0.0.1:{port}", f"127.0.0.1:{port}", root / "ca.crt", join_token)
    local = LocalProvider(head=head, data_dir=root / "agents", agent_settings={}, log_dir=root / "logs",
                          command=lambda config: ["sleep", "60"], stop_timeout_s=5.0)
    metal = CommandProvider(ClusterPolicy("metal", max_nodes=1, provider="command", nodes=("n1",),
                                          power_on="true", power_off="true"))
    try:
        for i in range(count):
            await local.launch("c", f"c-{i}")
        await asyncio.sleep(0.5)
        stopped = [n.name for n in await local.list() if n.status is ProviderStatus.STOPPED]
        failed = []
        for _ in range(count):
            if (result := await metal.terminate("n1")) is not None:
                failed.append(result.message)
    finally:
        await local.close()
        calls.cancel()
        await channel.close()
        await server.stop(None)
    print(json.dumps({"stopped": stopped, "failed": failed, "at_fork_in_child": forked.exists()}))

uvloop.run(main())
"""


def test_agents_started_by_a_head_that_serves_grpc_under_uvloop_do_not_die_before_they_start(tmp_path: Path) -> None:
    """A forked child runs the head's at-fork handlers before it execs; gRPC's restart its threads there and can
    kill the child with SIGSEGV: an agent then stops 'by itself' right after its launch, with an empty log."""
    script = tmp_path / "in_the_head.py"
    script.write_text(IN_THE_HEAD)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, str(script), str(tmp_path), "100"], capture_output=True, text=True,
                          env=env, timeout=90)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result == {"stopped": [], "failed": [], "at_fork_in_child": False}, result


# --- command provider ----------------------------------------------------------------------------------------------


def recorder(record: Path, word: str) -> str:
    """A power command that appends `<word> <node>` to `record`."""
    return f"sh -c 'echo \"{word} $1\" >> \"$2\"' sh {{node}} {shlex.quote(str(record))}"


def metal(record: Path, **overrides: object) -> ClusterPolicy:
    values: dict[str, object] = dict(max_nodes=2, provider="command", nodes=("n1", "n2"),
                                     power_on=recorder(record, "on"), power_off=recorder(record, "off"),
                                     command_timeout_s=10.0)
    values.update(overrides)
    return ClusterPolicy("metal", **values)  # type: ignore[arg-type]


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def test_command_launch_powers_on_the_next_node_once_per_key(tmp_path: Path) -> None:
    record = tmp_path / "power.log"
    provider = CommandProvider(metal(record))
    assert await provider.launch("metal", "metal-1") == ProviderNode("n1", "metal", ProviderStatus.RUNNING)
    assert await provider.launch("metal", "metal-1") == ProviderNode("n1", "metal", ProviderStatus.RUNNING)
    assert await provider.launch("metal", "metal-2") == ProviderNode("n2", "metal", ProviderStatus.RUNNING)
    assert lines(record) == ["on n1", "on n2"], "the same key never runs power_on twice"
    full = await provider.launch("metal", "metal-3")
    assert isinstance(full, ProviderError)
    assert full.message == "all 2 nodes of cluster metal are powered on; list more in clusters.metal.nodes of head.toml"
    assert await provider.list() == [ProviderNode("n1", "metal", ProviderStatus.RUNNING),
                                     ProviderNode("n2", "metal", ProviderStatus.RUNNING)]


async def test_command_terminate_powers_off_and_frees_the_node(tmp_path: Path) -> None:
    record = tmp_path / "power.log"
    provider = CommandProvider(metal(record))
    await provider.launch("metal", "metal-1")
    await provider.launch("metal", "metal-2")
    assert await provider.terminate("n1") is None
    assert await provider.list() == [ProviderNode("n2", "metal", ProviderStatus.RUNNING)]
    assert (await provider.launch("metal", "metal-3")).name == "n1"  # type: ignore[union-attr]
    assert lines(record) == ["on n1", "on n2", "off n1", "on n1"]
    await provider.close()
    assert lines(record)[-1] == "on n1", "closing the head leaves machines as they are"


async def test_command_node_is_substituted_per_argument_without_a_shell(tmp_path: Path) -> None:
    record = tmp_path / "args.log"
    count = f"sh -c 'echo \"$# $1\" >> \"$2\"' sh {{node}}-bmc {shlex.quote(str(record))}"
    provider = CommandProvider(metal(record, nodes=("rack 1; touch pwned",), max_nodes=1, power_on=count))
    node = await provider.launch("metal", "metal-1")
    assert isinstance(node, ProviderNode)
    assert lines(record) == ["2 rack 1; touch pwned-bmc"], "the node name stays one argument"
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


@pytest.mark.parametrize(("power_on", "timeout_s", "message"), [
    ("false", 10.0, "power on of node n1 failed: `false` exited with code 1 (nothing on stderr)"),
    ("sh -c 'echo warming up >&2; echo boom >&2; exit 3'", 10.0,
     "power on of node n1 failed: `sh -c 'echo warming up >&2; echo boom >&2; exit 3'` exited with code 3: boom"),
    ("sleep 10", 0.2, "power on of node n1 failed: `sleep 10` did not finish within 0.2s and was killed"),
    ("/nonexistent/power-tool {node} on", 10.0,
     "power on of node n1 failed: '/nonexistent/power-tool' not found (command: /nonexistent/power-tool n1 on); "
     "install it or fix the command"),
])
async def test_command_failures_are_one_clear_line(tmp_path: Path, power_on: str, timeout_s: float,
                                                   message: str) -> None:
    provider = CommandProvider(metal(tmp_path / "power.log", power_on=power_on, command_timeout_s=timeout_s))
    began = time.monotonic()
    failed = await provider.launch("metal", "metal-1")
    assert time.monotonic() - began < 5
    assert failed == ProviderError(message)
    assert await provider.list() == [], "a failed launch leaves nothing behind"


async def test_command_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    power_on = f"sh -c 'sleep 30 & echo $! > \"$1\"; wait' sh {shlex.quote(str(pid_file))}"
    provider = CommandProvider(metal(tmp_path / "power.log", power_on=power_on, command_timeout_s=0.3))
    failed = await provider.launch("metal", "metal-1")
    assert isinstance(failed, ProviderError) and "did not finish within 0.3s" in failed.message
    child = int(pid_file.read_text())
    await eventually("the command's child to be killed", lambda: process_gone(child), timeout_s=5)


async def test_command_failed_launch_can_be_retried_with_its_key(tmp_path: Path) -> None:
    record, flag = tmp_path / "power.log", tmp_path / "bmc-reachable"
    power_on = (f"sh -c 'test -e \"$1\" || {{ echo \"bmc of $3 unreachable\" >&2; exit 1; }}; echo \"on $3\" >> \"$2\"' "
                f"sh {shlex.quote(str(flag))} {shlex.quote(str(record))} {{node}}")
    provider = CommandProvider(metal(record, power_on=power_on))
    failed = await provider.launch("metal", "metal-1")
    assert isinstance(failed, ProviderError)
    assert failed.message.startswith("power on of node n1 failed: `sh -c ")
    assert failed.message.endswith(" n1` exited with code 1: bmc of n1 unreachable")
    flag.write_text("")
    assert await provider.launch("metal", "metal-1") == ProviderNode("n1", "metal", ProviderStatus.RUNNING)
    assert lines(record) == ["on n1"]


async def test_command_terminate_errors(tmp_path: Path) -> None:
    record = tmp_path / "power.log"
    provider = CommandProvider(metal(record, power_off="sh -c 'echo ipmi session refused >&2; exit 1'"))
    await provider.launch("metal", "metal-1")
    failed = await provider.terminate("n1")
    assert isinstance(failed, ProviderError) and failed.message.endswith("exited with code 1: ipmi session refused")
    assert failed.message.startswith("power off of node n1 failed")
    assert await provider.list() == [ProviderNode("n1", "metal", ProviderStatus.RUNNING)], "it may still be on"
    stranger = await provider.terminate("n7")
    assert isinstance(stranger, ProviderError) and "n7 is not one of the nodes of cluster metal" in stranger.message
    other = await provider.launch("cpu", "cpu-1")
    assert isinstance(other, ProviderError) and "cannot add a node to cluster cpu" in other.message


async def test_command_powers_off_a_listed_node_it_did_not_power_on(tmp_path: Path) -> None:
    """After a head restart the provider knows nothing, yet a listed node can still be powered off."""
    record = tmp_path / "power.log"
    provider = CommandProvider(metal(record))
    assert await provider.terminate("n2") is None
    assert lines(record) == ["off n2"]

