"""A run's software environment: the normalized spec, and its identity on a platform.

`EnvSpec` is what a conda file (its `python=3.x`, its `pip:` section, other conda packages) or a container image
asks for, normalized so that two specs that ask for the same software are equal: requirement lines stripped,
comments and blank lines dropped, sorted and de-duplicated, `-r` files' contents inlined, index options kept apart.
`identity(spec, platform)` is the sha256 the head stores with each run and the agent builds `envs/<identity>`
under: the same software on the same platform is built once per node and shared by every run that asks for it.
Must not: import anything beyond the standard library and `protos` (the CLI, the head and the agent share it).
"""

from __future__ import annotations

import hashlib
import json
import platform as _platform
from dataclasses import asdict, dataclass

IDENTITY_VERSION = 1        # bump when what goes into the identity changes: every environment is built anew


@dataclass(frozen=True, slots=True)
class EnvSpec:
    python: str = ""                            # "3.11"; empty: whatever python the node has
    pip: tuple[str, ...] = ()                   # requirement lines, normalized
    index_url: str = ""
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()
    conda: tuple[str, ...] = ()                 # conda packages other than python and pip
    channels: tuple[str, ...] = ()
    image: str = ""

    @property
    def empty(self) -> bool:
        return self == EnvSpec()


def node_platform() -> str:
    """This machine's platform as environments are keyed by it, e.g. `linux-x86_64`."""
    return f"{_platform.system().lower()}-{_platform.machine().lower()}"


def identity(spec: EnvSpec, platform: str) -> str:
    """The sha256 (hex) of the spec's canonical form and the platform."""
    canonical = json.dumps({"v": IDENTITY_VERSION, "platform": platform, **asdict(spec)}, sort_keys=True,
                           separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
