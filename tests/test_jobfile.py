"""The job file and the `runyard submit` flags: what loads, what is refused with which YAML path, what runs."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from runyard.envfile import NewEnvironment, load_environment_file
from runyard.envspec import EnvSpec
from runyard.errors import JobFileError, UsageError
from runyard.jobfile import build_request, load_job_file
from runyard.runrequest import CliOptions, RunRequest, plain_request

GiB = 1024**3

FULL_EXAMPLE = """\
type: command
experiment_name: mnist
display_name: baseline
tags: {team: vision}
code: ./src
command: python train.py --lr ${{inputs.lr}}
inputs: {lr: 0.01}
environment_variables: {OMP_NUM_THREADS: "4"}
compute: default
resources: {instance_count: 1, properties: {cpus: 4, memory: 16G, gpus: 1}}
limits: {timeout: 7200}
queue_settings: {priority: medium}
"""


def write_job(directory: Path, text: str, name: str = "job.yml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def assert_one_plain_line(message: str) -> None:
    assert "\n" not in message
    assert "pydantic" not in message.lower()
    assert "https://" not in message
    assert "Input should" not in message


def job_error(tmp_path: Path, text: str, sets: tuple[str, ...] = ()) -> JobFileError:
    with pytest.raises(JobFileError) as caught:
        load_job_file(write_job(tmp_path, text), sets)
    assert_one_plain_line(str(caught.value))
    return caught.value


def test_full_example_builds_the_expected_request(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    job = write_job(tmp_path, FULL_EXAMPLE)

    request = build_request(CliOptions(job_file=job))

    assert request == RunRequest(
        code_dir=tmp_path / "src",
        argv=("/bin/sh", "-c", "python train.py --lr 0.01"),
        experiment="mnist",
        display_name="baseline",
        tags={"team": "vision"},
        environment={"OMP_NUM_THREADS": "4"},
        compute="default",
        cpus=4.0,
        memory_bytes=16 * GiB,
        gpus=1,
        instance_count=1,
        timeout_s=7200.0,
        priority=200,
    )


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("environment: {build: {path: ./docker}}", "environment.build"),
        ("environment: {image: x, os_type: windows}", "environment.os_type"),
        ("outputs: {model: {type: uri_folder}}", "outputs"),
        ("identity: {type: managed}", "identity"),
        ("services: {jupyter: {type: jupyter_lab}}", "services"),
        ("properties: {a: b}", "properties"),
        ("is_deterministic: true", "is_deterministic"),
        ("component: ./c.yml", "component"),
        ("jobs: {train: {}}", "jobs"),
        ("settings: {default_compute: x}", "settings"),
        ("sampling_algorithm: random", "sampling_algorithm"),
        ("search_space: {lr: {type: choice}}", "search_space"),
        ("objective: {goal: minimize}", "objective"),
        ("trial: ./trial.yml", "trial"),
        ("early_termination: {type: bandit}", "early_termination"),
        ("resources: {instance_type: Standard_NC6}", "resources.instance_type"),
        ("resources: {shm_size: 2g}", "resources.shm_size"),
        ("resources: {docker_args: --ipc=host}", "resources.docker_args"),
        ("resources: {locations: [westeurope]}", "resources.locations"),
        ("limits: {max_total_trials: 10}", "limits.max_total_trials"),
        ("limits: {max_concurrent_trials: 2}", "limits.max_concurrent_trials"),
        ("limits: {trial_timeout: 60}", "limits.trial_timeout"),
        ("queue_settings: {job_tier: spot}", "queue_settings.job_tier"),
    ],
)
def test_unsupported_azure_keys_are_refused_by_name(tmp_path: Path, text: str, path: str) -> None:
    error = job_error(tmp_path, f"command: python train.py\n{text}\n")

    assert error.path == path
    assert str(error).endswith(f"job.yml: {path}: not supported yet by Runyard")


@pytest.mark.parametrize(
    ("text", "path", "message"),
    [
        ("foo: 1", "foo", "unknown key"),
        ("resources: {properties: {gpuz: 1}}", "resources.properties.gpuz", "unknown key; did you mean gpus?"),
        ("comand: python x.py", "comand", "unknown key; did you mean command?"),
        ("limits: {timeout: 60, retries: 2}", "limits.retries", "unknown key"),
        ("resources: {properties: {gpus: -1}}", "resources.properties.gpus", "must be >= 0"),
        ("resources: {properties: {gpus: 65}}", "resources.properties.gpus", "must be <= 64"),
        ("resources: {properties: {gpus: two}}", "resources.properties.gpus", "must be a whole number"),
        ("resources: {properties: {gpus: true}}", "resources.properties.gpus", "must be a whole number"),
        ("resources: {properties: {gpus: 1.5}}", "resources.properties.gpus", "must be a whole number"),
        ("resources: {properties: {cpus: 0}}", "resources.properties.cpus", "must be > 0"),
        ("resources: {properties: {cpus: 5000}}", "resources.properties.cpus", "must be <= 4096"),
        ("resources: {properties: {cpus: '4'}}", "resources.properties.cpus", "must be a number"),
        ("resources: {properties: {memory: 100P}}", "resources.properties.memory", "must be at most 64T"),
        ("resources: {properties: {memory: lots}}", "resources.properties.memory", "is not a size"),
        ("resources: {properties: {memory: 0}}", "resources.properties.memory", "must be > 0"),
        ("resources: {properties: {gpu_memory: 100P}}", "resources.properties.gpu_memory", "must be at most 64T"),
        ("resources: {properties: {gpu_model: 80}}", "resources.properties.gpu_model", "must be a string"),
        ("resources: {instance_count: 0}", "resources.instance_count", "must be >= 1"),
        ("resources: {instance_count: 2000}", "resources.instance_count", "must be <= 1024"),
        ("resources: 4", "resources", "must be a mapping"),
        ("limits: {timeout: 0}", "limits.timeout", "must be > 0"),
        ("limits: {timeout: 2592001}", "limits.timeout", "must be <= 2592000"),
        ("queue_settings: {priority: urgent}", "queue_settings.priority", "must be one of low, medium or high"),
        ("tags: {team: [a, b]}", "tags.team", "must be a string, number or boolean"),
        ("tags: [a, b]", "tags", "must be a mapping"),
        ("tags: {2024: x}", "tags.2024", "key must be a string"),
        ("1: x", "1", "key must be a string"),
        ("environment_variables: {A: {b: c}}", "environment_variables.A", "must be a string, number or boolean"),
        ("inputs: {data: {type: uri_folder, path: ./d}}", "inputs.data", "type uri_folder are not supported yet"),
        ("inputs: {lr: {type: number, default: 0.1}}", "inputs.lr", "not supported yet by Runyard"),
        ("inputs: {lr: {value: 0.1}}", "inputs.lr", "write the value itself"),
        ("inputs: {lr: null}", "inputs.lr", "must be a string, number or boolean, not null"),
        ("compute: ''", "compute", "must not be empty"),
        ("compute: 3", "compute", "must be a string"),
        ("experiment_name: ''", "experiment_name", "must not be empty"),
        ("code: azureml:src:1", "code", "only a local directory"),
        ("type: sweep", "type", "sweep jobs are not supported yet by Runyard"),
        ("distribution: {type: ray}", "distribution.type", "ray distribution is not supported yet by Runyard"),
        ("distribution: {type: mpi, process_count_per_instance: 0}", "distribution.process_count_per_instance",
         "must be >= 1"),
        ("distribution: {type: mpi, process_count_per_instance: 257}", "distribution.process_count_per_instance",
         "must be <= 256"),
        ("distribution: {type: tensorflow}", "distribution", "type: tensorflow needs worker_count"),
        ("distribution: {type: tensorflow, worker_count: 0}", "distribution.worker_count", "must be >= 1"),
        ("distribution: {type: tensorflow, worker_count: 2, parameter_server_count: -1}",
         "distribution.parameter_server_count", "must be >= 0"),
        ("distribution: {type: tensorflow, worker_count: 2, process_count_per_instance: 2}", "distribution",
         "not process_count_per_instance"),
        ("distribution: {type: mpi, worker_count: 2}", "distribution", "are for type: tensorflow, not mpi"),
        ("distribution: {type: pytorch, process_count_per_instance: 0}", "distribution.process_count_per_instance",
         "must be >= 1"),
        ("distribution: {type: pytorch, workers: 2}", "distribution.workers", "unknown key"),
        ("distribution: {process_count_per_instance: 2}", "distribution.type", ""),
    ],
)
def test_invalid_values_name_the_yaml_path(tmp_path: Path, text: str, path: str, message: str) -> None:
    error = job_error(tmp_path, f"command: python train.py\n{text}\n")

    assert error.path == path
    assert message in error.message
    assert f"job.yml: {path}: " in str(error)


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ("[python, train.py]", "must be a string"),
        ("''", "must not be empty"),
        ("python train.py --lr ${{inputs.lr}}", "${{inputs.lr}} is not defined in inputs"),
        ("python train.py --out ${{outputs.model}}", "${{outputs.model}} is not supported yet by Runyard"),
        ("python train.py --lr ${{inputs.lr", "not closed"),
    ],
)
def test_bad_command_names_the_command_key(tmp_path: Path, command: str, message: str) -> None:
    error = job_error(tmp_path, f"command: {command}\n")

    assert error.path == "command"
    assert message in error.message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("command: [unclosed\n", "invalid YAML at line 2"),
        ("command: x\ninputs: {a: 1}\n  bad: indent\n", "invalid YAML at line 3"),
        ("command: x\ncommand: y\n", "invalid YAML at line 2: key 'command' is given twice"),
        ("- command: x\n", "is a list, not a mapping"),
        ("python train.py\n", "is str, not a mapping"),
        ("", "is empty"),
    ],
)
def test_malformed_files_are_one_line_errors(tmp_path: Path, text: str, message: str) -> None:
    error = job_error(tmp_path, text)

    assert error.path == ""
    assert message in str(error)


def test_unreadable_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as caught:
        load_job_file(tmp_path / "missing.yml")

    assert not isinstance(caught.value, JobFileError)
    assert "missing.yml" in str(caught.value)


def test_accepted_azure_keys_that_runyard_ignores(tmp_path: Path) -> None:
    job = load_job_file(write_job(tmp_path, """\
        $schema: https://azuremlschemas.azureedge.net/latest/commandJob.schema.json
        name: my-job-1
        description: a baseline
        command: echo hi
        compute: azureml:gpu-cluster
        tags: {epochs: 3, fast: true, date: 2024-05-01}
        environment_variables: {OMP_NUM_THREADS: 4}
        resources:
        limits:
    """))

    assert job.description == "a baseline"
    assert job.compute == "gpu-cluster"
    assert job.tags == {"epochs": "3", "fast": "true", "date": "2024-05-01"}
    assert job.environment_variables == {"OMP_NUM_THREADS": "4"}
    assert job.resources.properties.gpus is None


@pytest.mark.parametrize(
    ("inputs", "command", "rendered"),
    [
        ("{lr: 0.1}", "train --lr ${{inputs.lr}}", "train --lr 0.1"),
        ("{epochs: 3}", "train --epochs ${{ inputs.epochs }}", "train --epochs 3"),
        ("{fast: true, slow: false}", "train ${{inputs.fast}} ${{inputs.slow}}", "train true false"),
        ("{name: 'a b'}", "train --name '${{inputs.name}}'", "train --name 'a b'"),
        ("{x: 1, y: 2}", "echo ${{inputs.x}}${{inputs.y}}${{inputs.x}}", "echo 121"),
    ],
)
def test_inputs_are_substituted_into_the_shell_command(
    tmp_path: Path, inputs: str, command: str, rendered: str
) -> None:
    job = write_job(tmp_path, f'inputs: {inputs}\ncommand: "{command}"\n')

    request = build_request(CliOptions(job_file=job))

    assert request.argv == ("/bin/sh", "-c", rendered)


@pytest.mark.parametrize(
    ("sets", "field", "expected"),
    [
        (("resources.properties.gpus=2",), "gpus", 2),
        (("resources.properties.memory=32G",), "memory_bytes", 32 * GiB),
        (("resources.instance_count=4",), "instance_count", 4),
        (("inputs.lr=0.1",), "argv", ("/bin/sh", "-c", "python train.py --lr 0.1")),
        (("tags.team=cv", "tags.owner=ana"), "tags", {"team": "cv", "owner": "ana"}),
        (("queue_settings.priority=high",), "priority", 300),
        (("retry.max_retries=0",), "max_retries", 0),
        (("resources.properties.gpu_model=A100",), "gpu_model", "A100"),
        (("resources.properties.node_labels.zone=a",), "node_labels", {"zone": "a"}),
        (("experiment_name=other",), "experiment", "other"),
        (
            ("command=echo ${{inputs.lr}} ${{inputs.new}}", "inputs.new=true"),
            "argv",
            ("/bin/sh", "-c", "echo 0.01 true"),
        ),
        (("limits.timeout=60",), "timeout_s", 60.0),
    ],
)
def test_set_overrides_apply_before_validation(
    tmp_path: Path, sets: tuple[str, ...], field: str, expected: object
) -> None:
    (tmp_path / "src").mkdir()
    job = write_job(tmp_path, FULL_EXAMPLE)

    request = build_request(CliOptions(job_file=job, sets=sets))

    assert getattr(request, field) == expected


def test_set_value_is_validated_like_the_file_and_its_error_names_the_flag(tmp_path: Path) -> None:
    path = write_job(tmp_path, "command: x\n")
    for sets, said in [
        (("resources.properties.gpus=-1",), "--set resources.properties.gpus=-1: must be >= 0"),
        (("resources.properties.gpuz=1",), "--set resources.properties.gpuz=1: unknown key; did you mean gpus?"),
        (("inputs.lr=0.1", "resources={}"), "--set resources={}: must be a mapping"),
    ]:
        with pytest.raises(UsageError) as caught:
            load_job_file(path, sets)
        assert not isinstance(caught.value, JobFileError)      # the flag is at fault, not the file
        assert str(caught.value) == said


def test_an_error_of_the_file_beside_a_set_names_the_file(tmp_path: Path) -> None:
    error = job_error(tmp_path, "command: x\ncolour: red\n", sets=("inputs.lr=0.1",))

    assert (error.path, error.message) == ("colour", "unknown key")


def test_set_creates_missing_and_empty_mappings(tmp_path: Path) -> None:
    path = write_job(tmp_path, "command: x\nresources:\n")

    job = load_job_file(path, ("resources.properties.gpus=2", "inputs.epochs=3"))

    assert job.resources.properties.gpus == 2
    assert job.inputs == {"epochs": 3}


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("command.shell=bash", "--set 'command.shell=bash': command is not a mapping"),
        ("resources.properties.gpus", "expected key=value"),
        ("resources..gpus=1", "expected key=value"),
        ("=1", "expected key=value"),
    ],
)
def test_bad_set_items_are_usage_errors(tmp_path: Path, item: str, message: str) -> None:
    job = write_job(tmp_path, "command: x\nresources: {}\n")

    with pytest.raises(UsageError) as caught:
        load_job_file(job, (item,))

    assert not isinstance(caught.value, JobFileError)
    assert message in str(caught.value)


def test_flags_override_job_values(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    job = write_job(tmp_path, FULL_EXAMPLE)

    request = build_request(CliOptions(
        job_file=job, experiment="exp2", display_name="try2", compute="azureml:big", cpus=8, memory="64G",
        gpus=4, nodes=2, env=("OMP_NUM_THREADS=8", "EXTRA=a=b"), priority="high", timeout_s=60.0,
    ))

    assert (request.experiment, request.display_name, request.compute) == ("exp2", "try2", "big")
    assert (request.cpus, request.memory_bytes, request.gpus, request.instance_count) == (8.0, 64 * GiB, 4, 2)
    assert request.environment == {"OMP_NUM_THREADS": "8", "EXTRA": "a=b"}
    assert (request.priority, request.timeout_s) == (300, 60.0)


@pytest.mark.parametrize(("flag", "value"), [("low", 100), ("high", 300), ("250", 250), ("-5", -5)])
def test_priority_flag_takes_names_and_integers(flag: str, value: int) -> None:
    assert build_request(CliOptions(priority=flag, command=("true",))).priority == value


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (CliOptions(gpus=-1), "--gpus: must be >= 0"),
        (CliOptions(gpus=100), "--gpus: must be <= 64"),
        (CliOptions(cpus=0.0), "--cpus: must be > 0"),
        (CliOptions(memory="lots"), "--memory: 'lots' is not a size"),
        (CliOptions(memory="100P"), "--memory: must be at most 64T"),
        (CliOptions(nodes=0), "--nodes: must be >= 1"),
        (CliOptions(procs_per_node=0), "--procs-per-node: must be >= 1"),
        (CliOptions(distribution="horovod", procs_per_node=2), "--distribution: "),
        (CliOptions(priority="urgent"), "--priority: must be one of low, medium or high"),
        (CliOptions(timeout_s=-1.0), "--timeout: must be > 0"),
        (CliOptions(experiment=""), "--experiment: must not be empty"),
        (CliOptions(compute="azureml:"), "--compute: must not be empty"),
        (CliOptions(env=("no value",)), "--env 'no value': 'no value' is not an environment reference"),
        (CliOptions(env=("torch:1", "jax@latest")), "--env names 2 environments (torch:1, jax@latest); a run has one"),
        (CliOptions(env=("torch:1",), conda_file=Path("env.yml")), "give --env NAME or --conda-file FILE, not both"),
        (CliOptions(env=("=x",)), "--env '=x': expected KEY=VALUE"),
        (CliOptions(sets=("resources.properties.gpus=1",)), "--set needs a job file"),
    ],
)
def test_bad_flags_are_usage_errors_naming_the_flag(options: CliOptions, message: str) -> None:
    with pytest.raises(UsageError) as caught:
        build_request(dataclasses.replace(options, command=("true",)))

    assert not isinstance(caught.value, JobFileError)
    assert str(caught.value).startswith(message)
    assert_one_plain_line(str(caught.value))


def test_job_command_runs_in_a_shell_and_cli_command_runs_as_given(tmp_path: Path) -> None:
    job = write_job(tmp_path, "command: python train.py | tee log.txt\n")

    from_job = build_request(CliOptions(job_file=job))
    from_cli = build_request(CliOptions(job_file=job, command=("python", "eval.py", "a b")))

    assert from_job.argv == ("/bin/sh", "-c", "python train.py | tee log.txt")
    assert from_cli.argv == ("python", "eval.py", "a b")


def test_no_command_anywhere_is_a_usage_error(tmp_path: Path) -> None:
    job = write_job(tmp_path, "experiment_name: mnist\n")

    with pytest.raises(UsageError, match="no command: give one after -- or set command: in the job file"):
        build_request(CliOptions(job_file=job))


def test_defaults_without_a_job_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "My-Project"
    project.mkdir()
    monkeypatch.chdir(project)

    request = build_request(CliOptions(command=("python", "train.py")))

    assert request == RunRequest(
        code_dir=project, argv=("python", "train.py"), experiment="my-project", display_name="", tags={},
        environment={}, compute="default", cpus=1.0, memory_bytes=GiB, gpus=0, instance_count=1,
        timeout_s=0.0, priority=200,
    )


@pytest.mark.parametrize(
    ("code", "directory", "expected"),
    [
        ("./src", None, "jobs/src"),
        ("../shared", None, "shared"),
        (None, None, "jobs"),
        ("./src", "other", "other"),
    ],
)
def test_code_dir_is_resolved_against_the_job_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: str | None, directory: str | None, expected: str
) -> None:
    for name in ("jobs/src", "shared", "other", "elsewhere"):
        (tmp_path / name).mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "elsewhere")
    job = write_job(tmp_path / "jobs", "command: x\n" + (f"code: {code}\n" if code else ""))
    flag = tmp_path / directory if directory else None

    request = build_request(CliOptions(job_file=job, directory=flag))

    assert request.code_dir == tmp_path / expected
    assert request.experiment == Path(expected).name


def test_missing_code_directory_names_the_code_key(tmp_path: Path) -> None:
    job = write_job(tmp_path, "command: x\ncode: ./nope\n")

    with pytest.raises(JobFileError) as caught:
        build_request(CliOptions(job_file=job))

    assert caught.value.path == "code"
    assert "nope is not a directory" in caught.value.message


def test_gpu_model_and_memory_reach_the_request(tmp_path: Path) -> None:
    job = write_job(tmp_path, "command: x\nresources: {properties: {gpus: 2, gpu_model: A100, gpu_memory: 80G}}\n")

    request = build_request(CliOptions(job_file=job))

    assert (request.gpus, request.gpu_model, request.gpu_memory_bytes) == (2, "A100", 80 * GiB)


# --- environment: -----------------------------------------------------------------------------------------------

CONDA = """\
name: train
channels: [conda-forge]
dependencies:
  - python=3.11
  - pip
  - libgomp
  - pip:
    - -r requirements.txt
    - torch==2.3.0  # pinned
