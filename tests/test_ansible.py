"""The Ansible deployment in ansible/: checked with the real tools, and piece by piece without them.

The real tools (ansible-core and ansible-lint are pinned dev dependencies, never skipped): `ansible-playbook
--syntax-check` of site.yml, ansible-lint with the production profile (.ansible-lint), the roles' Ansible version
check failing with its message, and `ansible-playbook --check --diff` of a first deploy on localhost with every path
of the roles under a temporary root, which must run through and write nothing. The roles install the project's own
version (runyard_version is pyproject's).
Static checks (always run): every YAML file parses, every `template:` task names a file in its role's templates/,
every handler a task notifies exists in the play, the keys the TOML templates write are fields of the daemons'
config dataclasses and are kept out of the free-form config dicts (as is the development-only plaintext switch),
and the units start the venv's console scripts with --config.
Rendering (needs jinja2, skipped without it): the templates render with the role defaults and a fake inventory,
the rendered head.toml / agent.toml load with the daemons' own config loader (unknown keys and wrong types are
errors there), the head serves TLS under the names the agents dial, the agent runs as root and every job as a uid of
its own (never as root, never as an account of the host), and the rendered units carry the start, stop, privilege
and hardening settings. Enrollment: the agent role's tasks, rendered for a node, create a join token on a real
head with its own CLI, and the rendered agent.toml with that token and the copied CA enrolls a real agent.
"""

from __future__ import annotations

import dataclasses
import grp
import importlib.metadata
import json
import os
import pwd
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tomllib
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.config import AgentConfig, load_agent_config
from runyard.client import Client
from runyard.config import ClientConfig
from runyard.configfile import load_config
from runyard.errors import UsageError
from runyard.render import as_dict
from scheduler.app import head_names
from scheduler.autoscale import policies_from_config
from scheduler.config import HeadConfig, load_head_config
from scheduler.providers import _RESERVED as LOCAL_AGENT_RESERVED  # what the head's local provider sets itself
from testbed.harness import terminate, wait_until

ANSIBLE = Path(__file__).resolve().parent.parent / "ansible"
ROLES = ANSIBLE / "roles"
HEAD_FIELDS = {f.name for f in dataclasses.fields(HeadConfig)}
AGENT_FIELDS = {f.name for f in dataclasses.fields(AgentConfig)}
TEMPLATE_MODULES = ("template", "ansible.builtin.template", "ansible.legacy.template")
NO_ENV = "RUNYARD_TEST_ANSIBLE_NOT_SET_"  # env prefix nobody sets: the loader reads only the file


def yaml_files() -> list[Path]:
    return sorted(p for p in ANSIBLE.rglob("*") if p.suffix in (".yml", ".yaml") and p.is_file())


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def role_dirs() -> list[Path]:
    return sorted(p for p in ROLES.iterdir() if p.is_dir())


def walk_tasks(tasks: Any) -> list[dict]:
    """Every task in a task list, including those inside block/rescue/always."""
    found: list[dict] = []
    for task in tasks or []:
        found.append(task)
        for key in ("block", "rescue", "always"):
            found.extend(walk_tasks(task.get(key)))
    return found


def role_tasks(role: Path) -> list[dict]:
    tasks: list[dict] = []
    for sub in ("tasks", "handlers"):
        for path in sorted((role / sub).glob("*.yml")):
            tasks.extend(walk_tasks(load_yaml(path)))
    return tasks


def role_with_dependencies(name: str) -> list[str]:
    meta = ROLES / name / "meta" / "main.yml"
    deps = ((load_yaml(meta) or {}).get("dependencies") or []) if meta.exists() else []
    names: list[str] = []
    for dep in deps:
        dep_name = dep if isinstance(dep, str) else dep.get("role") or dep.get("name")
        names.extend(role_with_dependencies(dep_name))
    return names + [name]


def as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


# --- static checks -------------------------------------------------------------------------------------------


def test_the_deployment_is_there() -> None:
    assert (ANSIBLE / "site.yml").is_file()
    assert (ANSIBLE / "inventory.example.ini").is_file()
    assert {p.name for p in role_dirs()} >= {"runyard_common", "runyard_head", "runyard_agent"}
    assert len(yaml_files()) >= 10


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(ANSIBLE)))
def test_yaml_parses(path: Path) -> None:
    data = load_yaml(path)
    assert data is not None, f"{path} is empty"
    if path.parent.name in ("tasks", "handlers") or path.name == "site.yml":
        assert isinstance(data, list) and all(isinstance(t, dict) for t in data)
    if path.parent.name in ("defaults", "meta"):
        assert isinstance(data, dict)


def test_site_plays_cover_head_and_agents() -> None:
    plays = load_yaml(ANSIBLE / "site.yml")
    by_hosts = {play["hosts"]: play for play in plays}
    assert set(by_hosts) == {"runyard_head", "runyard_agents"}
    assert [p["hosts"] for p in plays] == ["runyard_head", "runyard_agents"], "the head must come first: the agents enroll with it"
    for play in plays:
        assert play.get("become") is True
        for role in play["roles"]:
            name = role if isinstance(role, str) else role["role"]
            assert (ROLES / name / "tasks" / "main.yml").is_file(), name
    assert "runyard_common" in role_with_dependencies("runyard_head")
    assert "runyard_common" in role_with_dependencies("runyard_agent")


def test_inventory_example_has_both_groups() -> None:
    text = (ANSIBLE / "inventory.example.ini").read_text()
    sections = re.findall(r"^\[([^\]]+)\]", text, flags=re.M)
    assert "runyard_head" in sections and "runyard_agents" in sections
    head_hosts = text.split("[runyard_head]", 1)[1].split("[", 1)[0]
    assert len([line for line in head_hosts.splitlines() if line.strip() and not line.startswith("#")]) == 1


@pytest.mark.parametrize("role", role_dirs(), ids=lambda p: p.name)
def test_template_sources_exist(role: Path) -> None:
    used = set()
    for task in role_tasks(role):
        for module in TEMPLATE_MODULES:
            if module in task:
                args = task[module]
                src = args["src"] if isinstance(args, dict) else re.search(r"src=(\S+)", args).group(1)
                assert (role / "templates" / src).is_file(), f"{role.name}: template {src} is not in templates/"
                used.add(src)
    shipped = {p.name for p in (role / "templates").glob("*.j2")} if (role / "templates").exists() else set()
    assert shipped == used, f"{role.name}: templates without a task: {sorted(shipped - used)}"


def test_every_notified_handler_exists_in_its_play() -> None:
    for play in load_yaml(ANSIBLE / "site.yml"):
        roles = [n for r in play["roles"] for n in role_with_dependencies(r if isinstance(r, str) else r["role"])]
        topics: set[str] = set()
        for name in roles:
            for path in (ROLES / name / "handlers").glob("*.yml"):
                for handler in load_yaml(path):
                    topics.add(handler["name"])
                    topics.update(as_list(handler.get("listen", [])))
        for name in roles:
            for task in walk_tasks(load_yaml(ROLES / name / "tasks" / "main.yml")):
                for topic in as_list(task.get("notify", [])):
                    assert topic in topics, f"{name}: notifies {topic!r}, which no handler of play {play['hosts']} has"


@pytest.mark.parametrize("role", role_dirs(), ids=lambda p: p.name)
def test_defaults_are_documented(role: Path) -> None:
    """Each variable in defaults/main.yml sits in a paragraph that has a comment (or has one on its line)."""
    text = (role / "defaults" / "main.yml").read_text()
    defaults = load_yaml(role / "defaults" / "main.yml")
    assert defaults, f"{role.name} has no defaults"
    for paragraph in re.split(r"\n\s*\n", text):
        lines = paragraph.splitlines()
        for line in lines:
            match = re.match(r"^(\w+):", line)
            if match:
                assert match.group(1).startswith("runyard_"), f"{role.name}: {match.group(1)} lacks the runyard_ prefix"
                assert "#" in line or any(l.lstrip().startswith("#") for l in lines), \
                    f"{role.name}: {match.group(1)} is not documented"


def toml_keys(template: Path) -> list[str]:
    """The keys a TOML template writes literally (`key = ...` at the start of a line)."""
    return re.findall(r"^(\w+) = ", template.read_text(), flags=re.M)


