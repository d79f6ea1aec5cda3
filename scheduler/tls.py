"""The head's TLS material: the cluster CA and the head's certificate under `tls_dir`, and the server credentials
of its two ports.

On first start the head creates the CA (`ca.key` 0600, `ca.crt`) and its own certificate for every name it may
be reached by (`pki.local_names` plus `tls_names`); at every start it issues its certificate again when it has
under 30 days left or does not cover a name. The client port verifies nothing of the client (users present
tokens); the node port requires a client certificate signed by the CA (mTLS).
Must not: decide who may call what (`auth.py` does).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import grpc

from runyard import pki
from runyard.private import write_private

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class HeadTLS:
    ca: pki.KeyPair
    server: pki.KeyPair
    ca_file: Path

    @property
    def fingerprint(self) -> str:
        return pki.fingerprint(self.ca.cert_pem)

    def client_port(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials([(self.server.key_pem, self.server.cert_pem + self.ca.cert_pem)])

    def node_port(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials([(self.server.key_pem, self.server.cert_pem + self.ca.cert_pem)],
                                           root_certificates=self.ca.cert_pem, require_client_auth=True)


def load_or_create(tls_dir: Path, names: list[str], cluster_id: str) -> HeadTLS:
    tls_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(tls_dir, 0o700)
    ca_key, ca_crt = tls_dir / "ca.key", tls_dir / "ca.crt"
    if ca_key.exists() and ca_crt.exists():
        ca = pki.KeyPair(ca_key.read_bytes(), ca_crt.read_bytes())
    else:
        ca = pki.create_ca(cluster_id)
        write_private(ca_key, ca.key_pem)
        write_private(ca_crt, ca.cert_pem)
        log.info("cluster CA created", extra={"path": str(ca_crt), "fingerprint": pki.fingerprint(ca.cert_pem)})
    head_key, head_crt = tls_dir / "head.key", tls_dir / "head.crt"
    if head_key.exists() and head_crt.exists() and not pki.server_needs_renewal(head_crt.read_bytes(), names):
        server = pki.KeyPair(head_key.read_bytes(), head_crt.read_bytes())
    else:
        server = pki.issue_server(ca, names)
        write_private(head_key, server.key_pem)
        write_private(head_crt, server.cert_pem)
        log.info("head certificate issued", extra={"names": ",".join(names)})
    return HeadTLS(ca, server, ca_crt)