"""


def project(tmp_path: Path) -> tuple[Path, Path]:
    """jobs/job.yml with its conda file beside it, and the code in src/ with its requirements file."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "requirements.txt").write_text("numpy>=2\n# dev\npandas\n")
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "env.yml").write_text(CONDA)
    return tmp_path / "jobs", tmp_path / "src"


def test_an_inline_conda_file_is_read_beside_the_job_file_and_its_r_lines_in_the_code_directory(tmp_path: Path) -> None:
    jobs, _ = project(tmp_path)
    job = write_job(jobs, "command: python train.py\ncode: ../src\n"
                          "environment: {conda_file: env.yml, image: docker.io/library/python:3.11-slim}\n")

    request = build_request(CliOptions(job_file=job))

    assert request.env == EnvSpec(python="3.11", pip=("numpy>=2", "pandas", "torch==2.3.0"), conda=("libgomp",),
                                  channels=("conda-forge",), image="docker.io/library/python:3.11-slim")
    assert request.env_ref == ""


@pytest.mark.parametrize(("text", "ref"), [
    ("azureml:pytorch:3", "pytorch:3"), ("azureml:pytorch@latest", "pytorch@latest"),
    ("runyard:pytorch:1.10", "pytorch:1.10"), ("runyard:pytorch@latest", "pytorch@latest"),
])
def test_a_registered_environment_is_named_by_reference(tmp_path: Path, text: str, ref: str) -> None:
    job = write_job(tmp_path, f"command: x\nenvironment: {text}\n")

    request = build_request(CliOptions(job_file=job))

    assert (request.env, request.env_ref) == (EnvSpec(), ref)


