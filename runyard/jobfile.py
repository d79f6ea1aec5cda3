"""The job file (a subset of Azure ML v2 command-job YAML) and the `runyard submit` flags, turned into a RunRequest.

`load_job_file` reads and validates one job file; `build_request` merges it with the flags into the RunRequest the
CLI sends. Every fault becomes one `UsageError` (a `JobFileError` carrying the YAML path when the file is at fault)
whose text is the one line the user sees. Keys of Azure's schema that Runyard does not support yet are refused by
name, never ignored.

`environment:` is Azure's: a mapping with `conda_file` (relative to the job file's directory) and optionally
`image`, or a registered environment `azureml:NAME:VERSION` / `azureml:NAME@latest` (`runyard:` works too); or
Runyard's short form `{pip: [lines], requirements: FILE}` (FILE in the code directory). A conda file's `-r` lines
are relative to the code directory. `envspec` normalizes what they say; `--env NAME[:VERSION|@latest]` and
`--conda-file FILE` replace the job file's environment.

This module only reads the job file: it must not talk to the head, snapshot the directory or print.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import typing
from collections.abc import Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo
from pydantic import field_validator, model_validator

from runyard import envspec, priorities
from runyard.envspec import EnvSpec
from runyard.runrequest import DEFAULT_MEMORY_BYTES, CliOptions, RunRequest, env_items
from runyard.errors import JobFileError, UsageError
from runyard.units import parse_size

if TYPE_CHECKING:
    import yaml

MAX_MEMORY_BYTES = 64 * 1024**4
MAX_TIMEOUT_S = 30 * 24 * 3600

# Keys of Azure ML's job schemas (command, sweep, pipeline, component) that Runyard refuses by name, per mapping.
_NOT_YET: dict[tuple[str, ...], frozenset[str]] = {
    (): frozenset({
        "outputs", "identity", "services", "properties", "is_deterministic",
        "component", "jobs", "settings", "sampling_algorithm", "search_space", "objective", "trial",
        "early_termination",
    }),
    ("resources",): frozenset({"instance_type", "shm_size", "docker_args", "locations"}),
    ("limits",): frozenset({"max_total_trials", "max_concurrent_trials", "trial_timeout"}),
    ("queue_settings",): frozenset({"job_tier"}),
    ("environment",): frozenset({"build", "inference_config", "os_type"}),
}
_DISTRIBUTIONS_NOT_YET = frozenset({"ray"})
_LITERAL_INPUT_TYPES = frozenset({"string", "integer", "number", "boolean"})
_EXPRESSION = re.compile(r"\$\{\{(.*?)\}\}")
_T = TypeVar("_T")


class Priority(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


def _kind(value: object) -> str:
    return {type(None): "null", dict: "a mapping", list: "a list"}.get(type(value), type(value).__name__)


def scalar_text(value: object) -> str:
    """A tag, environment variable or input value as text; booleans lower-case, as YAML and Azure write them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise ValueError(f"must be a string, number or boolean, not {_kind(value)}")


def _input_value(value: object) -> str | int | float | bool:
    if isinstance(value, Mapping):
        kind = value.get("type")
        if isinstance(kind, str) and kind not in _LITERAL_INPUT_TYPES:
            raise ValueError(f"inputs of type {kind} are not supported yet by Runyard; give a literal value")
        raise ValueError("the {type:, default:} / {value:} form is not supported yet by Runyard; "
                         "write the value itself, e.g. lr: 0.01")
    if isinstance(value, str | int | float):     # bool is an int
        return value
    raise ValueError(f"must be a string, number or boolean, not {_kind(value)}")


def _size(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"must be a size such as 16G or a number of bytes, not {_kind(value)}")
    n_bytes = parse_size(value)
    if n_bytes <= 0:
        raise ValueError("must be > 0")
    if n_bytes > MAX_MEMORY_BYTES:
        raise ValueError(f"must be at most 64T, got {value}")
    return n_bytes


def _compute(value: object) -> object:
    if isinstance(value, str):
        value = value.removeprefix("azureml:")
        if not value.strip():
            raise ValueError("must not be empty")
    return value


