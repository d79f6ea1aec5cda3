"""A distributed run's processes on one node: every variable each one is started with, their log lines' ranks, the
uid they share, and the first-failure policy, with real processes and a manual clock."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest

from agent.errors import CannotStart
from agent.ranks import Launch, check_ports, hostfile, hosts_store, is_launcher, launches, listened_ports
from protos import runyard_pb2 as pb
from tests.fakes import eventually
from tests.test_agent_supervisor import Node, containment, node  # noqa: F401  (fixtures)

HEAD_ENV = {"NODE_RANK": "1", "NNODES": "2", "NPROC_PER_NODE": "2", "WORLD_SIZE": "4", "MASTER_ADDR": "10.0.0.5",
            "MASTER_PORT": "29501", "OTHER": "kept"}
NAMES = ("RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "WORLD_SIZE", "NODE_RANK", "NNODES", "NPROC_PER_NODE",
         "MASTER_ADDR", "MASTER_PORT")


def ddp(argv: list[str], procs: int) -> pb.RunSpec:
    return pb.RunSpec(argv=argv, distribution=pb.Distribution(type="pytorch", process_count_per_instance=procs))


def no_port() -> int:
    raise AssertionError("the head gave a port")


def test_each_process_of_a_gang_node_gets_its_ranks_and_the_head_s_rendezvous() -> None:
    started = launches(ddp(["python", "train.py"], 2), HEAD_ENV, free_port=no_port)

    assert [launch.rank for launch in started] == [2, 3]
    common = {"OTHER": "kept", "WORLD_SIZE": "4", "NODE_RANK": "1", "NNODES": "2", "NPROC_PER_NODE": "2",
              "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "29501"}
    assert [launch.env for launch in started] == [{**common, "RANK": "2", "LOCAL_RANK": "0"},
                                                  {**common, "RANK": "3", "LOCAL_RANK": "1"}]


def test_one_node_without_a_rendezvous_meets_on_loopback_at_a_free_port() -> None:
    started = launches(ddp(["python", "train.py"], 3), {}, free_port=lambda: 40123)

    assert [(s.env["RANK"], s.env["WORLD_SIZE"], s.env["MASTER_ADDR"], s.env["MASTER_PORT"]) for s in started] == [
        (str(r), "3", "127.0.0.1", "40123") for r in range(3)]


@pytest.mark.parametrize("argv", [["torchrun", "train.py"], ["/bin/sh", "-c", "torchrun --standalone t.py"],
                                  ["/bin/sh", "-c", "python -m torch.distributed.run t.py"],
                                  ["python3", "-m", "torch.distributed.run", "t.py"]])
def test_a_launcher_is_started_once_with_its_own_variables(argv: list[str]) -> None:
    (only,) = launches(ddp(argv, 2), HEAD_ENV, free_port=no_port)

    assert only.rank == 2
    assert {k: only.env[k] for k in only.env if k.startswith("PET_")} == {
        "PET_NNODES": "2", "PET_NPROC_PER_NODE": "2", "PET_NODE_RANK": "1", "PET_MASTER_ADDR": "10.0.0.5",
        "PET_MASTER_PORT": "29501", "PET_TEE": "3"}
    assert "RANK" not in only.env and "LOCAL_RANK" not in only.env


@pytest.mark.parametrize("argv", [["python", "train.py"], ["/bin/sh", "-c", "echo torchrun"], ["torchrunner"]])
def test_other_commands_are_no_launchers(argv: list[str]) -> None:
    assert not is_launcher(argv)


def test_a_run_without_distribution_is_one_process_as_it_is() -> None:
    (only,) = launches(pb.RunSpec(argv=["python", "t.py"]), {"A": "1"}, free_port=no_port)

    assert (only.rank, only.env) == (0, {"A": "1"})


def assign(node: Node, run_id: str, argv: list[str], procs: int) -> None:
    node.supervisor.start(pb.Assignment(run_id=run_id, attempt=1, snapshot_sha256=node.sha, spec=ddp(argv, procs)))


def lines_by_rank(node: Node, run_id: str) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    for m in node.outbox.after(0):
        if m.WhichOneof("body") == "logs" and m.logs.run_id == run_id:
            for r in m.logs.records:
                if r.stream == pb.STDOUT:
                    found.setdefault(r.rank, []).append(r.data.decode())
    return found


@pytest.mark.timeout(30)
async def test_every_process_runs_as_the_run_s_uid_and_its_lines_carry_its_rank(node: Node) -> None:
    script = 'id -u; for n in ' + " ".join(NAMES) + '; do eval "echo $n=\\$$n"; done'
    assign(node, "ddp", ["sh", "-c", script], 3)

    exited = await eventually("the run to exit", lambda: node.exited("ddp"))

    assert exited.exit_code == 0, node.system_lines("ddp")
    lines = lines_by_rank(node, "ddp")
    assert sorted(lines) == [0, 1, 2]
    assert len({lines[r][0] for r in lines}) == 1          # one uid
    for rank, (_, *variables) in lines.items():
        env = dict(v.split("=", 1) for v in variables)
        assert {k: env[k] for k in NAMES if k != "MASTER_PORT"} == {
            "RANK": str(rank), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": "3", "WORLD_SIZE": "3",
            "NODE_RANK": "0", "NNODES": "1", "NPROC_PER_NODE": "3", "MASTER_ADDR": "127.0.0.1"}
        assert env["MASTER_PORT"].isdigit()
    assert len({dict(v.split("=", 1) for v in lines[r][1:])["MASTER_PORT"] for r in lines}) == 1


@pytest.mark.parametrize(("spec", "env", "hosts"), [
    (ddp(["python", "train.py"], 2), {**HEAD_ENV, "NODE_RANK": "0"}, True),
    (ddp(["python", "train.py"], 2), {}, True),                       # one node: its own rank 0
    (ddp(["python", "train.py"], 2), HEAD_ENV, False),                # node rank 1
    (ddp(["torchrun", "train.py"], 2), {**HEAD_ENV, "NODE_RANK": "0"}, False),     # torchrun's agent hosts it
    (pb.RunSpec(argv=["python"], distribution=pb.Distribution(type="mpi", process_count_per_instance=2)),
     {**HEAD_ENV, "NODE_RANK": "0"}, False),
])
def test_node_rank_0_of_a_pytorch_run_started_process_by_process_hosts_its_store(spec: pb.RunSpec,
                                                                                  env: dict[str, str],
                                                                                  hosts: bool) -> None:
    assert hosts_store(spec, launches(spec, env, free_port=lambda: 40123)) is hosts


@pytest.mark.timeout(60)
async def test_the_agent_hosts_the_store_for_as_long_as_the_ranks_live(node: Node) -> None:
    """As torchrun's agent: every rank, rank 0 too, is a client of the store the agent started, and rank 0 may
    leave first; once the ranks are done the store is gone and its port free."""
    pytest.importorskip("torch")
    script = ("import datetime, os, time; from torch.distributed import TCPStore; "
              "rank = int(os.environ['RANK']); "
              "store = TCPStore(os.environ['MASTER_ADDR'], int(os.environ['MASTER_PORT']), is_master=False, "
              "timeout=datetime.timedelta(seconds=30)); "
              "store.set(f'rank{rank}', 'here'); "
              "time.sleep(0.5) if rank else None; "          # rank 0 leaves first
              "print(os.environ['TORCHELASTIC_USE_AGENT_STORE'], os.environ['MASTER_PORT'], "
              "store.get('rank0').decode(), store.get('rank1').decode(), flush=True)")
    assign(node, "stored", ["python", "-c", script], 2)

    exited = await eventually("the run to exit", lambda: node.exited("stored"), timeout_s=50)

    assert exited.exit_code == 0, node.system_lines("stored")
    lines = lines_by_rank(node, "stored")
    assert sorted(lines) == [0, 1]
    said = {line.split()[0] for r in lines for line in lines[r]}, {tuple(line.split()[2:]) for r in lines
                                                                  for line in lines[r]}
    assert said == ({"True"}, {("here", "here")})
    port = int(lines[0][0].split()[1])
    await eventually("the store's port to be free", lambda: _free(port))


def _free(port: int) -> bool:
    try:
        check_ports([port])
    except CannotStart:
        return False
    return True


@pytest.mark.timeout(30)
async def test_the_first_failure_is_the_attempt_s_exit_and_stops_the_others(node: Node) -> None:
    assign(node, "one-fails", ["sh", "-c", 'if [ "$RANK" = 1 ]; then exit 3; fi; exec sleep 600'], 3)

    exited = await eventually("the run to exit", lambda: node.exited("one-fails"))

    assert exited.exit_code == 3


@pytest.mark.timeout(30)
async def test_a_process_that_ignores_sigterm_is_killed_after_the_grace(node: Node) -> None:
    assign(node, "stubborn", ["sh", "-c", 'if [ "$RANK" = 0 ]; then exit 5; fi; trap "" TERM; while :; do sleep 0.1; done'],
           2)

    def ended() -> pb.RunUpdate | None:
        node.clock.advance(1.0)
        return node.exited("stubborn")

    exited = await eventually("the run to exit", ended)

    assert exited.exit_code == 5


@pytest.mark.timeout(30)
async def test_all_processes_exiting_zero_is_zero(node: Node) -> None:
    assign(node, "fine", ["sh", "-c", 'sleep 0.$RANK; echo done $RANK'], 2)

    exited = await eventually("the run to exit", lambda: node.exited("fine"))

    assert exited.exit_code == 0
    assert lines_by_rank(node, "fine") == {0: ["done 0"], 1: ["done 1"]}


MPI_ENV = {**HEAD_ENV, "RUNYARD_NODE_ADDRESSES": "10.0.0.5,10.0.0.6"}


def mpi(argv: list[str], procs: int) -> pb.RunSpec:
    return pb.RunSpec(argv=argv, distribution=pb.Distribution(type="mpi", process_count_per_instance=procs))


@pytest.mark.parametrize("node_rank", [0, 1])
def test_each_process_of_an_mpi_node_gets_open_mpi_s_and_azure_s_variables(node_rank: int) -> None:
    env = {**MPI_ENV, "NODE_RANK": str(node_rank)}
    started = launches(mpi(["python", "train.py"], 2), env, free_port=no_port, hostfile_path="/runs/a/hostfile")

    common = {"OTHER": "kept", "WORLD_SIZE": "4", "NODE_RANK": str(node_rank), "NNODES": "2", "NPROC_PER_NODE": "2",
              "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "29501",
              "RUNYARD_NODE_ADDRESSES": "10.0.0.5,10.0.0.6", "OMPI_COMM_WORLD_SIZE": "4",
              "OMPI_COMM_WORLD_LOCAL_SIZE": "2", "AZ_BATCH_MASTER_NODE": "10.0.0.5:29501",
              "RUNYARD_HOSTFILE": "/runs/a/hostfile"}
    assert [launch.rank for launch in started] == [2 * node_rank, 2 * node_rank + 1]
    assert [launch.env for launch in started] == [
        {**common, "RANK": str(2 * node_rank + local), "LOCAL_RANK": str(local),
         "OMPI_COMM_WORLD_RANK": str(2 * node_rank + local), "OMPI_COMM_WORLD_LOCAL_RANK": str(local)}
        for local in (0, 1)]


def test_an_mpi_command_named_torchrun_is_still_one_process_per_rank() -> None:
    assert len(launches(mpi(["torchrun", "t.py"], 2), MPI_ENV, free_port=no_port)) == 2


def test_the_hostfile_lists_every_node_in_rank_order_with_its_slots() -> None:
    assert hostfile(mpi(["t"], 3), MPI_ENV) == "10.0.0.5 slots=3\n10.0.0.6 slots=3\n"


def test_one_mpi_node_without_the_head_is_its_own_hostfile_on_loopback() -> None:
    assert hostfile(mpi(["t"], 2), {}) == "127.0.0.1 slots=2\n"
    (first, second) = launches(mpi(["t"], 2), {}, free_port=lambda: 40123, hostfile_path="h")
    assert (first.env["AZ_BATCH_MASTER_NODE"], second.env["OMPI_COMM_WORLD_RANK"]) == ("127.0.0.1:40123", "1")


@pytest.mark.timeout(30)
async def test_an_mpi_run_s_processes_read_the_hostfile_in_the_run_s_directory(node: Node) -> None:
    node.supervisor.start(pb.Assignment(run_id="mpi", attempt=1, snapshot_sha256=node.sha, spec=mpi(
        ["sh", "-c", 'echo "$OMPI_COMM_WORLD_RANK/$OMPI_COMM_WORLD_SIZE $RUNYARD_HOSTFILE"; cat "$RUNYARD_HOSTFILE"'],
        2)))

    exited = await eventually("the run to exit", lambda: node.exited("mpi"))

    assert exited.exit_code == 0, node.system_lines("mpi")
    lines = lines_by_rank(node, "mpi")
    assert sorted(lines) == [0, 1]
    for rank, (first, *rest) in lines.items():
        size, path = first.split(" ")
        assert size == f"{rank}/2" and path.endswith("/hostfile")
        assert rest == ["127.0.0.1 slots=2"]


def tensorflow(workers: int, servers: int, per_node: int) -> pb.RunSpec:
    return pb.RunSpec(argv=["python", "t.py"], distribution=pb.Distribution(
        type="tensorflow", process_count_per_instance=per_node, worker_count=workers, parameter_server_count=servers))


# Each node's processes listen at MASTER_PORT + their index on the node.
TF_CLUSTER = {"worker": ["10.0.0.5:29502", "10.0.0.6:29501", "10.0.0.6:29502"], "ps": ["10.0.0.5:29501"]}


@pytest.mark.parametrize("node_rank", [0, 1])
def test_each_tensorflow_process_gets_tf_config_with_the_whole_cluster_and_its_task(node_rank: int) -> None:
    env = {**MPI_ENV, "NODE_RANK": str(node_rank)}
    started = launches(tensorflow(3, 1, 2), env, free_port=no_port)

    tasks = [("ps", 0), ("worker", 0)] if node_rank == 0 else [("worker", 1), ("worker", 2)]
    assert [launch.rank for launch in started] == [2 * node_rank, 2 * node_rank + 1]
    for local, (launch, (kind, index)) in enumerate(zip(started, tasks, strict=True)):
        config = json.loads(launch.env.pop("TF_CONFIG"))
        assert config == {"cluster": TF_CLUSTER, "task": {"type": kind, "index": index}}
        assert launch.env == {**env, "RANK": str(2 * node_rank + local), "LOCAL_RANK": str(local),
                              "WORLD_SIZE": "4"}


def test_tensorflow_without_parameter_servers_has_workers_only_and_a_short_last_node() -> None:
    env = {**MPI_ENV, "NODE_RANK": "1"}
    (only,) = launches(tensorflow(3, 0, 2), env, free_port=no_port)

    assert (only.rank, json.loads(only.env["TF_CONFIG"])) == (2, {
        "cluster": {"worker": ["10.0.0.5:29501", "10.0.0.5:29502", "10.0.0.6:29501"]},
        "task": {"type": "worker", "index": 2}})


def test_one_tensorflow_node_without_the_head_uses_loopback_from_a_free_port() -> None:
    started = launches(tensorflow(1, 1, 2), {}, free_port=lambda: 40000)

    assert [json.loads(s.env["TF_CONFIG"]) for s in started] == [
        {"cluster": {"worker": ["127.0.0.1:40001"], "ps": ["127.0.0.1:40000"]}, "task": {"type": t, "index": 0}}
        for t in ("ps", "worker")]


@pytest.mark.parametrize(("spec", "env", "ports"), [
    (ddp(["python", "t.py"], 2), {**HEAD_ENV, "NODE_RANK": "0"}, [29501]),
    (ddp(["python", "t.py"], 2), HEAD_ENV, []),
    (ddp(["torchrun", "t.py"], 2), {**HEAD_ENV, "NODE_RANK": "0"}, [29501]),
    (mpi(["python", "t.py"], 2), {**MPI_ENV, "NODE_RANK": "0"}, [29501]),
    (mpi(["python", "t.py"], 2), MPI_ENV, []),
    (tensorflow(3, 1, 2), {**MPI_ENV, "NODE_RANK": "0"}, [29501, 29502]),
    (tensorflow(3, 1, 2), MPI_ENV, [29501, 29502]),
    (tensorflow(3, 0, 2), MPI_ENV, [29501]),
    (pb.RunSpec(argv=["python", "t.py"]), {"MASTER_PORT": "29501"}, [])])
def test_the_ports_a_node_listens_on_are_rank_0_s_master_port_or_a_tensorflow_node_s_block(
        spec: pb.RunSpec, env: dict[str, str], ports: list[int]) -> None:
    assert listened_ports(spec, launches(spec, env, free_port=no_port)) == ports


def test_a_node_without_processes_listens_on_nothing() -> None:
    assert listened_ports(tensorflow(1, 0, 1), []) == []
    assert listened_ports(ddp(["t"], 1), [Launch(0, {"NODE_RANK": "0"})]) == []


@pytest.fixture
def held() -> Iterator[tuple[int, socket.socket]]:
    """A port that another program listens on, on all addresses, with the port below it free. SO_REUSEADDR as
    listeners set it (torch's TCPStore, Python's socketserver)."""
    while True:
        holder = socket.socket()
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("", 0))
        port = int(holder.getsockname()[1])
        with socket.socket() as below:
            try:
                below.bind(("", port - 1))
            except OSError:
                holder.close()
                continue
        holder.listen()
        with holder:
            yield port, holder
        return


def test_a_port_another_program_holds_is_named_and_a_free_one_passes(held: tuple[int, socket.socket]) -> None:
    port, _ = held

    check_ports([port - 1])
    with pytest.raises(CannotStart) as master:
        check_ports([port, port + 1])
    with pytest.raises(CannotStart) as above:
        check_ports([port - 1, port])

    assert str(master.value) == (f"cannot start the run: MASTER_PORT {port} is in use on this node "
                                 "(another program holds it)")
    assert str(above.value) == (f"cannot start the run: port {port} (MASTER_PORT + 1) is in use on this node "
                                "(another program holds it)")


def test_a_port_an_ended_connection_left_in_time_wait_is_free(held: tuple[int, socket.socket]) -> None:
    port, holder = held
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = holder.accept()
    accepted.close()            # the listener's side closes first: its port is left in TIME_WAIT
    client.close()
    holder.close()

    check_ports([port])


def gang_node(spec: pb.RunSpec, env: dict[str, str]) -> pb.RunSpec:
    spec.environment.update(env)
    return spec


@pytest.mark.timeout(30)
async def test_rank_0_of_a_gang_whose_master_port_another_program_holds_does_not_start(
        node: Node, held: tuple[int, socket.socket]) -> None:
    port, _ = held
    env = {**HEAD_ENV, "NODE_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    node.supervisor.start(pb.Assignment(run_id="held", attempt=1, snapshot_sha256=node.sha,
                                        spec=gang_node(ddp(["python", "hello.py"], 2), env)))

    exited = await eventually("the attempt to end", lambda: node.exited("held"))

    assert (exited.exit_code, exited.reason) == (127, pb.REASON_UNSPECIFIED)
    assert node.system_lines("held") == [
        f"cannot start the run: MASTER_PORT {port} is in use on this node (another program holds it)"]
    assert not node.updates("held", pb.RunUpdate.RUNNING)
    assert node.stdout("held") == b""


@pytest.mark.timeout(30)
async def test_a_tensorflow_node_whose_block_holds_a_taken_port_does_not_start(
        node: Node, held: tuple[int, socket.socket]) -> None:
    port, _ = held
    env = {**MPI_ENV, "NODE_RANK": "1", "MASTER_PORT": str(port - 1)}
    node.supervisor.start(pb.Assignment(run_id="tf-held", attempt=1, snapshot_sha256=node.sha,
                                        spec=gang_node(tensorflow(3, 1, 2), env)))

    exited = await eventually("the attempt to end", lambda: node.exited("tf-held"))

    assert exited.exit_code == 127
    assert node.system_lines("tf-held") == [f"cannot start the run: port {port} (MASTER_PORT + 1) is in use on this "
                                            "node (another program holds it)"]


@pytest.mark.timeout(30)
async def test_a_node_other_than_rank_0_starts_though_the_master_port_is_taken_here(
        node: Node, held: tuple[int, socket.socket]) -> None:
    port, _ = held
    env = {**HEAD_ENV, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    node.supervisor.start(pb.Assignment(run_id="rank1", attempt=1, snapshot_sha256=node.sha,
                                        spec=gang_node(ddp(["python", "hello.py"], 2), env)))

    exited = await eventually("the attempt to end", lambda: node.exited("rank1"))

    assert exited.exit_code == 0, node.system_lines("rank1")