def test_the_short_form_takes_pip_lines_and_a_requirements_file_in_the_code_directory(tmp_path: Path) -> None:
    _, code = project(tmp_path)
    job = write_job(tmp_path, "command: x\ncode: ./src\n"
                              "environment: {pip: [\"numpy>=2\", scipy], requirements: requirements.txt}\n")

    assert build_request(CliOptions(job_file=job)).env == EnvSpec(pip=("numpy>=2", "pandas", "scipy"))


def test_an_image_alone_is_an_environment(tmp_path: Path) -> None:
    job = write_job(tmp_path, "command: x\nenvironment: {image: python:3.11}\n")

    assert build_request(CliOptions(job_file=job)).env == EnvSpec(image="python:3.11")


def test_no_environment_is_the_node_s_own(tmp_path: Path) -> None:
    request = build_request(CliOptions(job_file=write_job(tmp_path, "command: x\n")))

    assert (request.env, request.env_ref) == (EnvSpec(), "")


def test_environment_flags_replace_the_job_file_s(tmp_path: Path) -> None:
    jobs, code = project(tmp_path)
    job = write_job(jobs, "command: x\ncode: ../src\nenvironment: azureml:pytorch:3\n")

    by_name = build_request(CliOptions(job_file=job, env=("A=1", "jax:2")))
    by_file = build_request(CliOptions(job_file=job, conda_file=jobs / "env.yml"))

    assert (by_name.env_ref, by_name.env, by_name.environment) == ("jax:2", EnvSpec(), {"A": "1"})
    assert (by_file.env_ref, by_file.env.pip) == ("", ("numpy>=2", "pandas", "torch==2.3.0"))