def reserved_keys(role: str) -> set[str]:
    """The keys the role's assert keeps out of runyard_<role>_config (its `<role>_reserved_keys` list)."""
    for task in load_yaml(ROLES / role / "tasks" / "main.yml"):
        if "ansible.builtin.assert" in task:
            listed = (task.get("vars") or {}).get(f"{role}_reserved_keys")
            if listed:
                condition = f"intersect({role}_reserved_keys) | length == 0"
                assert any(condition in cond for cond in as_list(task["ansible.builtin.assert"]["that"])), \
                    f"{role}: the assert does not check {role}_reserved_keys"
                return set(listed)
    raise AssertionError(f"{role}: no assert lists the reserved config keys")


@pytest.mark.parametrize(("role", "template", "fields"), [
    ("runyard_head", "head.toml.j2", HEAD_FIELDS),
    ("runyard_agent", "agent.toml.j2", AGENT_FIELDS),
])
def test_toml_templates_write_only_config_fields(role: str, template: str, fields: set[str]) -> None:
    keys = toml_keys(ROLES / role / "templates" / template)
    assert keys, f"{template} writes no keys"
    assert len(keys) == len(set(keys)), f"{template} writes a key twice"
    assert set(keys) <= fields, f"{template}: not config fields: {sorted(set(keys) - fields)}"
    # what the template writes itself must be kept out of the free-form dict, or TOML would see it twice
    assert set(keys) <= reserved_keys(role), f"{role}: keys the assert allows twice: {sorted(set(keys) - reserved_keys(role))}"
    assert reserved_keys(role) <= fields, f"{role}: reserves keys the daemon no longer has: {sorted(reserved_keys(role) - fields)}"


@pytest.mark.parametrize("role", ["runyard_head", "runyard_agent"])
def test_roles_never_deploy_plaintext(role: str) -> None:
    """insecure_plaintext is for a development head on loopback: no template writes it and no config dict may."""
    for template in (ROLES / role / "templates").glob("*.j2"):
        assert "insecure_plaintext" not in template.read_text(), template.name
    assert "insecure_plaintext" in reserved_keys(role)


def test_agent_role_reserves_what_the_local_provider_sets() -> None:
    """The head's address, node port, CA, join token, name, cluster and data dir are the deployment's to set, in
    the role as in the head's local provider: runyard_agent_config must not override any of them."""
    assert set(LOCAL_AGENT_RESERVED) <= AGENT_FIELDS
    missing = set(LOCAL_AGENT_RESERVED) - reserved_keys("runyard_agent")
    assert not missing, f"runyard_agent_reserved_keys lacks {sorted(missing)}"


def role_task(role: str, name: str) -> dict:
    found = [t for t in walk_tasks(load_yaml(ROLES / role / "tasks" / "main.yml")) if t.get("name") == name]
    assert len(found) == 1, f"{role}: {len(found)} tasks named {name!r}"
    return found[0]


def test_head_data_dir_is_closed() -> None:
    """The head's data dir holds the admin token and the CA's key: nobody else on the host may list or enter it, an
    agent's jobs included where one runs on the head host. The real head keeps it so too (checked below)."""
    args = role_task("runyard_head", "Create the data directory")["ansible.builtin.file"]
    assert (args["owner"], args["mode"]) == ("{{ runyard_user }}", "0700")


def test_agent_secrets_stay_out_of_the_log() -> None:
    """The join token is made on the head and written to the node without Ansible printing it, root's and 0600 like
    agent.toml: no job can read them. The CA is public but must be root's, so that no job can swap the trust
    anchor."""
    create = role_task("runyard_agent", "Create a join token on the head")
    assert create["delegate_to"] == "{{ runyard_head_host }}"
    assert create["no_log"] is True and "run_once" not in create  # one token of one use per node
    assert "RUNYARD_TOKEN" not in create["environment"], "the environment Ansible passes shows in ps"
    write = role_task("runyard_agent", "Write the join token")
    assert write["no_log"] is True
    assert (write["ansible.builtin.copy"]["owner"], write["ansible.builtin.copy"]["mode"]) == ("root", "0600")
    config = role_task("runyard_agent", "Write agent.toml")["ansible.builtin.template"]
    assert (config["owner"], config["group"], config["mode"]) == ("root", "root", "0600")
    ca = role_task("runyard_agent", "Write the cluster CA")["ansible.builtin.copy"]
    assert (ca["owner"], ca["mode"], ca["dest"]) == ("root", "0644", "{{ runyard_agent_head_ca_file }}")


@pytest.mark.parametrize(("unit", "script", "config"), [
    ("runyard_head/templates/runyard-head.service.j2", "runyard-head", "head.toml"),
    ("runyard_agent/templates/runyard-agent.service.j2", "runyard-agent", "agent.toml"),
])
def test_units_start_the_venv_console_script(unit: str, script: str, config: str) -> None:
    text = (ROLES / unit).read_text()
    starts = re.findall(r"^ExecStart=(.*)$", text, flags=re.M)
    assert starts == [f"{{{{ runyard_venv }}}}/bin/{script} --config {{{{ runyard_config_dir }}}}/{config}"]
    common = load_yaml(ROLES / "runyard_common" / "defaults" / "main.yml")
    assert common["runyard_venv"] == "/opt/runyard/venv"
    assert common["runyard_config_dir"] == "/etc/runyard"


def test_config_loader_rejects_unknown_keys(tmp_path: Path) -> None:
    """The check the rendered files go through below does fail on a key the daemons do not know."""
    path = tmp_path / "head.toml"
    path.write_text('data_dir = "/x"\nlisten_addr = "0.0.0.0:7433"\n')
    with pytest.raises(UsageError, match="unknown key 'listen_addr'"):
        load_config(HeadConfig, path, env_prefix=NO_ENV)


# --- rendering -----------------------------------------------------------------------------------------------

INVENTORY = {
    "head1": {"ansible_host": "10.0.0.10"},
    "gpu1": {"ansible_host": "10.0.0.21"},
    "cpu1": {},  # no ansible_host: its inventory name is its address
}
GROUPS = {"all": ["head1", "gpu1", "cpu1"], "runyard_head": ["head1"], "runyard_agents": ["gpu1", "cpu1", "head1"]}
# What `getent passwd` / `getent group` give a host (as ansible.builtin.getent's facts: the fields after the name).
ACCOUNTS = {"root": ["x", "0", "0", "root", "/root", "/bin/bash"],
            "runyard": ["x", "998", "998", "", "/var/lib/runyard", "/usr/sbin/nologin"],
            "alice": ["x", "1000", "1000", "Alice", "/home/alice", "/bin/bash"],
            "nobody": ["x", "65534", "65534", "nobody", "/nonexistent", "/usr/sbin/nologin"]}
GROUPS_OF_THE_HOST = {"root": ["x", "0", ""], "video": ["x", "44", ""], "runyard": ["x", "998", ""],
                      "alice": ["x", "1000", ""], "nogroup": ["x", "65534", ""]}


@pytest.fixture(scope="module")
def jinja() -> Any:
    jinja2 = pytest.importorskip("jinja2", reason="jinja2 is not installed: the Ansible templates are not rendered")
    from jinja2.nativetypes import NativeEnvironment

    def to_json(value: Any) -> str:
        return json.dumps(value)

    def quote(value: Any) -> str:  # Ansible's `quote`: one shell word
        return shlex.quote(str(value))

    # Ansible's template module: trim_blocks on, the trailing newline kept, undefined variables are errors.
    text_env = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True, keep_trailing_newline=True,
                                  loader=jinja2.FileSystemLoader(str(ROLES)))
    # Ansible evaluates variables lazily and keeps native types ("{{ [1] }}" is a list): NativeEnvironment.
    native_env = NativeEnvironment(undefined=jinja2.StrictUndefined)
    def intersect(left: Any, right: Any) -> list:  # Ansible's `intersect`: unique items of left also in right
        return [item for i, item in enumerate(left) if item in right and item not in left[:i]]

    def match(value: Any, pattern: str) -> bool:  # Ansible's `match` test: re.match
        return re.match(pattern, str(value)) is not None

    for env in (text_env, native_env):
        env.filters["to_json"] = to_json
        env.filters["quote"] = quote
        env.filters["intersect"] = intersect
        env.filters["dict2items"] = lambda mapping: [{"key": k, "value": v} for k, v in mapping.items()]
        env.filters["basename"] = os.path.basename
        env.tests["match"] = match
    return text_env, native_env