def _code(value: object) -> object:
    if isinstance(value, str) and (value.startswith("azureml:") or "://" in value):
        raise ValueError("only a local directory is supported by Runyard, not a code asset or URL")
    return value


_REFERENCE = "$reference"     # where a string `environment:` goes in the Environment section


def _reference_form(value: object) -> object:
    """A registered environment's reference (a string) as the Environment section's `$reference`."""
    if isinstance(value, str):
        if not value.startswith(envspec.PREFIXES):
            raise ValueError("a registered environment is azureml:NAME:VERSION or azureml:NAME@latest; an inline one "
                             "is a mapping such as {conda_file: env.yml}")
        envspec.parse_ref(value)
        return {_REFERENCE: value}
    if isinstance(value, Mapping) and _REFERENCE in value:
        raise ValueError(f"{_REFERENCE} is not a key of an environment")
    return value


Text = Annotated[str, BeforeValidator(scalar_text)]
InputValue = Annotated[str | int | float | bool, BeforeValidator(_input_value)]
Size = Annotated[int, BeforeValidator(_size)]


class Section(BaseModel):
    """A mapping of the job file: unknown keys refused, no type coercion, an empty (null) value means absent."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _null_means_absent(cls, data: object) -> object:
        if isinstance(data, Mapping):
            return {key: value for key, value in data.items() if value is not None}
        return data


class Properties(Section):
    cpus: float | None = Field(None, gt=0, le=4096)
    memory: Size | None = None
    gpus: int | None = Field(None, ge=0, le=64)
    gpu_model: str | None = Field(None, min_length=1, max_length=128)
    gpu_memory: Size | None = None
    node_labels: dict[str, Text] = {}


class Resources(Section):
    instance_count: int | None = Field(None, ge=1, le=1024)
    properties: Properties = Properties()


class Distribution(Section):
    """`distribution:`: how a run's processes form one job: PyTorch's or MPI's (processes per node), or
    TensorFlow's (workers and parameter servers, spread over the nodes)."""

    type: Literal["pytorch", "mpi", "tensorflow"]
    process_count_per_instance: int | None = Field(None, ge=1, le=256)
    worker_count: int | None = Field(None, ge=1, le=4096)
    parameter_server_count: int | None = Field(None, ge=0, le=4096)

    @model_validator(mode="after")
    def _counts_of_its_type(self) -> Distribution:
        if self.type == "tensorflow":
            if self.worker_count is None:
                raise ValueError("type: tensorflow needs worker_count")
            if self.process_count_per_instance is not None:
                raise ValueError("type: tensorflow takes worker_count and parameter_server_count, "
                                 "not process_count_per_instance")
        elif self.worker_count is not None or self.parameter_server_count is not None:
            raise ValueError(f"worker_count and parameter_server_count are for type: tensorflow, not {self.type}")
        return self


class Limits(Section):
    timeout: float | None = Field(None, gt=0, le=MAX_TIMEOUT_S)


class QueueSettings(Section):
    priority: Annotated[Priority, Field(strict=False)] | None = None


class Retry(Section):
    max_retries: int | None = Field(None, ge=0, le=100)


class Environment(Section):
    """`environment:`: a registered environment's reference, Azure's inline form, or Runyard's short form."""

    reference: str | None = Field(None, alias=_REFERENCE)
    conda_file: str | None = Field(None, min_length=1)
    image: str | None = Field(None, min_length=1)
    pip: list[str] | None = None
    requirements: str | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one_form(self) -> Environment:
        if self.conda_file is not None and (self.pip is not None or self.requirements is not None):
            raise ValueError("give conda_file, or pip and requirements, not both")
        if self.reference is None and not (self.conda_file or self.image or self.pip is not None or self.requirements):
            raise ValueError("must name a conda_file (and an image), or pip and requirements")
        return self


