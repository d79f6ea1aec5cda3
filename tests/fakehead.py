"""A head for agent tests: a real `NodeAgent` gRPC server on 127.0.0.1:0 in the test's event loop.

It records everything the agent says and answers as the test programs it: refuse Join or Connect with a status
code, fall silent (read on, never answer), hold snapshot fetches, count them. Assignments and cancels go out
with `send()`. Only what the agent relies on is implemented; no scheduling, no store.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import shutil
import tempfile
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from protos import runyard_pb2 as pb
from protos import runyard_pb2_grpc as pb_grpc
from runyard import pki

CHUNK_BYTES = 64 * 1024


def zip_of(files: dict[str, str]) -> tuple[bytes, str]:
    """A snapshot archive of `files` and its sha256."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    data = buffer.getvalue()
    return data, hashlib.sha256(data).hexdigest()


class FakeHead(pb_grpc.NodeAgentServicer):
    def __init__(self) -> None:
        self.address = ""
        self.join_abort: tuple[grpc.StatusCode, str] | None = None
        self.connect_aborts: list[tuple[grpc.StatusCode, str]] = []   # the next Connects fail with these, in order
        self.silent = False                                           # read on, but neither ack nor send anything
        self.acking = True                                            # False: acknowledge Hello only
        self.snapshots: dict[str, bytes] = {}                         # run id -> its snapshot archive
        self.fetch_gate = asyncio.Event()                             # clear it to hold every fetch
        self.fetch_gate.set()
        self.upload_gate = asyncio.Event()                            # clear it to hold every upload
        self.upload_gate.set()
        self.fetches: list[tuple[str, int]] = []
        self.uploading: list[tuple[str, int]] = []
        self.uploads: list[tuple[str, int, str]] = []
        self.messages: list[pb.AgentMessage] = []
        self.joins = 0
        self.connects = 0
        self._session: asyncio.Queue[pb.HeadMessage] | None = None
        self._pending: list[pb.HeadMessage] = []
        self._server: grpc.aio.Server | None = None

    async def start(self) -> None:
        """Serve like the real head: Join on a TLS port, the rest on an mTLS port, both under a CA of its own."""
        self._ca = pki.create_ca("fake")
        server = pki.issue_server(self._ca, ["127.0.0.1", "localhost"])
        pair = [(server.key_pem, server.cert_pem + self._ca.cert_pem)]
        self._dir = Path(tempfile.mkdtemp(prefix="fakehead-"))
        self.ca_file = self._dir / "ca.crt"
        self.ca_file.write_bytes(self._ca.cert_pem)
        self._server = grpc.aio.server()
        pb_grpc.add_NodeAgentServicer_to_server(self, self._server)
        port = self._server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials(pair))
        node_port = self._server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials(
            pair, root_certificates=self._ca.cert_pem, require_client_auth=True))
        await self._server.start()
        self.address, self.node_address = f"127.0.0.1:{port}", f"127.0.0.1:{node_port}"

    def agent_settings(self) -> dict[str, object]:
        """The agent config keys that point an agent at this head, with a join token it accepts."""
        return {"head_address": self.address, "head_node_address": self.node_address,
                "head_ca_file": str(self.ca_file), "join_token": "join-secret"}

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=None)
        shutil.rmtree(self._dir, ignore_errors=True)

    def send(self, message: pb.HeadMessage) -> None:
        """To the agent on its stream now, or as soon as it connects."""
        if self._session is not None:
            self._session.put_nowait(message)
        else:
            self._pending.append(message)

    def assign(self, run_id: str, argv: list[str], snapshot: bytes, sha256: str, *, attempt: int = 1,
               env: pb.EnvironmentSpec | None = None, env_hash: str = "") -> None:
        self.snapshots[run_id] = snapshot
        self.send(pb.HeadMessage(assign=pb.Assignment(
            run_id=run_id, attempt=attempt, workspace="default", experiment="test", snapshot_sha256=sha256,
            spec=pb.RunSpec(argv=argv, env=env, env_hash=env_hash))))

    def hello(self) -> pb.Hello | None:
        """The last Hello the agent sent."""
        found = [m.hello for m in self.messages if m.WhichOneof("body") == "hello"]
        return found[-1] if found else None

    def env_hashes(self) -> list[str] | None:
        """The environments the agent last said it has (Hello, then heartbeats that carry them); None before."""
        said = None
        for m in self.messages:
            if m.WhichOneof("body") == "hello":
                said = list(m.hello.capacity.env_hashes)
            elif m.WhichOneof("body") == "heartbeat" and m.heartbeat.env_hashes:
                said = list(m.heartbeat.env_hashes)
        return said

    def log_lines(self, run_id: str, stream: int) -> list[str]:
        """The lines of one stream of a run, in order of sequence number (records joined where continued)."""
        records = sorted({r.seq: r for m in self.messages if m.WhichOneof("body") == "logs" and m.logs.run_id == run_id
                          for r in m.logs.records if r.stream == stream}.values(), key=lambda r: r.seq)
        lines, pending = [], b""
        for record in records:
            pending += record.data
            if not record.continued:
                lines.append(pending.decode("utf-8", "replace"))
                pending = b""
        return lines

    def updates(self, phase: int | None = None) -> list[pb.RunUpdate]:
        return [m.run_update for m in self.messages
                if m.WhichOneof("body") == "run_update" and (phase is None or m.run_update.phase == phase)]

    def exited(self, run_id: str) -> pb.RunUpdate | None:
        return next((u for u in self.updates(pb.RunUpdate.EXITED) if u.run_id == run_id), None)

    async def Join(self, request: pb.JoinRequest, context: grpc.aio.ServicerContext) -> pb.JoinResponse:
        self.joins += 1
        if self.join_abort is not None:
            await context.abort(*self.join_abort)
        certificate = pki.sign_node(self._ca, pki.load_csr(request.csr), request.name)
        return pb.JoinResponse(node_id=f"id-{request.name}", certificate=certificate, ca_certificate=self._ca.cert_pem)

    async def Connect(self, request_iterator: AsyncIterator[pb.AgentMessage], context: grpc.aio.ServicerContext) -> None:
        self.connects += 1
        if self.connect_aborts:
            await anext(aiter(request_iterator), None)  # like the real head: refuse after reading hello
            await context.abort(*self.connect_aborts.pop(0))
        queue: asyncio.Queue[pb.HeadMessage] = asyncio.Queue()
        for message in self._pending:
            queue.put_nowait(message)
        self._pending.clear()
        self._session = queue

        async def write() -> None:
            while True:
                await context.write(await queue.get())

        writer = asyncio.create_task(write())
        try:
            async for message in request_iterator:
                self.messages.append(message)
                if not self.silent and (self.acking or message.HasField("hello")):
                    queue.put_nowait(pb.HeadMessage(ack=pb.Ack(msg_seq=message.msg_seq)))
        finally:
            writer.cancel()
            if self._session is queue:
                self._session = None

    async def FetchSnapshot(self, request: pb.FetchSnapshotRequest,
                            context: grpc.aio.ServicerContext) -> AsyncIterator[pb.DataChunk]:
        self.fetches.append((request.run_id, request.attempt))
        await self.fetch_gate.wait()
        data = self.snapshots[request.run_id]
        for start in range(0, len(data), CHUNK_BYTES):
            yield pb.DataChunk(data=data[start : start + CHUNK_BYTES], size=len(data))

    async def UploadOutputs(self, request_iterator: AsyncIterator[pb.OutputsChunk],
                            context: grpc.aio.ServicerContext) -> pb.OutputsResponse:
        first = await anext(aiter(request_iterator))
        self.uploading.append((first.run_id, first.attempt))
        async for _ in request_iterator:
            pass
        await self.upload_gate.wait()
        self.uploads.append((first.run_id, first.attempt, first.sha256))
        return pb.OutputsResponse(sha256=first.sha256)