def resolve(jinja: Any, variables: dict[str, Any]) -> dict[str, Any]:
    """Resolve variables that refer to others until nothing is left to resolve, as Ansible does lazily."""
    _, native_env = jinja
    for _ in range(10):
        pending = {k: v for k, v in variables.items() if isinstance(v, str) and "{{" in v}
        if not pending:
            return variables
        for key, value in pending.items():
            variables[key] = native_env.from_string(value).render(variables)
    raise AssertionError(f"variables refer to each other in a loop: {sorted(pending)}")


def host_vars(jinja: Any, host: str, inventory: dict[str, dict[str, Any]] = INVENTORY,
              **overrides: Any) -> dict[str, Any]:
    """What a template on `host` sees: every role's defaults, inventory variables, facts, then `overrides`.
    `hostvars` holds the inventory's variables only, as in Ansible (no role defaults)."""
    variables: dict[str, Any] = {}
    for role in ("runyard_common", "runyard_head", "runyard_agent"):
        variables.update(load_yaml(ROLES / role / "defaults" / "main.yml"))
    variables.update(inventory[host])
    variables.update(
        inventory_hostname=host,
        groups=GROUPS,
        hostvars={h: {**v, "inventory_hostname": h} for h, v in inventory.items()},
        ansible_facts={"os_family": "Debian", "getent_passwd": ACCOUNTS, "getent_group": GROUPS_OF_THE_HOST},
        ansible_managed="Managed by Ansible",
    )
    variables.update(overrides)
    return resolve(jinja, variables)


def task_vars(jinja: Any, task: dict, variables: dict[str, Any], **registered: Any) -> dict[str, Any]:
    """`variables` plus the task's own vars and what earlier tasks registered, resolved."""
    return resolve(jinja, {**variables, **registered, **(task.get("vars") or {})})


def expand(jinja: Any, value: Any, variables: dict[str, Any]) -> Any:
    """A task argument as the task sees it: strings rendered (native types kept), dicts and lists walked."""
    _, native_env = jinja
    if isinstance(value, str):
        return native_env.from_string(value).render(variables) if "{{" in value else value
    if isinstance(value, dict):
        return {k: expand(jinja, v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [expand(jinja, v, variables) for v in value]
    return value


def runs(jinja: Any, task: dict, variables: dict[str, Any]) -> bool:
    """Whether the task's `when` conditions (plain Jinja expressions) all hold."""
    return all(expand(jinja, "{{ " + cond + " }}", variables) for cond in as_list(task.get("when", [])))


def render(jinja: Any, template: str, variables: dict[str, Any]) -> str:
    text_env, _ = jinja
    return text_env.get_template(template).render(variables)


def load_rendered(cls: type, text: str, tmp_path: Path) -> Any:
    path = tmp_path / "rendered.toml"
    path.write_text(text)
    data = tomllib.loads(text)
    fields = {f.name for f in dataclasses.fields(cls)}
    assert set(data) <= fields, f"not {cls.__name__} fields: {sorted(set(data) - fields)}"
    return load_config(cls, path, env_prefix=NO_ENV)  # the daemon's loader: unknown keys and wrong types fail


def unit_settings(text: str) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"not a unit file line: {line!r}"
        current.setdefault(key, []).append(value)
    return sections


def render_head(jinja: Any, tmp_path: Path, inventory: dict[str, dict[str, Any]] = INVENTORY,
                **overrides: Any) -> HeadConfig:
    text = render(jinja, "runyard_head/templates/head.toml.j2", host_vars(jinja, "head1", inventory, **overrides))
    load_rendered(HeadConfig, text, tmp_path)
    return load_head_config(tmp_path / "rendered.toml")


def render_agent(jinja: Any, tmp_path: Path, host: str, inventory: dict[str, dict[str, Any]] = INVENTORY,
                 **overrides: Any) -> AgentConfig:
    text = render(jinja, "runyard_agent/templates/agent.toml.j2", host_vars(jinja, host, inventory, **overrides))
    load_rendered(AgentConfig, text, tmp_path)
    return load_agent_config(tmp_path / "rendered.toml")


def test_head_toml_renders_to_a_valid_head_config(jinja: Any, tmp_path: Path) -> None:
    config = render_head(jinja, tmp_path)
    assert config.data_dir == "/var/lib/runyard"
    assert config.log_level == "INFO"
    assert config.max_retries == HeadConfig().max_retries  # untouched keys keep the daemon's default


def test_head_serves_tls_on_its_inventory_address(jinja: Any, tmp_path: Path) -> None:
    """Both ports on the address the agents dial (not every interface), TLS, and that address in the
    certificate."""
    config = render_head(jinja, tmp_path)
    assert config.insecure_plaintext is False
    assert config.listen == "10.0.0.10:7433"
    assert config.node_address() == "10.0.0.10:7434"
    assert config.tls_path == Path("/var/lib/runyard/tls")
    assert {"head1", "10.0.0.10"} <= set(config.tls_names.split(","))
    agent = render_agent(jinja, tmp_path, "gpu1")
    assert agent.head_address == config.listen and agent.node_address() == config.node_address()


def test_head_named_by_dns_listens_everywhere_with_tls(jinja: Any, tmp_path: Path) -> None:
    """On the head, its own name may resolve to 127.0.1.1 (Debian): binding it would cut the agents off, so a head
    named by DNS listens on every interface, still TLS only, and its certificate carries the name agents dial."""
    inventory = {**INVENTORY, "head1": {}}
    config = render_head(jinja, tmp_path, inventory)
    assert (config.listen, config.node_address(), config.insecure_plaintext) == ("0.0.0.0:7433", "0.0.0.0:7434", False)
    agent = render_agent(jinja, tmp_path, "gpu1", inventory)
    assert (agent.head_address, agent.node_address()) == ("head1:7433", "head1:7434")
    assert "head1" in head_names(config)


@pytest.mark.parametrize(("address", "listen", "node_address"), [
    ("fd00::10", "[fd00::10]:7433", "[fd00::10]:7434"),
    ("head1.example.internal", "0.0.0.0:7433", "head1.example.internal:7434"),
])
def test_head_address_forms(jinja: Any, tmp_path: Path, address: str, listen: str, node_address: str) -> None:
    inventory = {**INVENTORY, "head1": {"ansible_host": address}}
    config = render_head(jinja, tmp_path, inventory)
    assert config.listen == listen
    assert address in config.tls_names.split(",")
    agent = render_agent(jinja, tmp_path, "gpu1", inventory)
    assert agent.node_address() == node_address
    assert agent.head_address.rpartition(":")[0].strip("[]") == address


def test_head_certificate_names_what_agents_dial_when_it_listens_everywhere(jinja: Any, tmp_path: Path) -> None:
    """runyard_head_listen = 0.0.0.0: the head finds its own interfaces' addresses, but agents may dial one this
    machine lacks (NAT) or a name: tls_names carries the inventory's, and the extra names are added."""
    config = render_head(jinja, tmp_path, runyard_head_listen="0.0.0.0:7433",
                         runyard_head_extra_tls_names=["runyard.example.internal"])
    assert config.listen == "0.0.0.0:7433" and config.node_address() == "0.0.0.0:7434"
    names = head_names(config)
    assert {"10.0.0.10", "head1", "runyard.example.internal"} <= set(names)


def test_head_toml_passes_extra_keys_with_their_types(jinja: Any, tmp_path: Path) -> None:
    extra = {"artifact_url": 's3://bucket/run "yard"\\x', "max_retries": 5, "down_after_s": 600.5,
             "snapshot_max_bytes": 3 * 1024**3, "sqlite_synchronous": "NORMAL"}
    variables = host_vars(jinja, "head1", runyard_head_config=extra, runyard_head_port="7500")
    config = load_rendered(HeadConfig, render(jinja, "runyard_head/templates/head.toml.j2", variables), tmp_path)
    assert {k: getattr(config, k) for k in extra} == extra
    assert (config.listen, config.node_address()) == ("10.0.0.10:7500", "10.0.0.10:7501")


def test_node_port_is_one_setting_for_the_head_and_its_agents(jinja: Any, tmp_path: Path) -> None:
    config = render_head(jinja, tmp_path, runyard_head_node_port=9000)
    assert (config.listen, config.node_listen) == ("10.0.0.10:7433", "10.0.0.10:9000")
    agent = render_agent(jinja, tmp_path, "cpu1", runyard_head_node_port=9000)
    assert (agent.head_address, agent.head_node_address) == ("10.0.0.10:7433", "10.0.0.10:9000")


def test_head_toml_carries_quotas_and_autoscaled_clusters(jinja: Any, tmp_path: Path) -> None:
    clusters = {"a100": {"provider": "command", "min_nodes": 0, "max_nodes": 2, "node_cpus": 64,
                         "node_memory_bytes": "512G", "node_gpus": 8, "nodes": ["gpu-1", "gpu-2"],
                         "power_on": "wakeonlan {node}", "power_off": "ssh {node} poweroff"}}
    variables = host_vars(jinja, "head1", runyard_head_config={"gpu_quotas": {"team-b": {"a100": 8}}, "clusters": clusters})
    config = load_rendered(HeadConfig, render(jinja, "runyard_head/templates/head.toml.j2", variables), tmp_path)
    assert config.quotas() == {("team-b", "a100"): 8}
    policy = policies_from_config(config.clusters)["a100"]
    assert (policy.nodes, policy.power_on, policy.node_memory_bytes) == (("gpu-1", "gpu-2"), "wakeonlan {node}", 512 * 1024**3)


def test_head_unit(jinja: Any) -> None:
    text = render(jinja, "runyard_head/templates/runyard-head.service.j2", host_vars(jinja, "head1"))
    service = unit_settings(text)["Service"]
    assert service["ExecStart"] == ["/opt/runyard/venv/bin/runyard-head --config /etc/runyard/head.toml"]
    assert service["User"] == ["runyard"]
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ReadWritePaths": "/var/lib/runyard",
                       "PrivateTmp": "yes", "ProtectHome": "yes", "Restart": "on-failure", "RestartSec": "2",
                       "Type": "notify", "NotifyAccess": "main", "WatchdogSec": "30"}.items():
        assert service.get(key) == [value], f"{key}={service.get(key)}"
    assert "WantedBy" in unit_settings(text)["Install"]
    extra = render(jinja, "runyard_head/templates/runyard-head.service.j2",
                   host_vars(jinja, "head1", runyard_head_read_write_paths=["/srv/artifacts"]))
    assert unit_settings(extra)["Service"]["ReadWritePaths"] == ["/var/lib/runyard", "/srv/artifacts"]


SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
HEAD_UNIT = "runyard_head/templates/runyard-head.service.j2"
HEAD_EXPOSURE_GOAL = 2.0


def rendered_unit(jinja: Any, tmp_path: Path, template: str, host: str) -> Path:
    """The unit as ansible writes it, beside a venv whose console scripts exist (`verify` checks ExecStart)."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    for script in ("runyard-head", "runyard-agent"):
        (venv / "bin" / script).write_text("#!/bin/sh\n")
        (venv / "bin" / script).chmod(0o755)
    unit = tmp_path / Path(template).name.removesuffix(".j2")
    unit.write_text(render(jinja, template, host_vars(jinja, host, runyard_venv=str(venv))))
    return unit


def exposure(unit: Path) -> float:
    """`systemd-analyze security --offline=yes`'s overall exposure of a unit file: 0 (locked down) to 10."""
    assert SYSTEMD_ANALYZE is not None
    found = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=yes", unit.name], cwd=unit.parent,
                           capture_output=True, text=True, timeout=120)
    score = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", found.stdout)
    assert score, found.stdout[-500:] + found.stderr
    return float(score[1])


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_head_unit_verifies_and_is_locked_down(jinja: Any, tmp_path: Path) -> None:
    unit = rendered_unit(jinja, tmp_path, HEAD_UNIT, "head1")
    verified = subprocess.run([SYSTEMD_ANALYZE, "verify", unit.name], cwd=unit.parent, capture_output=True,
                              text=True, timeout=120)
    assert verified.returncode == 0 and not verified.stderr.strip(), verified.stderr
    assert exposure(unit) <= HEAD_EXPOSURE_GOAL