class JobFile(Section):
    """A validated job file. `inputs` comes before `command` so the command's references can be checked."""

    schema_url: Any = Field(None, alias="$schema")
    type: Literal["command"] = "command"
    name: Any = None
    description: str | None = None
    experiment_name: str | None = Field(None, min_length=1)
    display_name: str | None = None
    tags: dict[str, Text] = {}
    code: Annotated[str | None, BeforeValidator(_code), Field(min_length=1)] = None
    inputs: dict[str, InputValue] = {}
    command: str | None = None
    environment: Annotated[Environment | None, BeforeValidator(_reference_form)] = None
    environment_variables: dict[str, Text] = {}
    compute: Annotated[str | None, BeforeValidator(_compute)] = None
    resources: Resources = Resources()
    distribution: Distribution | None = None
    limits: Limits = Limits()
    queue_settings: QueueSettings = QueueSettings()
    retry: Retry = Retry()

    @field_validator("command")
    @classmethod
    def _command_references(cls, command: str | None, info: ValidationInfo) -> str | None:
        if command is not None:
            if not command.strip():
                raise ValueError("must not be empty")
            render_command(command, info.data.get("inputs", {}))
        return command

    def rendered_command(self) -> str | None:
        return None if self.command is None else render_command(self.command, self.inputs)


def render_command(command: str, inputs: Mapping[str, object]) -> str:
    """Replace each `${{inputs.NAME}}` with the input's value, as plain text like Azure (no shell quoting)."""
    if "$[[" in command:
        raise ValueError("$[[...]] optional arguments are not supported yet by Runyard")
    if "${{" in _EXPRESSION.sub("", command):
        raise ValueError("a ${{ expression is not closed with }}")

    def substitute(match: re.Match[str]) -> str:
        expression = match.group(1).strip()
        head, _, name = expression.partition(".")
        if head != "inputs":
            raise ValueError("${{" + expression + "}} is not supported yet by Runyard; only ${{inputs.NAME}} is")
        if name not in inputs:
            raise ValueError("${{inputs." + name + "}} is not defined in inputs")
        return scalar_text(inputs[name])

    return _EXPRESSION.sub(substitute, command)


@functools.cache
def _loader() -> type[yaml.SafeLoader]:
    """Safe YAML that keeps dates as the text written and refuses a key given twice in one mapping. Made (and yaml
    imported) on first use: `runyard submit` without a job file reads no YAML."""
    import yaml

    class _Loader(yaml.SafeLoader):
        def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
            seen: set[str] = set()
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.value != "<<":
                    if key_node.value in seen:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"key {key_node.value!r} is given twice", key_node.start_mark)
                    seen.add(key_node.value)
            return super().construct_mapping(node, deep=deep)

    _Loader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    return _Loader