def test_a_bare_env_flag_names_the_latest_version() -> None:
    assert build_request(CliOptions(env=("pytorch",), command=("true",))).env_ref == "pytorch@latest"


@pytest.mark.parametrize(
    ("text", "path", "message"),
    [
        ("environment: pytorch:3", "environment", "a registered environment is azureml:NAME:VERSION"),
        ("environment: 'azureml:bad name'", "environment", "is not an environment reference"),
        ("environment: 3", "environment", "must be a mapping"),
        ("environment: {}", "environment", "must name a conda_file (and an image), or pip and requirements"),
        ("environment: {conda_file: env.yml, pip: [numpy]}", "environment", "give conda_file, or pip and"),
        ("environment: {conda: env.yml}", "environment.conda", "unknown key"),
        ("environment: {pip: numpy}", "environment.pip", "must be a list"),
        ("environment: {pip: [numpy, 3]}", "environment.pip[1]", "must be a string"),
        ("environment: {pip: ['-e .']}", "environment.pip[0]", "pip option -e is not supported"),
        ("environment: {image: 'two words'}", "environment", "image must be one name"),
    ],
)
def test_environment_faults_name_the_yaml_path(tmp_path: Path, text: str, path: str, message: str) -> None:
    job = write_job(tmp_path, f"command: x\n{text}\n")

    with pytest.raises(JobFileError) as caught:
        build_request(CliOptions(job_file=job))

    assert_one_plain_line(str(caught.value))
    assert (caught.value.path, caught.value.source) == (path, str(job))
    assert message in caught.value.message


