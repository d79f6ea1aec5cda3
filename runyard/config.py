"""Where the CLI finds the head and how it trusts it: `RUNYARD_ADDRESS` / `RUNYARD_TOKEN` / `RUNYARD_CA_FILE`, else
the config file that `runyard up` and `runyard login` write (`$RUNYARD_CONFIG`, else
`$XDG_CONFIG_HOME/runyard/config.toml`, else `~/.config/runyard/config.toml`), 0600. The head's MLflow URL is
`RUNYARD_MLFLOW_URL`, else the file's `mlflow_url` (`runyard up` writes it), else the head's port + 2.

The file pins the cluster CA: `ca_file` (written beside the config, 0600) and its `ca_fingerprint`, checked on
every load. `insecure = true` (or `RUNYARD_INSECURE=1`) talks plaintext to a head that allows it, on loopback only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import os
import socket
import ssl
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from runyard.errors import CertificateError, ConfigError
from runyard.private import write_private


@dataclass(frozen=True, slots=True)
class ClientConfig:
    address: str
    token: str
    ca_pem: bytes = b""                 # the cluster CA the head's certificate must chain to
    insecure: bool = False              # plaintext, loopback only (development)
    ca_file: str = field(default="", compare=False)   # where `ca_pem` was read from (MLflow clients take a file)
    mlflow_url: str = ""                # the head's MLflow read API; "" for its default (port + 2)

    def mlflow_tracking_uri(self) -> str:
        """The URL of the head's MLflow read API: `mlflow_url`, else the head's host at its port + 2."""
        if self.mlflow_url:
            return self.mlflow_url
        host, _, port = self.address.rpartition(":")
        try:
            number = int(port)
        except ValueError:
            raise ConfigError(f"the head address {self.address!r} is not host:port") from None
        return f"{'http' if self.insecure else 'https'}://{host}:{number + 2}"


def config_path() -> Path:
    if os.environ.get("RUNYARD_CONFIG"):
        return Path(os.environ["RUNYARD_CONFIG"])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "runyard" / "config.toml"


def is_loopback(address: str) -> bool:
    host = address.rpartition(":")[0].strip("[]") if ":" in address else address
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def fingerprint(cert_pem: bytes) -> str:
    """`sha256:` and the hex digest of the (first) certificate's DER bytes, as `openssl x509 -fingerprint -sha256`
    shows; stdlib only, so that every CLI command can check the pinned CA cheaply."""
    text = cert_pem.decode("ascii", "replace")
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    if begin not in text or end not in text:
        raise ConfigError("not a PEM certificate")
    body = text.split(begin, 1)[1].split(end, 1)[0]
    try:
        der = base64.b64decode("".join(body.split()), validate=True)
    except binascii.Error:
        raise ConfigError("not a PEM certificate") from None
    return "sha256:" + hashlib.sha256(der).hexdigest()


def load_client_config() -> ClientConfig:
    values: dict[str, object] = {}
    path = config_path()
    if path.exists():
        try:
            values = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise ConfigError(f"cannot read {path}: {err}") from None
    address = os.environ.get("RUNYARD_ADDRESS") or str(values.get("address", ""))
    token = os.environ.get("RUNYARD_TOKEN") or str(values.get("token", ""))
    if not address:
        raise ConfigError(f"no head address: `runyard login ADDRESS`, or start a local cluster with `runyard up` "
                          f"(looked in {path})")
    if not token:
        raise ConfigError(f"no token: set RUNYARD_TOKEN, or `runyard login {address}`")
    mlflow_url = os.environ.get("RUNYARD_MLFLOW_URL") or str(values.get("mlflow_url", ""))
    insecure = os.environ.get("RUNYARD_INSECURE", "").lower() in ("1", "true", "yes") or values.get("insecure") is True
    if insecure:
        if not is_loopback(address):
            raise ConfigError(f"insecure (plaintext) is allowed on loopback only, not for {address}")
        return ClientConfig(address, token, insecure=True, mlflow_url=mlflow_url)
    ca_file = os.environ.get("RUNYARD_CA_FILE") or str(values.get("ca_file", ""))
    if not ca_file:
        raise ConfigError(f"no cluster CA to trust the head with: `runyard login {address}` (looked in {path})")
    try:
        ca_pem = Path(ca_file).expanduser().read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read the cluster CA {ca_file}: {err.strerror}; `runyard login {address}` again") from None
    try:
        found = fingerprint(ca_pem)
    except ConfigError:
        raise ConfigError(f"the cluster CA {ca_file} is not a PEM certificate") from None
    pinned = "" if os.environ.get("RUNYARD_CA_FILE") else str(values.get("ca_fingerprint", ""))
    if pinned and found != pinned:
        raise ConfigError(f"the cluster CA in {ca_file} is not the one pinned in {path}; `runyard login {address}`")
    return ClientConfig(address, token, ca_pem, ca_file=str(Path(ca_file).expanduser().resolve()), mlflow_url=mlflow_url)


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_client_config(config: ClientConfig, path: Path | None = None) -> Path:
    """Write the config (0600) and, beside it, the CA it pins (0600)."""
    path = path or config_path()
    lines = [f"address = {_quoted(config.address)}", f"token = {_quoted(config.token)}"]
    if config.mlflow_url:
        lines.append(f"mlflow_url = {_quoted(config.mlflow_url)}")
    if config.insecure:
        lines.append("insecure = true")
    else:
        ca_file = path.with_name(path.stem + "-ca.pem")
        write_private(ca_file, config.ca_pem)
        lines += [f"ca_file = {_quoted(str(ca_file))}", f"ca_fingerprint = {_quoted(fingerprint(config.ca_pem))}"]
    write_private(path, ("\n".join(lines) + "\n").encode())
    return path


def fetch_ca(address: str, timeout_s: float = 10.0) -> bytes:
    """The CA certificate at the end of the chain a head presents at `address` (host:port), NOT verified: the
    caller must compare its fingerprint with one obtained out of band before trusting it."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s) as raw:
            with context.wrap_socket(raw, server_hostname=host or None) as tls:
                chain = tls._sslobj.get_unverified_chain()  # type: ignore[attr-defined]  # public in 3.13
    except (OSError, ValueError) as err:
        raise CertificateError(f"cannot read the certificate of {address}: {err}") from None
    if not chain or len(chain) < 2:
        raise CertificateError(f"{address} does not present a Runyard cluster certificate chain")
    return ssl.DER_cert_to_PEM_cert(chain[-1].public_bytes(ssl._ssl.ENCODING_DER)).encode()  # type: ignore[attr-defined]