def read_mapping(path: Path, source: str, what: str = "job file",
                 example: str = "`command: python train.py`") -> dict[Any, Any]:
    """The YAML mapping in `path` (safe, dates as text, no key twice); a fault is one line naming `source`."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        why = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
        raise UsageError(f"cannot read {what} {source}: {why}") from None
    import yaml

    try:
        data = yaml.load(text, Loader=_loader())  # a SafeLoader
    except yaml.MarkedYAMLError as err:
        line = err.problem_mark.line + 1 if err.problem_mark else 0
        raise JobFileError(source, "", f"invalid YAML at line {line}: {err.problem or err.context}") from None
    except yaml.YAMLError as err:
        raise JobFileError(source, "", f"invalid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(data, dict):
        found = "empty" if data is None else f"{_kind(data)}, not a mapping"
        raise JobFileError(source, "", f"is {found}; a {what} is a mapping such as {example}")
    return data


def conda_spec(path: Path, *, code_dir: Path, image: str = "") -> EnvSpec:
    """The environment of the conda file at `path` (and `image`), its `-r` lines relative to `code_dir`."""
    data = read_mapping(path, str(path), "conda file", "`dependencies: [python=3.11, {pip: [numpy]}]`")
    return envspec.from_conda(data, source=str(path), code_dir=code_dir, image=image)


def _parse_scalar(text: str) -> object:
    """A `--set` value as a YAML scalar (`2` an int, `true` a bool); anything else stays the text given."""
    if not text:
        return ""
    import yaml

    try:
        value = yaml.load(text, Loader=_loader())
    except yaml.YAMLError:
        return text
    return value if value is None or isinstance(value, str | int | float | bool) else text


def _apply_set(raw: dict[Any, Any], item: str) -> None:
    key, sep, text = item.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise UsageError(f"--set {item!r}: expected key=value, e.g. resources.properties.gpus=2")
    target = raw
    for depth, part in enumerate(parts[:-1]):
        if target.get(part) is None:
            target[part] = {}
        if not isinstance(target[part], dict):
            raise UsageError(f"--set {item!r}: {'.'.join(parts[:depth + 1])} is not a mapping")
        target = target[part]
    target[parts[-1]] = _parse_scalar(text)


def _refuse_not_yet(raw: Mapping[Any, Any], source: str) -> None:
    kind = raw.get("type")
    if isinstance(kind, str) and kind != "command":
        raise JobFileError(source, "type", f"{kind} jobs are not supported yet by Runyard; only type: command")
    distribution = raw.get("distribution")
    spread = distribution.get("type") if isinstance(distribution, Mapping) else None
    if isinstance(spread, str) and spread in _DISTRIBUTIONS_NOT_YET:
        raise JobFileError(source, "distribution.type",
                           f"{spread} distribution is not supported yet by Runyard; only type: pytorch, mpi or tensorflow")
    for prefix, keys in _NOT_YET.items():
        section: object = raw
        for part in prefix:
            section = section.get(part) if isinstance(section, Mapping) else None
        if isinstance(section, Mapping):
            for key in section:
                if key in keys:
                    raise JobFileError(source, ".".join((*prefix, key)), "not supported yet by Runyard")


def _dotted(loc: Sequence[int | str]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _number(value: object) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


_MESSAGES = {
    "extra_forbidden": "unknown key", "missing": "is required", "string_type": "must be a string",
    "string_too_short": "must not be empty", "too_short": "must not be empty",
    "int_type": "must be a whole number", "float_type": "must be a number", "finite_number": "must be a finite number",
    "bool_type": "must be true or false", "dict_type": "must be a mapping", "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping", "list_type": "must be a list",
}
_BOUNDS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def _model_at(model: type[BaseModel], loc: Sequence[int | str]) -> type[BaseModel] | None:
    """The section (model) that holds the mapping at `loc` of a job file, None where no section is (a free map)."""
    current: object = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field_info = current.model_fields.get(str(part)) if isinstance(part, str) else None
        if field_info is None:
            return None
        current = _section_in(field_info.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _section_in(annotation: object) -> object:
    """The first model an annotation names (`Resources | None` -> Resources); None if it names none."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for inner in typing.get_args(annotation):
        found = _section_in(inner)
        if found is not None:
            return found
    return None


def _closest_key(loc: Sequence[int | str]) -> str:
    """`; did you mean command?` for an unknown key close to one its section has, else ''."""
    section = _model_at(JobFile, loc[:-1])
    if section is None or not loc:
        return ""
    import difflib

    known = [info.alias or name for name, info in section.model_fields.items()]
    close = difflib.get_close_matches(str(loc[-1]), known, n=1)
    return f"; did you mean {close[0]}?" if close else ""


def explain(error: ValidationError) -> tuple[str, str]:
    """The first fault of a validation as (YAML path with dots, one plain line)."""
    first = error.errors(include_url=False)[0]
    loc, kind, ctx = list(first["loc"]), first["type"], first.get("ctx", {})
    if kind == "invalid_key" or loc[-1:] == ["[key]"]:  # the key itself is at fault: name it, not an index
        loc = [*loc[:-1], str(loc[-1])] if kind == "invalid_key" else [*loc[:-2], str(loc[-2])]
        message = "key must be a string; quote it"
    elif kind == "extra_forbidden":
        message = _MESSAGES[kind] + _closest_key(loc)
    elif kind in _MESSAGES:
        message = _MESSAGES[kind]
    elif bound := _BOUNDS.keys() & ctx.keys():
        name = bound.pop()
        message = f"must be {_BOUNDS[name]} {_number(ctx[name])}"
    elif kind in ("literal_error", "enum"):
        message = f"must be one of {str(ctx['expected']).replace(chr(39), '')}"
    elif kind == "value_error":
        message = str(ctx["error"])
    else:
        message = first["msg"]
    return _dotted(loc), " ".join(message.split())