AGENT_EXPOSURE_GOAL = 5.5   # what running users' code allows: see the unit's "Left out on purpose"


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_agent_unit_verifies_and_is_as_locked_down_as_jobs_allow(jinja: Any, tmp_path: Path) -> None:
    unit = rendered_unit(jinja, tmp_path, AGENT_UNIT, "gpu1")
    verified = subprocess.run([SYSTEMD_ANALYZE, "verify", unit.name], cwd=unit.parent, capture_output=True,
                              text=True, timeout=120)
    assert verified.returncode == 0 and not verified.stderr.strip(), verified.stderr
    assert exposure(unit) <= AGENT_EXPOSURE_GOAL


def test_agent_toml_on_a_node(jinja: Any, tmp_path: Path) -> None:
    config = render_agent(jinja, tmp_path, "gpu1")
    assert config.head_address == "10.0.0.10:7433"  # the head's ansible_host, not the agent's
    assert config.head_node_address == "10.0.0.10:7434"
    assert config.head_ca_file == "/etc/runyard/ca.crt"  # the head's CA, copied by the role
    assert config.head_ca_fingerprint == ""
    assert config.insecure_plaintext is False
    assert config.join_token_file == "/etc/runyard/join.token"
    assert config.join_token == ""  # the secret is in the 0600 file, not in the config
    assert config.name == "gpu1"
    assert config.data_dir == "/var/lib/runyard-agent"
    assert config.stop_grace_s == 10.0
    assert config.labels == {}


def test_agent_toml_with_labels_and_extra_keys(jinja: Any, tmp_path: Path) -> None:
    labels = {"rack": "a", "zone name": 'eu "west"', "gen": 4}
    extra = {"cpus": 16, "memory_bytes": 64 * 1024**3, "heartbeat_interval_s": 2.5, "python_bin_dir": 'C:\\conda "x"\\bin'}
    variables = host_vars(jinja, "cpu1", runyard_agent_labels=labels, runyard_agent_config=extra,
                          runyard_agent_stop_grace_s="25", runyard_head_port="7500", runyard_agent_cluster='team "a"')
    config = load_rendered(AgentConfig, render(jinja, "runyard_agent/templates/agent.toml.j2", variables), tmp_path)
    assert config.labels == {"rack": "a", "zone name": 'eu "west"', "gen": "4"}  # label values are strings
    assert (config.cpus, config.memory_bytes, config.heartbeat_interval_s) == (16.0, 64 * 1024**3, 2.5)
    assert config.python_bin_dir == 'C:\\conda "x"\\bin'
    assert config.cluster == 'team "a"'
    assert config.stop_grace_s == 25.0
    assert (config.head_address, config.node_address()) == ("10.0.0.10:7500", "10.0.0.10:7501")


def test_agent_toml_with_the_keys_of_an_offline_clusters_environments(jinja: Any, tmp_path: Path) -> None:
    extra = {"pip_index_url": "none", "pip_find_links": ["/srv/wheelhouse", 'https://mirror/"links"/'],
             "pip_extra_index_urls": [], "env_cache_max_bytes": 500 * 1024**3, "container_runtime": "apptainer"}
    variables = host_vars(jinja, "cpu1", runyard_agent_config=extra)
    config = load_rendered(AgentConfig, render(jinja, "runyard_agent/templates/agent.toml.j2", variables), tmp_path)
    assert {k: getattr(config, k) for k in extra} == extra


def test_agent_toml_with_a_ca_fingerprint_instead_of_the_head(jinja: Any, tmp_path: Path) -> None:
    """Agents whose head is not in the inventory: they check the CA the head presents against the fingerprint."""
    fingerprint = "sha256:" + "ab" * 32
    config = render_agent(jinja, tmp_path, "gpu1", runyard_agent_head_ca_fingerprint=fingerprint,
                          runyard_agent_head_address="runyard.example.internal:7433")
    assert (config.head_ca_fingerprint, config.head_ca_file) == (fingerprint, "")
    assert config.node_address() == "runyard.example.internal:7434"


AGENT_UNIT = "runyard_agent/templates/runyard-agent.service.j2"
# What the root agent needs (see the unit's comments), checked against a real root agent under this set: without
# any one of them the isolation tests fail, and without CAP_SETPCAP setpriv leaves a job the unit's bounding set.
AGENT_CAPABILITIES = {"CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP", "CAP_CHOWN", "CAP_FOWNER", "CAP_DAC_OVERRIDE",
                      "CAP_KILL"}


