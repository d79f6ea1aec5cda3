"""The client config: it pins the cluster CA, and every way it can be wrong is one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import AgentConfig
from runyard import pki
from runyard.config import ClientConfig, load_client_config, write_client_config
from runyard.errors import ConfigError, UsageError


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("RUNYARD_ADDRESS", "RUNYARD_TOKEN", "RUNYARD_CA_FILE", "RUNYARD_INSECURE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RUNYARD_CONFIG", str(tmp_path / "config.toml"))
    return tmp_path


def test_the_config_round_trips_and_its_files_are_private(home: Path) -> None:
    ca = pki.create_ca("c").cert_pem
    path = write_client_config(ClientConfig("head.example:7433", "secret", ca))
    assert path.stat().st_mode & 0o777 == 0o600 and (home / "config-ca.pem").stat().st_mode & 0o777 == 0o600
    assert load_client_config() == ClientConfig("head.example:7433", "secret", ca)


def test_a_ca_that_is_not_the_pinned_one_or_not_a_certificate_is_refused(home: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    write_client_config(ClientConfig("head.example:7433", "secret", pki.create_ca("c").cert_pem))
    (home / "config-ca.pem").write_bytes(pki.create_ca("another").cert_pem)
    with pytest.raises(ConfigError, match="is not the one pinned"):
        load_client_config()
    (home / "junk.pem").write_text("hello")
    monkeypatch.setenv("RUNYARD_CA_FILE", str(home / "junk.pem"))
    with pytest.raises(ConfigError, match="is not a PEM certificate"):
        load_client_config()


def test_plaintext_is_for_loopback_only_and_no_ca_says_to_log_in(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNYARD_ADDRESS", "10.0.0.1:7433")
    monkeypatch.setenv("RUNYARD_TOKEN", "t")
    with pytest.raises(ConfigError, match="runyard login 10.0.0.1:7433"):
        load_client_config()
    monkeypatch.setenv("RUNYARD_INSECURE", "1")
    with pytest.raises(ConfigError, match="loopback only"):
        load_client_config()
    monkeypatch.setenv("RUNYARD_ADDRESS", "127.0.0.1:7433")
    assert load_client_config().insecure


def test_a_missing_join_token_file_is_one_line(tmp_path: Path) -> None:
    config = AgentConfig(join_token_file=str(tmp_path / "nope"))
    with pytest.raises(UsageError, match="cannot read join_token_file .*nope: No such file"):
        config.join_secret()