def load_job_file(path: Path, sets: Sequence[str] = ()) -> JobFile:
    """Read, override (`--set key=value`, applied to the YAML before validation) and validate a job file."""
    source = str(path)
    raw = read_mapping(path, source)
    for item in sets:
        _apply_set(raw, item)
    _refuse_not_yet(raw, source)
    try:
        return JobFile.model_validate(raw)
    except ValidationError as err:
        where, message = explain(err)
        flag = _set_of(sets, where)
        if flag is not None:    # the flag put the fault there, not the file: name it
            raise UsageError(f"--set {flag}: " + (message if flag.partition("=")[0].strip() == where
                                                    else f"{where}: {message}")) from None
        raise JobFileError(source, where, message) from None


def _set_of(sets: Sequence[str], where: str) -> str | None:
    """The last `--set` that wrote at or under the YAML path `where` (or above it), if any."""
    for item in reversed(sets):
        key = item.partition("=")[0].strip()
        if where and (key == where or key.startswith(where + ".") or where.startswith(key + ".")
                      or where.startswith(key + "[")):
            return item
    return None


_FLAGS = {
    "experiment_name": "--experiment", "display_name": "--name", "compute": "--compute",
    "resources.properties.cpus": "--cpus", "resources.properties.memory": "--memory",
    "resources.properties.gpus": "--gpus", "resources.instance_count": "--nodes",
    "distribution.type": "--distribution", "distribution.process_count_per_instance": "--procs-per-node",
    "queue_settings.priority": "--priority", "limits.timeout": "--timeout",
}


def _env_ref(items: Sequence[str]) -> str:
    """The registered environment an `--env` item without `=` names ('' when none does), as NAME:VERSION or
    NAME@latest."""
    refs = [item for item in items if "=" not in item]
    if len(refs) > 1:
        raise UsageError(f"--env names {len(refs)} environments ({', '.join(refs)}); a run has one")
    if not refs:
        return ""
    try:
        return str(envspec.parse_ref(refs[0]))
    except ValueError as err:
        raise UsageError(f"--env {refs[0]!r}: {err}; a variable is KEY=VALUE") from None


def _is_integer(text: str | None) -> bool:
    return text is not None and text.strip().lstrip("+-").isdigit()


def _validate_flags(options: CliOptions) -> JobFile:
    """The flags as a job file of their own, so they get the job file's checks; a fault names the flag."""
    raw = {
        "experiment_name": options.experiment, "display_name": options.display_name, "compute": options.compute,
        "environment_variables": env_items(options.env),
        "resources": {"instance_count": options.nodes, "properties": {
            "cpus": options.cpus, "memory": options.memory, "gpus": options.gpus}},
        "limits": {"timeout": options.timeout_s},
        "distribution": None if options.distribution is None and options.procs_per_node is None else {
            "type": options.distribution or "pytorch", "process_count_per_instance": options.procs_per_node},
        "queue_settings": {"priority": None if _is_integer(options.priority) else options.priority},
    }
    try:
        return JobFile.model_validate(raw)
    except ValidationError as err:
        where, message = explain(err)
        raise UsageError(f"{_FLAGS.get(where, where)}: {message}") from None


def _code_dir(options: CliOptions, job: JobFile) -> Path:
    if options.directory is not None:
        directory = Path(os.path.abspath(options.directory.expanduser()))
        if not directory.is_dir():
            raise UsageError(f"{options.directory} is not a directory")
        return directory
    if options.job_file is None:
        return Path.cwd()
    base = Path(os.path.abspath(options.job_file)).parent
    if job.code is None:
        return base
    directory = Path(os.path.normpath(base / job.code))
    if not directory.is_dir():
        raise JobFileError(str(options.job_file), "code", f"{directory} is not a directory")
    return directory