@pytest.mark.parametrize(
    ("conda", "message"),
    [
        ("dependencies: [python>=3.10]\n", "env.yml: dependencies[0]: pin python to one version such as python=3.11"),
        ("dependencies: [{pip: [-r missing.txt]}]\n", "env.yml: dependencies[0].pip[0]: cannot read -r missing.txt"),
        ("dependencies: [\n", "env.yml: invalid YAML at line 2"),
        ("", "env.yml: is empty; a conda file is a mapping"),
    ],
)
def test_conda_file_faults_name_the_conda_file(tmp_path: Path, conda: str, message: str) -> None:
    (tmp_path / "env.yml").write_text(conda)
    job = write_job(tmp_path, "command: x\nenvironment: {conda_file: env.yml}\n")

    with pytest.raises(JobFileError) as caught:
        build_request(CliOptions(job_file=job))

    assert_one_plain_line(str(caught.value))
    assert message in str(caught.value)


def test_a_missing_conda_file_is_one_line(tmp_path: Path) -> None:
    job = write_job(tmp_path, "command: x\nenvironment: {conda_file: nope.yml}\n")

    with pytest.raises(UsageError, match="cannot read conda file .*nope.yml: No such file or directory"):
        build_request(CliOptions(job_file=job))


# --- environment files (`runyard env create -f`) -------------------------------------------------------------

