"""The environment file of `runyard env create -f environment.yml`: Azure ML v2's environment YAML.

    $schema: https://azuremlschemas.azureedge.net/latest/environment.schema.json    (ignored)
    name: pytorch-train
    version: "3"                  # optional: the head takes the next whole number, or the latest with this spec
    description: torch and friends
    tags: {team: vision}
    conda_file: env.yml           # relative to this file; its `-r` lines relative to this file's directory too
    image: docker.io/library/python:3.11-slim

A registered environment has a conda file, an image, or both. Keys of Azure's schema that Runyard does not support
yet are refused by name. Faults are `JobFileError`s with the YAML path, as for the job file.
Must not: talk to the head.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, ValidationError

from runyard import envspec
from runyard.envspec import EnvSpec
from runyard.errors import JobFileError
from runyard.jobfile import Text, explain, Section, conda_spec, read_mapping

_NOT_YET = frozenset({"build", "inference_config", "os_type", "datastore", "intellectual_property"})


def _name(value: object) -> object:
    if isinstance(value, str) and not envspec.valid_name(value):
        raise ValueError("must be 1 to 255 letters, digits, '_', '.' or '-', starting with a letter or digit")
    return value


def _version(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)      # `version: 3` as Azure's examples write it
    if isinstance(value, str) and not envspec.valid_version(value):
        raise ValueError("must be 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit")
    return value


class EnvironmentFile(Section):
    schema_url: Any = Field(None, alias="$schema")
    name: Annotated[str, BeforeValidator(_name)]
    version: Annotated[str | None, BeforeValidator(_version)] = None
    description: str | None = Field(None, max_length=4096)
    tags: dict[str, Text] = {}
    conda_file: str | None = Field(None, min_length=1)
    image: str | None = Field(None, min_length=1)


@dataclass(frozen=True, slots=True)
class NewEnvironment:
    name: str
    version: str                # '' : the head chooses
    description: str
    tags: dict[str, str] = field(default_factory=dict)
    spec: EnvSpec = EnvSpec()


def load_environment_file(path: Path) -> NewEnvironment:
    """Read and validate an environment file, and the conda file it names."""
    source = str(path)
    raw = read_mapping(path, source, "environment file", "`name: NAME` with `conda_file: env.yml`")
    for key in raw:
        if key in _NOT_YET:
            raise JobFileError(source, str(key), "not supported yet by Runyard")
    try:
        found = EnvironmentFile.model_validate(raw)
    except ValidationError as err:
        where, message = explain(err)
        raise JobFileError(source, where, message) from None
    if found.conda_file is None and found.image is None:
        raise JobFileError(source, "", "names neither a conda_file nor an image; an environment needs one")
    if found.conda_file is not None:
        conda = Path(os.path.normpath(path.parent / found.conda_file))
        spec = conda_spec(conda, code_dir=path.parent, image=found.image or "")
    else:
        spec = EnvSpec(image=found.image or "")
    problem = envspec.check(spec)
    if problem:
        raise JobFileError(source, "image" if spec.image and not found.conda_file else "", problem)
    return NewEnvironment(found.name, found.version or "", found.description or "", dict(found.tags), spec)
