"""The agent's identity: its key pair, its node certificate, and the cluster CA it trusts the head with.

All three live in the agent's data dir: `node.key` (0600, made once, never leaves the node), `node.crt` (signed by
the head at enrollment, bound to the node's name) and `ca.crt`. The CA comes from `head_ca_file`, or from the head
itself when `head_ca_fingerprint` is set and what the head presents matches it (checked before anything is sent).
Must not: talk gRPC (`link.py` does) or decide when to enroll.
"""

from __future__ import annotations

import logging
from pathlib import Path

from agent.config import AgentConfig
from agent.keytool import make_csr
from runyard.config import fetch_ca, fingerprint
from runyard.private import write_private
from runyard.errors import UsageError

log = logging.getLogger(__name__)


class NodeIdentity:
    def __init__(self, config: AgentConfig) -> None:
        self._config = config
        data = config.data_path
        self.key_file, self.cert_file, self._ca_file = data / "node.key", data / "node.crt", data / "ca.crt"

    def ca(self) -> bytes:
        """The cluster CA (PEM). UsageError when none is configured or the head presents another."""
        config = self._config
        if config.head_ca_file:
            try:
                return Path(config.head_ca_file).read_bytes()
            except OSError as err:
                raise UsageError(f"cannot read head_ca_file {config.head_ca_file}: {err.strerror}") from None
        if not config.head_ca_fingerprint:
            raise UsageError("set head_ca_file (the cluster CA) or head_ca_fingerprint in the agent config "
                             "(`runyard node token create` prints the fingerprint)")
        expected = config.head_ca_fingerprint.strip().lower()
        if self._ca_file.exists() and fingerprint(self._ca_file.read_bytes()) == expected:
            return self._ca_file.read_bytes()
        ca = fetch_ca(config.head_address)
        found = fingerprint(ca)
        if found != expected:
            raise UsageError(f"the head at {config.head_address} presents CA {found}, not head_ca_fingerprint "
                             f"{expected}: refusing to enroll")
        write_private(self._ca_file, ca)
        return ca

    def key_pem(self) -> bytes:
        """This node's private key (PEM), made on first use (`keytool`)."""
        if not self.key_file.exists():
            make_csr(self.key_file, self._config.name)
            log.info("node key created", extra={"path": str(self.key_file)})
        return self.key_file.read_bytes()

    def csr(self) -> bytes:
        """The node's certificate signing request, its key made first when it has none (`keytool`)."""
        created = not self.key_file.exists()
        csr = make_csr(self.key_file, self._config.name)
        if created:
            log.info("node key created", extra={"path": str(self.key_file)})
        return csr

    def certificate(self) -> bytes | None:
        return self.cert_file.read_bytes() if self.cert_file.exists() else None

    def save_certificate(self, cert_pem: bytes) -> None:
        write_private(self.cert_file, cert_pem)

    def forget_certificate(self) -> None:
        """The head no longer accepts it (the node was removed): enroll again with a join token."""
        self.cert_file.unlink(missing_ok=True)
