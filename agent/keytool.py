"""The node's key and its certificate signing request, made in a process of its own.

`python -m agent.keytool KEY_FILE NODE_NAME` creates KEY_FILE (an ECDSA P-256 key, 0600) when it is missing and
prints the node's CSR (PEM) on stdout. The agent runs it once, to enroll: cryptography (8 MB of native library)
is then never mapped into the agent, whose memory is bounded (`make_csr`).
Must not: talk to the network, or print anything but the CSR on stdout.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

_TIMEOUT_S = 60.0


def make_csr(key_file: Path, node_name: str) -> bytes:
    """The CSR of the node's key (made first when `key_file` is missing), from a process of its own."""
    # A session of its own: a signal to the agent's process group (its stop) does not cut it short; it is quick.
    done = subprocess.run([sys.executable, "-m", "agent.keytool", str(key_file), node_name], capture_output=True,
                          timeout=_TIMEOUT_S, check=False, start_new_session=True)
    if done.returncode != 0:
        said = done.stderr.decode(errors="replace").strip().splitlines()
        raise OSError(f"cannot make the node's key and certificate request: {said[-1] if said else done.returncode}")
    return done.stdout


def main(argv: list[str]) -> int:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from runyard import pki
    from runyard.private import write_private

    key_file, node_name = Path(argv[0]), argv[1]
    if not key_file.exists():
        pem = pki.new_key().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption())
        key_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private(key_file, pem)
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        print(f"{key_file} does not hold an ECDSA key", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(pki.node_csr(node_name, key))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