def agent_unit(jinja: Any, host: str = "gpu1", **overrides: Any) -> dict[str, list[str]]:
    return unit_settings(render(jinja, AGENT_UNIT, host_vars(jinja, host, **overrides)))["Service"]


def test_agent_unit(jinja: Any) -> None:
    variables = host_vars(jinja, "gpu1")
    service = agent_unit(jinja)
    assert service["ExecStart"] == ["/opt/runyard/venv/bin/runyard-agent --config /etc/runyard/agent.toml"]
    assert service["KillMode"] == ["mixed"]
    assert (service["Type"], service["NotifyAccess"], service["WatchdogSec"]) == (["notify"], ["main"], ["30"])
    assert int(service["TimeoutStopSec"][0]) > variables["runyard_agent_stop_grace_s"] + 5
    assert service["Restart"] == ["on-failure"]
    assert "PYTHONUNBUFFERED=1" in service["Environment"]
    assert "HOME=/var/lib/runyard-agent/home" in service["Environment"]


@pytest.mark.parametrize("host", ["gpu1", "head1"])
def test_agent_runs_as_root_with_a_delegated_cgroup(jinja: Any, host: str) -> None:
    """Root, so that every job runs as a uid of its own, away from the agent's key and from other jobs: on the head
    host too, where the jobs' uids then have no access to the head's data dir."""
    service = agent_unit(jinja, host)
    assert service.get("User") == ["root"] and service.get("Group") == ["root"]
    assert "SupplementaryGroups" not in service  # setpriv clears a job's groups: they would serve nobody
    assert service["Delegate"] == ["yes"], "the agent gives each job a cgroup of its own"
    assert service["OOMPolicy"] == ["continue"], "a job killed for memory must not stop the agent and the others"


def test_agent_unit_keeps_only_the_privileges_the_agent_needs(jinja: Any) -> None:
    service = agent_unit(jinja)
    assert set(" ".join(service["CapabilityBoundingSet"]).split()) == AGENT_CAPABILITIES
    assert service["NoNewPrivileges"] == ["yes"]
    assert "AmbientCapabilities" not in service


def test_agent_unit_sandbox_spares_what_jobs_need(jinja: Any) -> None:
    """The sandbox applies to the jobs too: read-only system, private /tmp, no kernel tunables, modules or log, no
    set-uid files; but writable storage outside /usr and /etc, /home, the GPUs, the delegated cgroup and the jobs'
    /proc entries all stay."""
    service = agent_unit(jinja)
    for key, value in {"ProtectSystem": "full", "ReadOnlyPaths": "/opt/runyard/venv", "PrivateTmp": "yes",
                       "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes", "ProtectKernelLogs": "yes",
                       "RestrictSUIDSGID": "yes"}.items():
        assert service.get(key) == [value], f"{key}={service.get(key)}"
    for key in ("ProtectHome", "PrivateDevices", "DevicePolicy", "DeviceAllow", "ProtectClock",
                "ProtectControlGroups", "ProtectProc", "ProcSubset", "MemoryDenyWriteExecute",
                "RestrictNamespaces", "RestrictAddressFamilies", "PrivateNetwork", "UMask", "ReadWritePaths"):
        assert key not in service, f"{key} would take from jobs what they need (see the unit's comments)"
    # System calls: a deny-list only, and never what containers, profilers, setpriv or ulimit use
    (denied,) = service["SystemCallFilter"]
    assert denied.startswith("~")
    assert not {"@mount", "@debug", "@privileged", "@resources", "@system-service"} & set(denied[1:].split())


def test_agent_unit_follows_stop_grace_and_environment(jinja: Any) -> None:
    service = agent_unit(jinja, runyard_agent_stop_grace_s=120, runyard_agent_environment={"HF_HOME": "/data/hf cache"})
    assert int(service["TimeoutStopSec"][0]) > 120
    assert '"HF_HOME=/data/hf cache"' in service["Environment"]


def assert_conditions(jinja: Any, task: dict, variables: dict[str, Any]) -> list[str]:
    """The conditions of an `ansible.builtin.assert` task that do not hold (Jinja expressions, as Ansible reads them)."""
    variables = task_vars(jinja, task, variables)
    return [cond for cond in as_list(task["ansible.builtin.assert"]["that"])
            if not expand(jinja, "{{ " + cond + " }}", variables)]


CHECK_VARIABLES = "Check the agent's variables"
CHECK_RANGE = "Check that no account or group of the host has a uid or gid of the run uid range"


def test_agent_toml_gives_jobs_uids_of_their_own(jinja: Any, tmp_path: Path) -> None:
    """The agent's default range unless set, and never allow_root_runs: a root agent runs no job as root."""
    config = render_agent(jinja, tmp_path, "gpu1")
    assert config.run_uid_range == AgentConfig().run_uid_range == "200000-265535"
    assert config.uid_range == (200000, 265535)
    assert config.allow_root_runs is False
    text = (tmp_path / "rendered.toml").read_text()
    assert tomllib.loads(text)["allow_root_runs"] is False
    assert load_yaml(ROLES / "runyard_agent" / "defaults" / "main.yml")["runyard_agent_run_uid_range"] == "200000-265535"
    assert render_agent(jinja, tmp_path, "cpu1", runyard_agent_run_uid_range="300000-300999").uid_range == (300000, 300999)


def test_agent_role_refuses_root_runs_and_a_bad_range(jinja: Any) -> None:
    """allow_root_runs is reserved: runyard_agent_config cannot turn it on; nor can a range that is no range, nor a
    leftover runyard_agent_user ask for the unprivileged agent of earlier versions."""
    assert {"allow_root_runs", "run_uid_range"} <= reserved_keys("runyard_agent")
    task = role_task("runyard_agent", CHECK_VARIABLES)
    assert assert_conditions(jinja, task, host_vars(jinja, "gpu1")) == []
    for bad in ({"runyard_agent_config": {"allow_root_runs": True}},
                {"runyard_agent_config": {"run_uid_range": "1000-2000"}},
                {"runyard_agent_run_uid_range": ""},
                {"runyard_agent_run_uid_range": "200000"},
                {"runyard_agent_user": "runyard"}):
        assert assert_conditions(jinja, task, host_vars(jinja, "gpu1", **bad)), f"{bad} passes the check"


@pytest.mark.parametrize(("uid_range", "users", "groups"), [
    ("200000-265535", [], []),
    (" 990 - 999 ", ["runyard"], ["runyard"]),   # the head's account: its data dir
    ("1000-1000", ["alice"], ["alice"]),         # a person's files
    ("40-50", [], ["video"]),                    # a group's rights
])
def test_run_uid_range_holds_no_account_of_the_host(jinja: Any, uid_range: str, users: list, groups: list) -> None:
    """A job runs as uid N, gid N: the play refuses a range in which N is an account's uid or a group's gid."""
    task = role_task("runyard_agent", CHECK_RANGE)
    variables = host_vars(jinja, "head1", runyard_agent_run_uid_range=uid_range)
    assert bool(assert_conditions(jinja, task, variables)) == bool(users or groups)
    seen = task_vars(jinja, task, variables)
    assert (seen["runyard_agent_users_in_range"], seen["runyard_agent_groups_in_range"]) == (users, groups)


STATE = "runyard_agent_data_dir_state"


def test_agent_data_dir_is_roots_and_its_mode_left_to_the_agent(jinja: Any) -> None:
    """The data dir holds the node's key: root's, created 0700. From then on the agent sets its mode at each start
    (0711 while jobs pass through it to their run directories): a play that closed it again would cut live jobs
    off from their directories."""
    variables = host_vars(jinja, "gpu1")
    create = role_task("runyard_agent", "Create the data directory")
    args = create["ansible.builtin.file"]
    assert (args["path"], args["state"], args["owner"], args["group"], args["mode"]) == \
        ("{{ runyard_agent_data_dir }}", "directory", "root", "root", "0700")
    assert runs(jinja, create, {**variables, STATE: {"stat": {"exists": False}}})
    assert not runs(jinja, create, {**variables, STATE: {"stat": {"exists": True, "uid": 0}}})
    for task in walk_tasks(load_yaml(ROLES / "runyard_agent" / "tasks" / "main.yml")):
        file_args = task.get("ansible.builtin.file") or {}
        if file_args.get("path") == "{{ runyard_agent_data_dir }}" and task["name"] != create["name"]:
            assert "mode" not in file_args, f"{task['name']} sets the data dir's mode"
    home = role_task("runyard_agent", "Create the agent's HOME")["ansible.builtin.file"]
    assert (home["owner"], home["mode"]) == ("root", "0700")
    assert expand(jinja, home["path"], variables) == "/var/lib/runyard-agent/home"