def test_an_azure_environment_file_loads_with_its_conda_file(tmp_path: Path) -> None:
    project(tmp_path)
    (tmp_path / "jobs" / "requirements.txt").write_text("scipy\n")
    path = write_job(tmp_path / "jobs", """\
        $schema: https://azuremlschemas.azureedge.net/latest/environment.schema.json
        name: pytorch-train
        version: 3
        description: torch and friends
        tags: {team: vision, gpu: true}
        conda_file: env.yml
    """, name="environment.yml")

    found = load_environment_file(path)

    assert found == NewEnvironment("pytorch-train", "3", "torch and friends", {"team": "vision", "gpu": "true"},
                                   EnvSpec(python="3.11", pip=("scipy", "torch==2.3.0"), conda=("libgomp",),
                                           channels=("conda-forge",)))


def test_an_environment_file_without_a_version_leaves_it_to_the_head(tmp_path: Path) -> None:
    path = write_job(tmp_path, "name: base\nimage: python:3.11\n", name="environment.yml")

    assert load_environment_file(path) == NewEnvironment("base", "", "", {}, EnvSpec(image="python:3.11"))


@pytest.mark.parametrize(
    ("text", "path", "message"),
    [
        ("image: x\n", "name", "is required"),
        ("name: 'a b'\nimage: x\n", "name", "must be 1 to 255 letters"),
        ("name: a\nversion: 'x y'\nimage: x\n", "version", "must be 1 to 64 letters"),
        ("name: a\n", "", "names neither a conda_file nor an image"),
        ("name: a\nimage: x\nbuild: {path: .}\n", "build", "not supported yet by Runyard"),
        ("name: a\nimage: x\ninference_config: {}\n", "inference_config", "not supported yet by Runyard"),
        ("name: a\nimage: x\ncolour: red\n", "colour", "unknown key"),
    ],
)
def test_environment_file_faults_name_the_yaml_path(tmp_path: Path, text: str, path: str, message: str) -> None:
    source = write_job(tmp_path, text, name="environment.yml")

    with pytest.raises(JobFileError) as caught:
        load_environment_file(source)

    assert_one_plain_line(str(caught.value))
    assert caught.value.path == path
    assert message in caught.value.message


