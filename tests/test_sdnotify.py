"""systemd's notify protocol against a socket this test listens on, as systemd would."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from runyard.sdnotify import Notifier


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.settimeout(10)
    yield sock, path
    sock.close()


def test_ready_status_watchdog_and_stopping_reach_the_socket(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    environ = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid()), "HOME": "/h"}
    notifier = Notifier(environ)

    notifier.ready("serving on 127.0.0.1:7433")
    notifier.status("3 nodes ready")
    notifier.watchdog()
    notifier.stopping()

    said = [sock.recv(4096).decode() for _ in range(4)]
    assert said == ["READY=1\nSTATUS=serving on 127.0.0.1:7433", "STATUS=3 nodes ready", "WATCHDOG=1",
                    "STOPPING=1\nSTATUS=stopping"]
    assert notifier.watchdog_s == 30.0
    assert environ == {"HOME": "/h"}, "what the daemon starts must not inherit the socket"


def test_the_abstract_namespace_is_spelled_with_an_at(tmp_path: Path) -> None:
    name = f"runyard-test-{os.getpid()}-{tmp_path.name}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(10)
        Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert sock.recv(4096) == b"READY=1"


def test_without_systemd_nothing_happens_and_a_gone_socket_does_not_raise(tmp_path: Path) -> None:
    quiet = Notifier({})
    assert not quiet.enabled
    quiet.ready()
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    gone.ready()
    gone.watchdog()


def test_a_watchdog_meant_for_another_process_is_ignored(listener: tuple[socket.socket, str]) -> None:
    assert Notifier({"NOTIFY_SOCKET": listener[1], "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}).watchdog_s == 0


@pytest.mark.timeout(30)
async def test_keep_alive_pings_while_healthy_and_stops_when_not(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    sock.setblocking(False)
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "20000"})   # 20 ms: a ping every 10 ms
    healthy = True
    task = asyncio.create_task(notifier.keep_alive(lambda: healthy))
    loop = asyncio.get_running_loop()
    assert await asyncio.wait_for(loop.sock_recv(sock, 64), 10) == b"WATCHDOG=1"
    healthy = False
    await asyncio.sleep(0.05)            # pings already sent are drained, then none come
    while True:
        try:
            sock.recv(64)
        except BlockingIOError:
            break
    await asyncio.sleep(0.1)
    with pytest.raises(BlockingIOError):
        sock.recv(64)
    task.cancel()


@pytest.mark.timeout(120)
def test_the_head_and_an_agent_tell_systemd_when_they_serve_are_alive_and_stop(
        tmp_path: Path, listener: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch) -> None:
    from testbed.harness import Cluster

    sock, path = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "400000")      # both daemons ping every 0.2 s
    said: list[str] = []

    def hear(until: str, *, exactly: bool = False) -> None:
        while not any(until == message if exactly else until in message for message in said):
            said.append(sock.recv(4096).decode())

    cluster = Cluster.start(tmp_path / "cluster", agents=1)
    try:
        hear("STATUS=connected to")                     # the agent: after the head accepted its Connect
        ready = [m for m in said if m.startswith("READY=1")]
        assert len(ready) == 2 and "serving clients on" in ready[0] and "as node-1" in ready[1]
        assert (cluster.head.data_dir / "ready.json").exists(), "ready means serving"
        said.clear()
        hear("WATCHDOG=1")
    finally:
        cluster.stop()
    hear("STOPPING=1\nSTATUS=stopping its runs")     # the agent
    hear("STOPPING=1\nSTATUS=stopping", exactly=True)  # the head