def test_an_unprivileged_agents_data_dir_becomes_roots(jinja: Any) -> None:
    """Nodes deployed when the agent was not root: their key, certificate and run directories become root's (the
    root agent refuses a run root that is not its own), without following links a job may have left."""
    variables = host_vars(jinja, "gpu1")
    task = role_task("runyard_agent", "Give the data directory of an unprivileged agent to root")
    args = task["ansible.builtin.file"]
    assert (args["path"], args["recurse"], args["follow"], args["owner"], args["group"]) == \
        ("{{ runyard_agent_data_dir }}", True, False, "root", "root")
    assert "mode" not in args
    assert runs(jinja, task, {**variables, STATE: {"stat": {"exists": True, "uid": 998}}})
    assert not runs(jinja, task, {**variables, STATE: {"stat": {"exists": True, "uid": 0}}})
    assert not runs(jinja, task, {**variables, STATE: {"stat": {"exists": False}}})
    look = role_task("runyard_agent", "Look at the data directory")
    assert look["register"] == STATE
    assert expand(jinja, look["ansible.builtin.stat"]["path"], variables) == "/var/lib/runyard-agent"


# --- enrollment ----------------------------------------------------------------------------------------------

NOT_ENROLLED = {"runyard_agent_node_certificate": {"stat": {"exists": False}}}
ENROLLED = {"runyard_agent_node_certificate": {"stat": {"exists": True}}}


def token_task(jinja: Any, host: str, inventory: dict[str, dict[str, Any]] = INVENTORY, **overrides: Any
               ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The agent role's join-token task for `host`: its arguments as rendered, and the variables it sees."""
    task = role_task("runyard_agent", "Create a join token on the head")
    variables = task_vars(jinja, task, host_vars(jinja, host, inventory, **overrides), **NOT_ENROLLED)
    return expand(jinja, task, variables), variables


def test_join_token_is_made_on_the_head_with_its_own_address_ca_and_admin_token(jinja: Any) -> None:
    task, _ = token_task(jinja, "gpu1")
    assert task["delegate_to"] == "head1"
    assert task["environment"]["RUNYARD_ADDRESS"] == "10.0.0.10:7433"
    assert task["environment"]["RUNYARD_CA_FILE"] == "/var/lib/runyard/tls/ca.crt"
    words = shlex.split(task["ansible.builtin.shell"]["cmd"])
    assert words[0] == "RUNYARD_TOKEN=$(cat /var/lib/runyard/admin.token)"
    assert words[-9:] == ["exec", "/opt/runyard/venv/bin/runyard", "node", "token", "create", "--uses", "1", "--ttl", "1h"]


def test_join_token_on_a_head_listening_everywhere_goes_through_loopback(jinja: Any) -> None:
    """A head that listens on 0.0.0.0 (set in the head's inventory variables) is reached by its CLI on 127.0.0.1,
    which its certificate names; its data dir and tls_dir from the inventory move the CA and the admin token."""
    inventory = {**INVENTORY, "head1": {"ansible_host": "10.0.0.10", "runyard_head_listen": "0.0.0.0:7500",
                                        "runyard_head_data_dir": "/srv/runyard",
                                        "runyard_head_config": {"tls_dir": "/srv/pki"}}}
    task, _ = token_task(jinja, "gpu1", inventory)
    assert task["environment"]["RUNYARD_ADDRESS"] == "127.0.0.1:7500"
    assert task["environment"]["RUNYARD_CA_FILE"] == "/srv/pki/ca.crt"
    assert "/srv/runyard/admin.token" in task["ansible.builtin.shell"]["cmd"]


def test_only_a_node_without_a_certificate_gets_a_join_token(jinja: Any) -> None:
    task = role_task("runyard_agent", "Create a join token on the head")
    variables = host_vars(jinja, "gpu1")
    assert runs(jinja, task, task_vars(jinja, task, variables, **NOT_ENROLLED))
    assert not runs(jinja, task, task_vars(jinja, task, variables, **ENROLLED))
    given = host_vars(jinja, "gpu1", runyard_agent_join_token="from-the-vault")
    assert not runs(jinja, task, task_vars(jinja, task, given, **NOT_ENROLLED))
    stat_task = role_task("runyard_agent", "Look for the node's certificate")
    assert expand(jinja, stat_task["ansible.builtin.stat"]["path"], variables) == "/var/lib/runyard-agent/node.crt"
    assert stat_task["register"] == "runyard_agent_node_certificate"


def name_and_state(node: Any) -> tuple[str, str]:
    """A node's name and state as `runyard nodes -o json` shows them."""
    shown = as_dict(node)
    return shown["name"], shown["state"]


def run_shell_task(task: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """What the shell module does with the task on the head: `/bin/sh -c cmd` with `environment` added."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNYARD_")}
    env.update({k: str(v) for k, v in task["environment"].items()})
    return subprocess.run(["/bin/sh", "-c", task["ansible.builtin.shell"]["cmd"]], env=env, capture_output=True,
                          text=True, timeout=60)


def test_the_roles_enroll_an_agent_with_a_real_head(jinja: Any, tmp_path: Path) -> None:
    """The head's config as the head role renders it, a join token made by the agent role's task on the head, the
    CA copied where the role puts it, and the agent's config as the role renders it: the agent enrolls and is
    Ready. Loopback and free ports stand in for the inventory's address and the fixed ports."""
    venv = tmp_path / "venv"                   # the role runs <runyard_venv>/bin/runyard: this interpreter's CLI
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "runyard").write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m runyard \"$@\"\n")
    (venv / "bin" / "runyard").chmod(0o755)
    head_dir, head_etc, agent_etc = tmp_path / "head", tmp_path / "head-etc", tmp_path / "agent-etc"
    for path in (head_dir, head_etc, agent_etc):
        path.mkdir()
    inventory = {**INVENTORY, "head1": {"ansible_host": "127.0.0.1"}}
    head_vars = host_vars(jinja, "head1", inventory, runyard_head_port=0, runyard_head_node_port=0,
                          runyard_head_data_dir=str(head_dir))
    head_config = head_etc / "head.toml"
    head_config.write_text(render(jinja, "runyard_head/templates/head.toml.j2", head_vars))
    ready = tmp_path / "ready.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNYARD_")}
    head = agent = None
    try:
        with open(tmp_path / "head.log", "wb") as log:
            head = subprocess.Popen([sys.executable, "-m", "scheduler", "--config", str(head_config),
                                     "--ready-file", str(ready)], stdout=log, stderr=log, env=env)
        wait_until("the head to be ready", lambda: ready.exists() or head.poll() is not None)
        assert head.poll() is None, (tmp_path / "head.log").read_text()[-2000:]
        serving = json.loads(ready.read_text())
        head_dir_mode = role_task("runyard_head", "Create the data directory")["ansible.builtin.file"]["mode"]
        assert stat.S_IMODE(head_dir.stat().st_mode) == int(head_dir_mode, 8), "the play and the head would disagree"

        # The head's address and data dir as the agents' play sees them: through the head's inventory variables.
        inventory["head1"].update(runyard_head_listen=serving["address"], runyard_head_data_dir=str(head_dir))
        overrides = dict(runyard_venv=str(venv), runyard_config_dir=str(agent_etc),
                         runyard_agent_data_dir=str(tmp_path / "agent"), runyard_agent_head_address=serving["address"],
                         runyard_agent_head_node_address=serving["node_address"])
        task, variables = token_task(jinja, "gpu1", inventory, **overrides)
        assert variables["runyard_agent_head_ca_path"] == serving["ca_file"]

        assert variables["runyard_agent_head_admin_token_path"] == str(head_dir / "admin.token")

        unreadable, _ = token_task(jinja, "gpu1", inventory, **overrides,
                                   runyard_agent_head_admin_token_path=str(head_dir / "missing.token"))
        refused = run_shell_task(unreadable)
        assert refused.returncode != 0 and refused.stdout == "", "no admin token: no CLI call with an empty one"

        made = run_shell_task(task)
        assert made.returncode == 0, made.stderr
        secret = made.stdout.splitlines()[-1].strip()
        assert secret and secret not in made.stderr

        token_file = Path(variables["runyard_agent_join_token_file"])
        token_file.write_text(secret + "\n")
        token_file.chmod(0o600)
        ca_file = Path(variables["runyard_agent_head_ca_file"])
        ca_file.write_bytes(Path(variables["runyard_agent_head_ca_path"]).read_bytes())
        agent_config = agent_etc / "agent.toml"
        agent_config.write_text(render(jinja, "runyard_agent/templates/agent.toml.j2", variables))
        assert load_agent_config(agent_config).head_ca_file == str(ca_file)

        with open(tmp_path / "agent.log", "wb") as log:
            agent = subprocess.Popen([sys.executable, "-m", "agent", "--config", str(agent_config)],
                                     stdout=log, stderr=log, env=env)
        admin = ClientConfig(serving["address"], (head_dir / "admin.token").read_text().strip(), ca_file.read_bytes())
        with Client(admin, timeout_s=10) as client:
            def ready_node() -> bool:
                assert agent.poll() is None, (tmp_path / "agent.log").read_text()[-2000:]
                return any(name_and_state(n) == ("gpu1", "Ready") for n in client.nodes().nodes)
            wait_until("the agent to enroll and be Ready", ready_node)
        node_dir = tmp_path / "agent"
        assert (node_dir / "node.crt").exists()
        assert stat.S_IMODE((node_dir / "node.key").stat().st_mode) == 0o600
        # Enrolled: the next run of the play makes no token for this node.
        assert not runs(jinja, role_task("runyard_agent", "Create a join token on the head"), {**variables, **ENROLLED})
    finally:
        terminate(agent)
        terminate(head)