def test_pytorch_distribution_is_carried_into_the_request(tmp_path: Path) -> None:
    job = write_job(tmp_path, """\
        command: python train.py
        resources: {instance_count: 2}
        distribution: {type: pytorch, process_count_per_instance: 2}
        """)

    request = build_request(CliOptions(job_file=job))

    assert (request.instance_count, request.distribution, request.procs_per_node) == (2, "pytorch", 2)


def test_mpi_distribution_is_carried_into_the_request(tmp_path: Path) -> None:
    job = write_job(tmp_path, """\
        command: python train.py
        resources: {instance_count: 2}
        distribution: {type: mpi, process_count_per_instance: 3}
        """)

    request = build_request(CliOptions(job_file=job))
    flags = build_request(CliOptions(distribution="mpi", procs_per_node=2, command=("python", "train.py")))

    assert (request.instance_count, request.distribution, request.procs_per_node) == (2, "mpi", 3)
    assert (flags.distribution, flags.procs_per_node) == ("mpi", 2)


def test_tensorflow_distribution_is_carried_into_the_request(tmp_path: Path) -> None:
    job = write_job(tmp_path, """\
        command: python train.py
        resources: {instance_count: 2}
        distribution: {type: tensorflow, worker_count: 3, parameter_server_count: 1}
        """)

    request = build_request(CliOptions(job_file=job))

    assert (request.instance_count, request.distribution, request.workers, request.parameter_servers) == (
        2, "tensorflow", 3, 1)