def _argv(options: CliOptions, job: JobFile) -> tuple[str, ...]:
    if options.command:
        return tuple(options.command)
    command = job.rendered_command()
    if command is not None:
        return ("/bin/sh", "-c", command)
    raise UsageError("no command: give one after -- or set command: in the job file")


def _environment(options: CliOptions, job: JobFile, code_dir: Path) -> tuple[EnvSpec, str]:
    """(spec, reference) of the run's environment: the flags' if they name one, else the job file's."""
    ref = _env_ref(options.env)
    if ref and options.conda_file is not None:
        raise UsageError("give --env NAME or --conda-file FILE, not both")
    if ref:
        return EnvSpec(), ref
    if options.conda_file is not None:
        return conda_spec(options.conda_file, code_dir=code_dir), ""
    env = job.environment
    if env is None:
        return EnvSpec(), ""
    if env.reference is not None:
        return EnvSpec(), str(envspec.parse_ref(env.reference))
    assert options.job_file is not None
    source, image = str(options.job_file), env.image or ""
    if env.conda_file is not None:
        path = Path(os.path.normpath(options.job_file.parent / env.conda_file))
        return conda_spec(path, code_dir=code_dir, image=image), ""
    lines = [(f"environment.pip[{index}]", line) for index, line in enumerate(env.pip or ())]
    if env.requirements:
        lines.append(("environment.requirements", f"-r {env.requirements}"))
    spec = dataclasses.replace(envspec.pip_lines(lines, source=source, code_dir=code_dir), image=image)
    problem = envspec.check(spec)
    if problem:
        raise JobFileError(source, "environment", problem)
    return spec, ""


def _first(*values: _T | None, default: _T) -> _T:
    return next((value for value in values if value is not None), default)


def build_request(options: CliOptions) -> RunRequest:
    """Merge the job file (if any) and the flags; flags win. Raises UsageError / JobFileError."""
    if options.sets and options.job_file is None:
        raise UsageError("--set needs a job file: give one with -f job.yml")
    flags = _validate_flags(options)
    job = load_job_file(options.job_file, options.sets) if options.job_file is not None else JobFile()
    code_dir = _code_dir(options, job)
    env, env_ref = _environment(options, job, code_dir)
    asked, given = flags.resources.properties, job.resources.properties
    return RunRequest(
        code_dir=code_dir,
        argv=_argv(options, job),
        experiment=_first(flags.experiment_name, job.experiment_name, default=code_dir.name.lower() or "default"),
        display_name=_first(flags.display_name, job.display_name, default=""),
        tags=dict(job.tags),
        environment={**job.environment_variables, **flags.environment_variables},
        compute=_first(flags.compute, job.compute, default="default"),
        cpus=_first(asked.cpus, given.cpus, default=1.0),
        memory_bytes=_first(asked.memory, given.memory, default=DEFAULT_MEMORY_BYTES),
        gpus=_first(asked.gpus, given.gpus, default=0),
        instance_count=_first(flags.resources.instance_count, job.resources.instance_count, default=1),
        timeout_s=_first(flags.limits.timeout, job.limits.timeout, default=0.0),
        priority=priorities.parse(_first(options.priority, job.queue_settings.priority, default=Priority.MEDIUM)),
        gpu_model=_first(given.gpu_model, default=""),
        gpu_memory_bytes=_first(given.gpu_memory, default=0),
        node_labels=dict(given.node_labels),
        max_retries=job.retry.max_retries,
        env=env,
        env_ref=env_ref,
        **_distribution(flags.distribution, job.distribution),
    )


def _distribution(flags: Distribution | None, job: Distribution | None) -> dict[str, Any]:
    """The run's distribution: the flags' if given, else the job file's; none when neither says."""
    chosen = flags or job
    if chosen is None:
        return {}
    count = _first(flags.process_count_per_instance if flags else None,
                   job.process_count_per_instance if job else None, default=1)
    if chosen.type == "tensorflow":
        return {"distribution": chosen.type, "workers": chosen.worker_count or 1,
                "parameter_servers": chosen.parameter_server_count or 0}
    return {"distribution": chosen.type, "procs_per_node": count}
