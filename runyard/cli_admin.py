"""`runyard login`, and the admin commands: workspaces, users' tokens, node enrollment, the audit trail.

`cli.py` adds these to its groups. A secret (a user's token, a join token) is printed once, on the last line of
stdout, so that scripts can take it with `tail -n 1`; everything else goes to stderr.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import click

from protos import runyard_pb2 as pb
from runyard import render, vocabulary
from runyard.client import Client
from runyard.config import ClientConfig, config_path, fingerprint, is_loopback, load_client_config, write_client_config
from runyard.errors import ConfigError, UsageError
from runyard.units import parse_duration, plural

OUTPUT = click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
_ROLES = {"viewer": pb.ROLE_VIEWER, "user": pb.ROLE_USER, "admin": pb.ROLE_ADMIN}


def connect() -> Client:
    return Client(load_client_config())


def _seconds(text: str | None, what: str) -> float:
    if not text:
        return 0.0
    try:
        return parse_duration(text)
    except ValueError as err:
        raise UsageError(f"{what}: {err}") from None


def _since(text: str | None) -> float:
    """--since as a duration back from now ('1h') or a date ('2026-11-30', '2026-11-30T10:00')."""
    if not text:
        return 0.0
    try:
        return time.time() - parse_duration(text)
    except ValueError:
        pass
    from datetime import datetime

    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise UsageError(f"--since {text!r}: say a duration back from now (1h, 7d) or a date (2026-11-30)") from None


def _secret(text: str) -> None:
    click.echo(text)


# --- login ---------------------------------------------------------------------------------------------------


@click.command()
@click.argument("address")
@click.option("--ca", "ca_file", type=click.Path(path_type=Path, dir_okay=False),
              help="the cluster CA certificate (PEM), from your admin")
@click.option("--fingerprint", "expected", help="the cluster CA's fingerprint (sha256:...), from your admin")
@click.option("--token", help="your token (default: $RUNYARD_TOKEN, else asked for)")
@click.option("-y", "--yes", is_flag=True, help="trust the CA the head presents without asking")
@click.option("--insecure", is_flag=True, help="plaintext, for a development head on loopback only")
def login(address: str, ca_file: Path | None, expected: str | None, token: str | None, yes: bool, insecure: bool) -> None:
    """Trust the head at ADDRESS (host:port) and store its CA and your token in the client config (0600)."""
    token = token or os.environ.get("RUNYARD_TOKEN") or click.prompt("token", hide_input=True, err=True)
    if insecure:
        if not is_loopback(address):
            raise UsageError("--insecure is for a head on loopback only")
        ca_pem = b""
    elif ca_file is not None:
        try:
            ca_pem = ca_file.read_bytes()
            found = fingerprint(ca_pem)
        except (OSError, ConfigError) as err:
            raise UsageError(f"--ca {ca_file}: {getattr(err, 'strerror', None) or err}") from None
        if expected and found != expected.lower():
            raise UsageError(f"--ca {ca_file} has fingerprint {found}, not {expected}")
    else:
        from runyard.config import fetch_ca

        ca_pem = fetch_ca(address)
        found = fingerprint(ca_pem)
        if expected:
            if found != expected.lower():
                raise UsageError(f"the head at {address} presents CA {found}, not {expected}: refusing to trust it")
        elif not yes:
            click.echo(f"The head at {address} presents the cluster CA\n  {found}\n"
                       "Compare it with the fingerprint your admin gave you (`runyard-head` logs it at start).", err=True)
            if not sys.stdin.isatty():
                raise UsageError("cannot ask for confirmation here: pass --fingerprint, --ca FILE or --yes")
            if not click.confirm("Trust it?", err=True):
                raise UsageError("not trusted; nothing written")
    config = ClientConfig(address, token, ca_pem, insecure=insecure)
    with Client(config) as client:
        me = client.whoami()
    path = write_client_config(config, config_path())
    click.echo(f"logged in to {address} as {me.user or '?'} ({vocabulary.word('Role', me.role)} of workspace "
               f"{me.workspace}); config in {path}", err=True)


# --- workspaces ----------------------------------------------------------------------------------------------


@click.group()
def workspace() -> None:
    """Admin: workspaces (each user's token belongs to one; runs and snapshots never cross them)."""


@workspace.command("create")
@click.argument("name")
def workspace_create(name: str) -> None:
    """Create workspace NAME."""
    with connect() as client:
        created = client.create_workspace(name)
    click.echo(f"workspace {created.name} created; give it users with `runyard token create --workspace {created.name}`",
               err=True)


@workspace.command("list")
@OUTPUT
def workspace_list(output: str) -> None:
    """List workspaces with their live tokens and runs."""
    with connect() as client:
        found = client.list_workspaces()
    if output == "json":
        render.print_json([render.as_dict(w) for w in found])
        return
    render.print_table(("WORKSPACE", "TOKENS", "RUNS", "CREATED"),
                       ((w.name, w.tokens, w.runs, render.when(w.created_at)) for w in found))


# --- users' tokens -------------------------------------------------------------------------------------------


@click.group()
def token() -> None:
    """Admin: users' tokens (create, list, revoke)."""


@token.command("create")
@click.option("--workspace", "-w", default="", help="its workspace (default: yours)")
@click.option("--role", type=click.Choice(sorted(_ROLES)), default="user", show_default=True)
@click.option("--name", default="", help="the user it stands for; runs record it as their submitter")
@click.option("--ttl", help="expires after this long (e.g. 12h, 90d); default never")
def token_create(workspace: str, role: str, name: str, ttl: str | None) -> None:
    """Create a token; its secret is printed once, on the last line."""
    request = pb.CreateTokenRequest(workspace=workspace, role=_ROLES[role], name=name, ttl_s=_seconds(ttl, "--ttl"))
    with connect() as client:
        reply = client.create_token(request)
    t = reply.token
    expires = render.when(t.expires_at) if t.expires_at else "never"
    click.echo(f"token {t.id} for {t.name}, {role} of workspace {t.workspace}, expires {expires}. "
               "Its secret (shown once):", err=True)
    _secret(reply.secret)


@token.command("list")
@click.option("--workspace", "-w", default="", help="only this workspace")
@OUTPUT
def token_list(workspace: str, output: str) -> None:
    """List tokens (never their secrets)."""
    with connect() as client:
        found = client.list_tokens(workspace)
    if output == "json":
        render.print_json([render.as_dict(t) for t in found])
        return
    render.print_table(
        ("ID", "NAME", "WORKSPACE", "ROLE", "CREATED", "EXPIRES", "REVOKED"),
        ((t.id, t.name, t.workspace, vocabulary.word("Role", t.role), render.when(t.created_at),
          render.when(t.expires_at) if t.expires_at else "never",
          render.when(t.revoked_at) if t.revoked_at else "-") for t in found))


@token.command("revoke")
@click.argument("token_ids", nargs=-1, required=True)
def token_revoke(token_ids: tuple[str, ...]) -> None:
    """Revoke tokens by id (`runyard token list` shows them); they are refused from now on."""
    with connect() as client:
        for token_id in token_ids:
            revoked = client.revoke_token(token_id)
            click.echo(f"token {revoked.id} ({revoked.name}) revoked", err=True)


# --- node enrollment -----------------------------------------------------------------------------------------


@click.group("token")
def node_token() -> None:
    """Admin: join tokens, with which new nodes enroll."""


@node_token.command("create")
@click.option("--uses", default=1, show_default=True, type=click.IntRange(1, 10_000), help="nodes that may enroll with it")
@click.option("--ttl", default="1h", show_default=True, help="valid for this long")
def node_token_create(uses: int, ttl: str) -> None:
    """Create a join token; its secret is printed once, on the last line."""
    with connect() as client:
        reply = client.create_join_token(uses, _seconds(ttl, "--ttl"))
    click.echo(f"join token {reply.id}: {plural(uses, 'enrollment')} until {render.when(reply.expires_at)}. In agent.toml:\n"
               f'  head_ca_fingerprint = "{reply.ca_fingerprint}"\n  join_token_file = "/etc/runyard/join.token"\n'
               "The secret (shown once), for the join token file:", err=True)
    _secret(reply.secret)


@click.command("remove")
@click.argument("name")
def node_remove(name: str) -> None:
    """Revoke NAME's certificate and free its name; its runs are handled as on a node that left."""
    with connect() as client:
        found = client.remove_node(name)
    click.echo(f"node {found.name} removed: its certificate is revoked", err=True)


@click.command("approve")
@click.argument("name")
def node_approve(name: str) -> None:
    """Let an enrolled node NAME take part (with require_node_approval = true)."""
    with connect() as client:
        found = client.approve_node(name)
    click.echo(f"node {found.name} approved", err=True)


# --- audit ---------------------------------------------------------------------------------------------------


@click.command()
@click.option("--since", help="a duration back from now (1h, 7d) or a date")
@click.option("--user", default="", help="only this user's calls")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 1000))
@OUTPUT
def audit(since: str | None, user: str, limit: int, output: str) -> None:
    """Admin: the audit trail of mutating calls, oldest first."""
    with connect() as client:
        found = client.audit(since=_since(since), user=user, limit=limit)
    if output == "json":
        render.print_json([render.as_dict(e) for e in found])
        return
    render.print_table(("WHEN", "USER", "WORKSPACE", "CALL", "TARGET", "FROM", "RESULT"),
                       ((render.when(e.at), e.user, e.workspace, e.method, e.target, e.peer, e.code) for e in found))
