"""`runyard env`: registered environments. Create one from Azure's environment YAML, list them, show one (its spec,
its hash, the nodes that have it built), and ask nodes to build one now so that runs find it ready.

`cli.py` adds the group. Versions are immutable: creating NAME:VERSION again with the same spec is a no-op, with
another spec a refusal.
"""

from __future__ import annotations

from pathlib import Path

import click

from protos import runyard_pb2 as pb
from runyard import render
from runyard.client import Client
from runyard.config import load_client_config
from runyard.envfile import load_environment_file
from runyard.envwire import env_to_pb
from runyard.units import plural

OUTPUT = click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)


def connect() -> Client:
    return Client(load_client_config())


def describe(spec: pb.EnvironmentSpec) -> str:
    """A spec in one line: `python 3.11, 3 pip, 2 conda, image X`."""
    parts = []
    if spec.python:
        parts.append(f"python {spec.python}")
    if spec.pip:
        parts.append(f"{len(spec.pip)} pip")
    if spec.conda:
        parts.append(f"{len(spec.conda)} conda")
    if spec.image:
        parts.append(f"image {spec.image}")
    return ", ".join(parts) or "channels or index options only"


@click.group()
def env() -> None:
    """Registered environments: the software runs ask for by name (`--env NAME[:VERSION]`)."""


@env.command()
@click.option("-f", "--file", "path", required=True, type=click.Path(path_type=Path),
              help="environment YAML (Azure ML's: name, version, description, tags, conda_file, image)")
@OUTPUT
def create(path: Path, output: str) -> None:
    """Register an environment version from an environment file."""
    found = load_environment_file(path)
    with connect() as client:
        made = client.create_environment(pb.Environment(
            name=found.name, version=found.version, description=found.description, tags=found.tags,
            spec=env_to_pb(found.spec)))
    if output == "json":
        render.print_json(render.as_dict(made))
        return
    render.console.print(f"environment {made.name}:{made.version} ({describe(made.spec)}; hash {made.hash[:12]})",
                         markup=False)


@env.command(name="list")
@OUTPUT
def list_(output: str) -> None:
    """List the workspace's environments, every version."""
    with connect() as client:
        found = client.list_environments()
    if output == "json":
        render.print_json([render.as_dict(e) for e in found])
        return
    if not found:
        render.err_console.print("no environments yet; register one with `runyard env create -f environment.yml`")
        return
    render.print_table(
        ("NAME", "VERSION", "SPEC", "HASH", "CREATED", "BY", "DESCRIPTION"),
        # A list too long for one reply leaves the specs of its last environments out: `env show` has them.
        ((e.name, e.version, describe(e.spec) if e.HasField("spec") else "see runyard env show", e.hash[:12],
          render.when(e.created_at), e.created_by, e.description) for e in found),
    )


@env.command()
@click.argument("ref", metavar="NAME[:VERSION]")
@OUTPUT
def show(ref: str, output: str) -> None:
    """Show one environment: its spec, its hash and the nodes that have it built (the latest version unless
    VERSION is given)."""
    with connect() as client:
        found = client.get_environment(ref)
    if output == "json":
        render.print_json(render.as_dict(found))
        return
    spec = found.spec
    fields: list[tuple[str, str]] = [
        ("environment", f"{found.name}:{found.version}"), ("description", found.description or "-"),
        ("hash", found.hash), ("created", render.when(found.created_at)), ("by", found.created_by or "-"),
        ("built on", ", ".join(found.built_on) or "no node yet"),
        ("python", spec.python or "the node's"), ("image", spec.image or "-"),
    ]
    fields += [(f"tag {k}", v) for k, v in sorted(found.tags.items())]
    fields += [("pip", line) for line in spec.pip]
    fields += [("index url", spec.index_url)] if spec.index_url else []
    fields += [("extra index url", url) for url in spec.extra_index_urls]
    fields += [("find links", url) for url in spec.find_links]
    fields += [("conda", package) for package in spec.conda]
    fields += [("channel", channel) for channel in spec.channels]
    render.print_table(("FIELD", "VALUE"), fields)


@env.command()
@click.argument("ref", metavar="NAME[:VERSION]")
@click.option("--nodes", default="", metavar="A,B", help="only these nodes (default: every Ready node that can build it)")
def build(ref: str, nodes: str) -> None:
    """Ask nodes to build an environment now, so that runs asking for it start without waiting for the build."""
    wanted = [n.strip() for n in nodes.split(",") if n.strip()]
    with connect() as client:
        asked = client.build_environment(ref, wanted)
    render.console.print(f"build of {ref} asked of {plural(len(asked), 'node')}: {', '.join(asked)}", markup=False)
