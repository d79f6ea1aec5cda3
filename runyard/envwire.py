"""An environment's spec on the wire: `EnvSpec` to `pb.EnvironmentSpec` and back, one way for the CLI, the head
(`scheduler/convert.py`) and the agent.

Kept apart from `envspec` so that the head's pure cores, which import `envspec` through the run spec, import no
protobuf. Must not: decide or check anything (`envspec.check` does).
"""

from __future__ import annotations

from protos import runyard_pb2 as pb
from runyard.envspec import EnvSpec


def env_to_pb(spec: EnvSpec) -> pb.EnvironmentSpec:
    return pb.EnvironmentSpec(
        python=spec.python, pip=spec.pip, index_url=spec.index_url, extra_index_urls=spec.extra_index_urls,
        find_links=spec.find_links, conda=spec.conda, channels=spec.channels, image=spec.image)


def env_from_pb(msg: pb.EnvironmentSpec) -> EnvSpec:
    """The spec as sent; whoever trusts it less checks it (`envspec.check`)."""
    return EnvSpec(
        python=msg.python, pip=tuple(msg.pip), index_url=msg.index_url, extra_index_urls=tuple(msg.extra_index_urls),
        find_links=tuple(msg.find_links), conda=tuple(msg.conda), channels=tuple(msg.channels), image=msg.image)
