"""A node the test speaks for, against a real head over real gRPC (mTLS on the node port): it enrolls with a join
token, says Hello with the capacity the test gives it (platform, interpreters, builders, built environments: what
an agent of this branch does not report yet), heartbeats every second, and records what the head sends it.

It runs nothing: an assignment is recorded, and the test ends the attempt with `exited()`.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Iterator, Sequence

import grpc
from cryptography.hazmat.primitives import serialization

from protos import runyard_pb2 as pb
from runyard import pki
from testbed.harness import Cluster, wait_until

HEARTBEAT_S = 1.0


class ScriptedNode:
    def __init__(self, cluster: Cluster, name: str, *, compute: str, cpus: float = 4.0, platform: str = "",
                 interpreters: Sequence[str] = (), builders: Sequence[str] = (), env_hashes: Sequence[str] = ()) -> None:
        self.name = name
        self.received: list[pb.HeadMessage] = []
        self._seq = itertools.count(1)
        self._outgoing: queue.Queue[pb.AgentMessage | None] = queue.Queue()
        self._capacity = pb.Capacity(cpus=cpus, memory_bytes=8 * 1024**3, disk_bytes=10**11, platform=platform,
                                     interpreters=interpreters, builders=builders, env_hashes=env_hashes)
        head = cluster.head
        key = pki.new_key()
        with grpc.secure_channel(head.address, grpc.ssl_channel_credentials(head.ca_pem)) as channel:
            joined = channel.unary_unary(
                "/runyard.v1.NodeAgent/Join", request_serializer=pb.JoinRequest.SerializeToString,
                response_deserializer=pb.JoinResponse.FromString,
            )(pb.JoinRequest(name=name, cluster=compute, capacity=self._capacity, csr=pki.node_csr(name, key)),
              metadata=(("authorization", f"Bearer {head.join_token()}"),), timeout=10)
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        credentials = grpc.ssl_channel_credentials(head.ca_pem, private_key=key_pem,
                                                   certificate_chain=joined.certificate)
        self._channel = grpc.secure_channel(head.node_address, credentials)
        connect = self._channel.stream_stream(
            "/runyard.v1.NodeAgent/Connect", request_serializer=pb.AgentMessage.SerializeToString,
            response_deserializer=pb.HeadMessage.FromString)
        self._replies = connect(self._messages())
        self._reader = threading.Thread(target=self._read, name=f"scripted-{name}", daemon=True)
        self._reader.start()
        wait_until(f"{name} to be Ready", lambda: any(
            n.name == name and n.state == pb.NODE_STATE_READY for n in cluster.client().nodes().nodes))

    def _messages(self) -> Iterator[pb.AgentMessage]:
        yield pb.AgentMessage(msg_seq=0, hello=pb.Hello(capacity=self._capacity))
        while True:
            try:
                message = self._outgoing.get(timeout=HEARTBEAT_S)
            except queue.Empty:
                message = pb.AgentMessage(heartbeat=pb.Heartbeat())
            if message is None:
                return
            message.msg_seq = next(self._seq)
            yield message

    def _read(self) -> None:
        try:
            for reply in self._replies:
                if not reply.HasField("ack"):
                    self.received.append(reply)
        except grpc.RpcError:
            pass    # the stream ends when the node is closed

    def assignments(self) -> list[pb.Assignment]:
        return [m.assign for m in self.received if m.HasField("assign")]

    def builds(self) -> list[pb.BuildEnvironment]:
        return [m.build_env for m in self.received if m.HasField("build_env")]

    def wait_assignment(self, run_id: str) -> pb.Assignment:
        return wait_until(f"{self.name} to be assigned {run_id}",
                          lambda: next((a for a in self.assignments() if a.run_id == run_id), None))

    def built(self, env_hashes: Sequence[str]) -> None:
        """Say, in a heartbeat, that these are the environments built here now."""
        self._outgoing.put(pb.AgentMessage(heartbeat=pb.Heartbeat(env_hashes=env_hashes)))

    def exited(self, assignment: pb.Assignment, exit_code: int = 0) -> None:
        self._outgoing.put(pb.AgentMessage(run_update=pb.RunUpdate(
            run_id=assignment.run_id, attempt=assignment.attempt, phase=pb.RunUpdate.EXITED, exit_code=exit_code)))

    def close(self) -> None:
        self._outgoing.put(None)
        self._replies.cancel()
        self._reader.join(timeout=10)
        self._channel.close()