def test_without_distribution_a_run_has_none(tmp_path: Path) -> None:
    request = build_request(CliOptions(job_file=write_job(tmp_path, "command: python train.py\n")))

    assert (request.distribution, request.procs_per_node) == ("", 1)


def test_distribution_flags_override_the_job_file(tmp_path: Path) -> None:
    job = write_job(tmp_path, "command: python train.py\ndistribution: {type: pytorch, process_count_per_instance: 2}\n")

    request = build_request(CliOptions(job_file=job, procs_per_node=4, nodes=3))
    flags_only = build_request(CliOptions(procs_per_node=2, command=("python", "train.py")))

    assert (request.instance_count, request.distribution, request.procs_per_node) == (3, "pytorch", 4)
    assert (flags_only.distribution, flags_only.procs_per_node) == ("pytorch", 2)


@pytest.mark.parametrize("options", [
    CliOptions(command=("true",)),
    CliOptions(command=("python", "train.py"), env=("A=1", "B=x=y", "C=")),
], ids=["a command", "with variables"])
def test_a_plain_submit_is_built_without_the_job_files_model_and_the_same(options: CliOptions, tmp_path: Path) -> None:
    code = tmp_path / "Project"
    code.mkdir()
    for given in (options, dataclasses.replace(options, directory=code)):
        assert plain_request(given) == build_request(given)


@pytest.mark.parametrize("options", [
    CliOptions(), CliOptions(command=("true",), cpus=2.0), CliOptions(command=("true",), memory="2G"),
    CliOptions(command=("true",), experiment="e"), CliOptions(command=("true",), priority="high"),
    CliOptions(command=("true",), env=("NAME:1",)), CliOptions(command=("true",), env=("=1",)),
    CliOptions(command=("true",), job_file=Path("job.yml")), CliOptions(command=("true",), timeout_s=5.0),
    CliOptions(command=("true",), distribution="pytorch"), CliOptions(command=("true",), conda_file=Path("c.yml")),
])
def test_any_other_submit_goes_through_the_job_files_model(options: CliOptions) -> None:
    assert plain_request(options) is None


def test_a_plain_submit_of_a_missing_directory_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is not a directory"):
        plain_request(CliOptions(command=("true",), directory=tmp_path / "nowhere"))
