"""The head refuses to start with one clear line, never a traceback, when it cannot listen."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path


def test_a_taken_port_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "scheduler", "--data-dir", str(tmp_path / "head"),
                               "--listen", f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr.strip().splitlines()[-1]


def test_plaintext_on_an_address_that_is_not_loopback_is_refused(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "scheduler", "--data-dir", str(tmp_path / "head"),
                           "--listen", "0.0.0.0:0"], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "RUNYARD_HEAD_INSECURE_PLAINTEXT": "true"})
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "refusing to listen on 0.0.0.0:0 without TLS" in done.stderr.strip().splitlines()[-1]


def test_the_head_creates_its_ca_and_certificate_once_and_keeps_the_ca_private(tmp_path: Path) -> None:
    from scheduler.tls import load_or_create
    from runyard import pki

    first = load_or_create(tmp_path / "tls", ["127.0.0.1", "head.example"], "c1")
    again = load_or_create(tmp_path / "tls", ["127.0.0.1", "head.example"], "c1")
    assert again.ca == first.ca and again.server == first.server
    assert (tmp_path / "tls").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "tls" / "ca.key").stat().st_mode & 0o777 == 0o600
    renamed = load_or_create(tmp_path / "tls", ["127.0.0.1", "head.example", "10.1.2.3"], "c1")
    assert renamed.ca == first.ca and renamed.server != first.server, "a new name: a new head certificate, same CA"
    assert not pki.server_needs_renewal(renamed.server.cert_pem, ["10.1.2.3", "head.example"])