# --- the version pin ---------------------------------------------------------------------------------------------

PYPROJECT = ANSIBLE.parent / "pyproject.toml"
PROJECT_VERSION = tomllib.loads(PYPROJECT.read_text())["project"]["version"]
COMMON_DEFAULTS = ROLES / "runyard_common" / "defaults" / "main.yml"


def test_the_roles_install_the_projects_version() -> None:
    """runyard_version is the project's version, and what the roles install unless told otherwise: the roles'
    templates write the config keys of this version. The example inventory's wheel follows it."""
    defaults = load_yaml(COMMON_DEFAULTS)
    assert defaults["runyard_version"] == PROJECT_VERSION, "bump runyard_version with pyproject.toml's version"
    assert defaults["runyard_package"] == "runyard=={{ runyard_version }}"
    example = (ANSIBLE / "inventory.example.ini").read_text()
    assert "runyard_package={{ playbook_dir }}/dist/runyard-{{ runyard_version }}-py3-none-any.whl" in example
    assert not re.search(r"runyard[-=]+\d", example), "the example inventory names a version of its own"


WHEEL_CHECK = "Check the package to install"


@pytest.mark.parametrize(("package", "accepted"), [
    ("runyard=={{ runyard_version }}", True),
    ("runyard @ git+https://example.org/runyard.git", True),        # a requirement: checked once installed
    (f"/srv/dist/runyard-{PROJECT_VERSION}-py3-none-any.whl", True),
    ("/srv/dist/runyard-0.0.9-py3-none-any.whl", False),
    (f"/srv/dist/runyard-{PROJECT_VERSION}.post1-py3-none-any.whl", False),
    (f"/srv/dist/other-{PROJECT_VERSION}-py3-none-any.whl", False),
])
def test_a_wheel_of_another_version_is_refused(jinja: Any, package: str, accepted: bool) -> None:
    task = role_task("runyard_common", WHEEL_CHECK)
    failed = assert_conditions(jinja, task, host_vars(jinja, "gpu1", runyard_package=package))
    assert (failed == []) == accepted, failed


def test_the_installed_version_is_checked_after_the_install() -> None:
    """Whatever runyard_package named, the venv must then hold runyard_version (not under --check, where nothing
    was installed)."""
    tasks = load_yaml(ROLES / "runyard_common" / "tasks" / "main.yml")
    names = [task["name"] for task in tasks]
    read, check = role_task("runyard_common", "Read the installed Runyard version"), \
        role_task("runyard_common", "Check the installed Runyard version")
    assert names.index("Install the runyard package") < names.index(read["name"]) < names.index(check["name"])
    assert "{{ runyard_venv }}/bin/python" in read["ansible.builtin.command"]["argv"]
    assert check["ansible.builtin.assert"]["that"] == "runyard_common_installed.stdout | trim == runyard_version"
    assert read["when"] == check["when"] == "not ansible_check_mode"


# --- the real tools: ansible-playbook and ansible-lint --------------------------------------------------------------

BIN = Path(sys.executable).parent
ANSIBLE_CHECK = "Check the Ansible version"


def tool(name: str) -> str:
    """A tool of this venv: ansible-core and ansible-lint are dev dependencies, so a missing one is a failure."""
    path = BIN / name
    assert path.is_file(), f"{name} is not in {BIN}: install the dev dependencies (pip install -e '.[dev]')"
    return str(path)


def pinned(name: str) -> str:
    """The version pyproject.toml's dev extra pins `name` to."""
    dev = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]["dev"]
    (spec,) = [s for s in dev if re.fullmatch(rf"{re.escape(name)}\s*==\s*[\w.]+", s)]
    return spec.split("==")[1].strip()


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))


def min_ansible_version() -> str:
    task = role_task("runyard_common", ANSIBLE_CHECK)
    return task["vars"]["runyard_common_ansible_min_version"]


def ansible_env(tmp_path: Path) -> dict[str, str]:
    """The tools' environment: this venv's bin first on PATH (ansible-lint calls ansible-playbook and
    ansible-config), no ansible.cfg of the machine or its user, and everything the tools write (Ansible's home and
    temporary files, ansible-lint's cache) under tmp_path."""
    home = tmp_path / "ansible-home"
    home.mkdir()
    (home / "ansible.cfg").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "RUNYARD_"))}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", ANSIBLE_CONFIG=str(home / "ansible.cfg"),
               ANSIBLE_HOME=str(home), ANSIBLE_LOCAL_TEMP=str(home / "tmp"),
               ANSIBLE_REMOTE_TEMP=str(home / "remote-tmp"), XDG_CACHE_HOME=str(tmp_path / "cache"),
               ANSIBLE_NOCOLOR="1", NO_COLOR="1")
    return env


def run_tool(argv: list[str], tmp_path: Path, timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ANSIBLE, env=ansible_env(tmp_path), capture_output=True, text=True,
                          timeout=timeout_s)


def test_the_tools_are_the_pinned_dev_dependencies() -> None:
    """The venv runs the versions pyproject.toml pins, and that ansible-core is one the roles accept."""
    assert importlib.metadata.version("ansible-core") == pinned("ansible-core")
    assert importlib.metadata.version("ansible-lint") == pinned("ansible-lint")
    assert version_tuple(pinned("ansible-core")) >= version_tuple(min_ansible_version())


def test_the_roles_check_the_ansible_version_first() -> None:
    """The first task of runyard_common, which both plays run first (a dependency of both roles), checks the
    controller's Ansible against the version every role's meta and the README name."""
    first = load_yaml(ROLES / "runyard_common" / "tasks" / "main.yml")[0]
    assert first["name"] == ANSIBLE_CHECK
    assert "ansible_version.full is version(runyard_common_ansible_min_version, '>=')" in \
        as_list(first["ansible.builtin.assert"]["that"])
    for role in role_dirs():
        assert load_yaml(role / "meta" / "main.yml")["galaxy_info"]["min_ansible_version"] == min_ansible_version()
    assert f"Ansible (ansible-core) {min_ansible_version()} or newer" in (ANSIBLE / "README.md").read_text()


@pytest.mark.timeout(300)
def test_site_passes_the_syntax_check(tmp_path: Path) -> None:
    done = run_tool([tool("ansible-playbook"), "--syntax-check", "-i", "inventory.example.ini", "site.yml"],
                    tmp_path, timeout_s=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def ignored_findings() -> set[tuple[str, str]]:
    """(file, rule) pairs that .ansible-lint-ignore silences."""
    lines = (ANSIBLE / ".ansible-lint-ignore").read_text().splitlines()
    return {(line.split()[0], line.split()[1]) for line in lines if line.strip() and not line.startswith("#")}


@pytest.mark.timeout(600)
def test_roles_pass_ansible_lint_production_profile(tmp_path: Path) -> None:
    """ansible-lint with the strictest profile, no rule skipped; the one finding silenced (for one file, the
    shared variables' names; .ansible-lint says why) is the only one it reports, even as a warning."""
    settings = load_yaml(ANSIBLE / ".ansible-lint")
    assert settings["profile"] == "production"
    assert not settings.get("skip_list") and not settings.get("warn_list") and not settings.get("enable_list")
    assert ignored_findings() == {("roles/runyard_common/defaults/main.yml", "var-naming[no-role-prefix]")}
    done = run_tool([tool("ansible-lint"), "--format", "codeclimate"], tmp_path, timeout_s=540)
    assert done.stdout.startswith("["), done.stdout[-3000:] + done.stderr[-3000:]   # the findings, as JSON
    findings = [(f["location"]["path"], f["location"]["positions"]["begin"]["line"], f["check_name"],
                 f["description"]) for f in json.loads(done.stdout)]
    assert [f for f in findings if (f[0], f[2]) not in ignored_findings()] == []
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Profile 'production' was required, and it passed" in done.stderr, done.stderr[-3000:]


def play_recap(output: str) -> dict[str, int]:
    """localhost's counts in the PLAY RECAP line: ok, changed, failed, ..."""
    line = re.search(r"^localhost\s+:\s+(.*)$", output, flags=re.M)
    assert line, output[-3000:]
    return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", line[1])}


def task_results(output: str) -> dict[str, set[str]]:
    """What each task (and handler) did on localhost, over both plays: {"role : task": {"ok", "skipping", ...}}."""
    results: dict[str, set[str]] = {}
    current = None
    for line in output.splitlines():
        header = re.match(r"^(?:TASK|RUNNING HANDLER) \[(.*?)\] \**$", line)
        if header:
            current = results.setdefault(header[1], set())
        elif current is not None and (status := re.match(r"^(ok|changed|skipping|failed|fatal):", line)):
            current.add(status[1])
    return results


def localhost_inventory(tmp_path: Path, root: Path, **more: str) -> Path:
    """localhost as head and agent, run by this interpreter without become, with every path the roles write under
    root, and an account and group name no host has."""
    name = "runyard-check-" + uuid.uuid4().hex[:8]
    variables = dict(
        ansible_connection="local", ansible_python_interpreter=sys.executable, ansible_become="false",
        runyard_python=sys.executable, runyard_python_packages="[]", runyard_user=name, runyard_group=name,
        runyard_user_home=f"{root}/var/lib/runyard", runyard_venv=f"{root}/opt/runyard/venv",
        runyard_config_dir=f"{root}/etc/runyard", runyard_unit_dir=f"{root}/etc/systemd/system",
        runyard_head_data_dir=f"{root}/var/lib/runyard", runyard_agent_data_dir=f"{root}/var/lib/runyard-agent",
        **more)
    inventory = tmp_path / "inventory.ini"
    inventory.write_text("[runyard_head]\nlocalhost\n\n[runyard_agents]\nlocalhost\n\n[all:vars]\n"
                         + "".join(f"{key}={value}\n" for key, value in variables.items()))
    return inventory


@pytest.mark.timeout(300)
def test_an_older_ansible_is_refused_before_anything_else(tmp_path: Path) -> None:
    """The real check with a minimum above the running version (extra vars win over the task's): the play stops
    at its first task with the message, and no other task runs."""
    root = tmp_path / "root"
    root.mkdir()
    inventory = localhost_inventory(tmp_path, root)
    done = run_tool([tool("ansible-playbook"), "--check", "-i", str(inventory), "site.yml",
                     "-e", "runyard_common_ansible_min_version=99.0"], tmp_path, timeout_s=240)
    assert done.returncode != 0
    running = importlib.metadata.version("ansible-core")
    assert f"These roles need Ansible (ansible-core) 99.0 or newer on the controller, which runs {running}" in \
        done.stdout, done.stdout[-3000:]
    ran = task_results(done.stdout)
    assert ran.pop(f"runyard_common : {ANSIBLE_CHECK}") == {"fatal"}
    assert set(ran) <= {"Gathering Facts"}, sorted(ran)
    assert play_recap(done.stdout)["failed"] == 1
    assert list(root.iterdir()) == []


ACCOUNT_FILES = [Path("/etc/passwd"), Path("/etc/group")]


def identity(path: Path) -> tuple[int, int, int]:
    """What changes when a file is written or replaced (useradd replaces /etc/passwd): inode, size, mtime."""
    found = path.stat()
    return found.st_ino, found.st_size, found.st_mtime_ns


@pytest.mark.timeout(900)
def test_check_mode_of_a_first_deploy_runs_through_and_changes_nothing(tmp_path: Path) -> None:
    """`ansible-playbook --check --diff site.yml` on a host where nothing was deployed: localhost as head and
    agent, every path of the roles under an empty temporary root, a wheel of the project's version. The play runs
    through, reports what it would change (the diff shows the files it would write, all under the root), and
    leaves the root empty and the host without the account it would create. What needs a service that would have
    been started (waiting for the head, its CA, the join token, starts and restarts) is skipped."""
    root, dist = tmp_path / "root", tmp_path / "dist"
    root.mkdir()
    dist.mkdir()
    wheel = dist / f"runyard-{PROJECT_VERSION}-py3-none-any.whl"
    wheel.write_bytes(b"not a real wheel: --check copies nothing\n")
    inventory = localhost_inventory(tmp_path, root, runyard_package=str(wheel))
    account = re.search(r"^runyard_user=(.*)$", inventory.read_text(), flags=re.M)[1]
    accounts_before = [identity(accounts_file) for accounts_file in ACCOUNT_FILES]
    done = run_tool([tool("ansible-playbook"), "--check", "--diff", "-i", str(inventory), "site.yml"],
                    tmp_path, timeout_s=840)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-5000:]
    recap = play_recap(done.stdout)
    assert recap["failed"] == recap["unreachable"] == 0 and recap["changed"] > 0, recap

    ran = task_results(done.stdout)
    for task in (f"runyard_common : {ANSIBLE_CHECK}", f"runyard_common : {WHEEL_CHECK}",
                 "runyard_common : Refuse an interpreter older than 3.11", "runyard_head : Check the head's variables",
                 "runyard_agent : Check that no account or group of the host has a uid or gid of the run uid range"):
        assert ran[task] == {"ok"}, (task, ran.get(task))
    for task in ("runyard_common : Create the runyard user", "runyard_common : Create the virtualenv",
                 "runyard_common : Copy the wheel to the host", "runyard_head : Write head.toml",
                 "runyard_head : Install the systemd unit", "runyard_agent : Write agent.toml",
                 "runyard_agent : Install the systemd unit"):
        assert ran[task] == {"changed"}, (task, ran.get(task))
    for task in ("runyard_head : Enable and start runyard-head", "runyard_head : Restart runyard-head",
                 "runyard_head : Wait for the cluster CA", "runyard_head : Read the cluster CA's fingerprint",
                 "runyard_common : Check the installed Runyard version", "runyard_agent : Create a join token on the head",
                 "runyard_agent : Read the cluster CA on the head", "runyard_agent : Write the cluster CA",
                 "runyard_agent : Enable and start runyard-agent", "runyard_agent : Restart runyard-agent"):
        assert ran[task] == {"skipping"}, (task, ran.get(task))

    # The diff: the directories the play would make and what it would write in its files, all under the root.
    made = set(re.findall(r'^ +"path": "(.*)",$', done.stdout, flags=re.M))
    assert {f"{root}/etc/runyard", f"{root}/var/lib/runyard", f"{root}/var/lib/runyard-agent/home"} <= made, made
    assert all(path.startswith(f"{root}/") for path in made), sorted(made)
    assert f'+data_dir = "{root}/var/lib/runyard"' in done.stdout
    assert f'+data_dir = "{root}/var/lib/runyard-agent"' in done.stdout
    assert f"+ExecStart={root}/opt/runyard/venv/bin/runyard-agent --config {root}/etc/runyard/agent.toml" in done.stdout

    # And nothing was done: the root is as empty as before, the account and its group were not created.
    assert sorted(root.rglob("*")) == []
    assert [identity(accounts_file) for accounts_file in ACCOUNT_FILES] == accounts_before
    with pytest.raises(KeyError):
        pwd.getpwnam(account)
    with pytest.raises(KeyError):
        grp.getgrnam(account)
