"""An environment's spec: a conda file and pip lines normalized (sorted, de-duplicated, comments dropped, `-r`
files inlined, index options apart, python selected), its identity, references and versions, and the one-line
faults that name the file and the YAML path or line."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from runyard.envspec import (
    MAX_INCLUDE_BYTES, MAX_INCLUDE_DEPTH, EnvRef, EnvSpec, check, from_conda, from_dict, identity, latest, parse_ref,
    pip_lines, to_dict, version_key,
)
from runyard.errors import JobFileError


def conda(tmp_path: Path, data: object) -> EnvSpec:
    return from_conda(data, source="env.yml", code_dir=tmp_path)


def pip(tmp_path: Path, *lines: str) -> EnvSpec:
    return pip_lines([(f"pip[{i}]", line) for i, line in enumerate(lines)], source="job.yml", code_dir=tmp_path)


def fault(call: object) -> JobFileError:
    with pytest.raises(JobFileError) as caught:
        call()  # type: ignore[operator]
    assert "\n" not in str(caught.value)
    return caught.value


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


# --- conda files ----------------------------------------------------------------------------------------------

def test_a_usual_conda_file_is_normalized(tmp_path: Path) -> None:
    spec = conda(tmp_path, {
        "name": "train",
        "channels": ["conda-forge", "defaults"],
        "dependencies": ["python=3.11", "pip", "cudatoolkit=11.8", "  libgomp  ", {"pip": [
            "torch==2.3.0", "  numpy>=2  ", "# a comment", "", "pandas  # inline comment", "numpy>=2",
            "--extra-index-url https://download.pytorch.org/whl/cu118",
        ]}],
    })

    assert spec == EnvSpec(
        python="3.11", pip=("numpy>=2", "pandas", "torch==2.3.0"),
        extra_index_urls=("https://download.pytorch.org/whl/cu118",), conda=("cudatoolkit=11.8", "libgomp"),
        channels=("conda-forge", "defaults"))


@pytest.mark.parametrize(("dependency", "python"), [
    ("python=3.11", "3.11"), ("python==3.10", "3.10"), ("python 3.12", "3.12"), ("python=3.11.7", "3.11"),
    ("python=3.11.*", "3.11"), ("python=3.9.18=h955ad1f_0", "3.9"), ("conda-forge::python=3.11", "3.11"),
    ("python", ""),
])
def test_python_is_selected_as_major_minor(tmp_path: Path, dependency: str, python: str) -> None:
    assert conda(tmp_path, {"dependencies": [dependency]}) == EnvSpec(python=python)


@pytest.mark.parametrize("dependency", ["pip", "pip=24.0", "pip>=23", "conda-forge::pip"])
def test_pip_itself_is_dropped(tmp_path: Path, dependency: str) -> None:
    assert conda(tmp_path, {"dependencies": ["python=3.11", dependency]}) == EnvSpec(python="3.11")


def test_packages_named_like_python_or_pip_are_conda_packages(tmp_path: Path) -> None:
    spec = conda(tmp_path, {"dependencies": ["python-dateutil", "pip-tools", "pipx"]})

    assert spec == EnvSpec(conda=("pip-tools", "pipx", "python-dateutil"))


def test_the_name_plays_no_part_and_order_does_not_matter(tmp_path: Path) -> None:
    one = conda(tmp_path, {"name": "a", "dependencies": ["numpy", "python=3.11", {"pip": ["b", "a"]}]})
    two = conda(tmp_path, {"name": "b", "dependencies": [{"pip": ["a", "b", "a"]}, "python=3.11", "numpy"]})

    assert one == two


def test_channels_keep_their_order_which_is_their_priority(tmp_path: Path) -> None:
    spec = conda(tmp_path, {"channels": ["pytorch", "conda-forge", "pytorch"], "dependencies": ["numpy"]})

    assert spec.channels == ("pytorch", "conda-forge")


@pytest.mark.parametrize(("data", "where", "message"), [
    ({"dependencies": ["python>=3.10"]}, "dependencies[0]", "pin python to one version such as python=3.11"),
    ({"dependencies": ["python=3.11", "python=3.12"]}, "dependencies[1]", "python 3.12 after python 3.11"),
    ({"dependencies": [3]}, "dependencies[0]", "must be a package such as numpy=1.26"),
    ({"dependencies": [{"pip": ["a"], "conda": ["b"]}]}, "dependencies[0]", "must be `pip: [lines]` alone"),
    ({"dependencies": [{"pip": "numpy"}]}, "dependencies[0].pip", "must be a list of requirement lines"),
    ({"dependencies": [{"pip": ["ok", 2]}]}, "dependencies[0].pip[1]", "must be a requirement line"),
    ({"dependencies": "numpy"}, "dependencies", "must be a list"),
    ({"channels": "conda-forge"}, "channels", "must be a list"),
    ({"variables": {"A": "1"}}, "variables", "unknown key"),
    ({"dependencies": [{"pip": ["-e ."]}]}, "dependencies[0].pip[0]", "pip option -e is not supported"),
    ({"dependencies": [{"pip": ["--index-url"]}]}, "dependencies[0].pip[0]", "--index-url needs a value"),
])
def test_faults_name_the_file_and_the_yaml_path(tmp_path: Path, data: object, where: str, message: str) -> None:
    error = fault(lambda: conda(tmp_path, data))

    assert (error.source, error.path) == ("env.yml", where)
    assert message in error.message


def test_a_conda_file_that_is_not_a_mapping_says_so(tmp_path: Path) -> None:
    error = fault(lambda: conda(tmp_path, ["numpy"]))

    assert "is not a mapping" in str(error)


# --- pip lines and -r files -----------------------------------------------------------------------------------

def test_r_files_are_inlined_recursively_relative_to_the_code_directory_then_to_each_file(tmp_path: Path) -> None:
    write(tmp_path / "requirements.txt", """\
        # top
        numpy>=2
        -r reqs/more.txt
        --index-url https://pypi.example/simple
    """)
    write(tmp_path / "reqs" / "more.txt", """\
        pandas==2.2 \\
            ; python_version >= "3.9"
        --requirement=deeper.txt
        --find-links /wheels
    """)
    write(tmp_path / "reqs" / "deeper.txt", "scipy\nnumpy>=2\n")

    spec = pip(tmp_path, "-r requirements.txt", "torch")

    assert spec == EnvSpec(pip=("numpy>=2", 'pandas==2.2 ; python_version >= "3.9"', "scipy", "torch"),
                           index_url="https://pypi.example/simple", find_links=("/wheels",))


@pytest.mark.parametrize("line", ["-r requirements.txt", "-rrequirements.txt", "--requirement requirements.txt",
                                  "--requirement=requirements.txt"])
def test_every_spelling_of_r_is_read(tmp_path: Path, line: str) -> None:
    write(tmp_path / "requirements.txt", "numpy\n")

    assert pip(tmp_path, line) == EnvSpec(pip=("numpy",))


def test_index_options_are_kept_apart_sorted_and_once(tmp_path: Path) -> None:
    spec = pip(tmp_path, "-i https://a/simple", "--extra-index-url https://c", "--extra-index-url=https://b",
               "-f https://links", "--find-links https://links", "numpy", "--index-url https://a/simple")

    assert spec == EnvSpec(pip=("numpy",), index_url="https://a/simple", extra_index_urls=("https://b", "https://c"),
                           find_links=("https://links",))


def test_two_different_index_urls_are_refused(tmp_path: Path) -> None:
    error = fault(lambda: pip(tmp_path, "-i https://a", "-i https://b"))

    assert error.path == "pip[1]" and "a second --index-url" in error.message


def test_a_fault_in_an_r_file_names_its_file_and_line(tmp_path: Path) -> None:
    write(tmp_path / "requirements.txt", "numpy\n\n--no-binary :all:\n")

    error = fault(lambda: pip(tmp_path, "-r requirements.txt"))

    assert error.source == f"{tmp_path / 'requirements.txt'}:3"
    assert "pip option --no-binary is not supported" in error.message


def test_a_missing_r_file_names_the_line_that_asked_for_it(tmp_path: Path) -> None:
    error = fault(lambda: pip(tmp_path, "numpy", "-r nope.txt"))

    assert error.path == "pip[1]" and "cannot read -r nope.txt" in error.message


def test_an_r_file_that_includes_itself_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "a.txt", "-r b.txt\n")
    write(tmp_path / "b.txt", "numpy\n-r a.txt\n")

    error = fault(lambda: pip(tmp_path, "-r a.txt"))

    assert "-r a.txt includes itself" in error.message


def test_r_files_nest_at_most_so_deep(tmp_path: Path) -> None:
    for depth in range(MAX_INCLUDE_DEPTH + 1):
        write(tmp_path / f"r{depth}.txt", f"pkg{depth}\n-r r{depth + 1}.txt\n")
    write(tmp_path / f"r{MAX_INCLUDE_DEPTH + 1}.txt", "last\n")

    error = fault(lambda: pip(tmp_path, "-r r0.txt"))

    assert f"nest more than {MAX_INCLUDE_DEPTH} deep" in error.message


def test_r_files_are_capped_in_size_together(tmp_path: Path) -> None:
    line = "x" * 99 + "\n"
    write(tmp_path / "a.txt", line * (MAX_INCLUDE_BYTES // 200 + 1))
    write(tmp_path / "b.txt", line * (MAX_INCLUDE_BYTES // 200 + 1))

    error = fault(lambda: pip(tmp_path, "-r a.txt", "-r b.txt"))

    assert "KiB together" in error.message


# --- identity -------------------------------------------------------------------------------------------------

BASE = EnvSpec(python="3.11", pip=("numpy>=2", "torch==2.3.0"), index_url="https://pypi.org/simple")


def test_the_identity_is_stable_for_the_same_software_on_the_same_platform(tmp_path: Path) -> None:
    again = conda(tmp_path, {"name": "other", "dependencies": [
        {"pip": ["torch==2.3.0  # pinned", "numpy>=2", "-i https://pypi.org/simple"]}, "python=3.11.4"]})

    assert again == BASE
    assert identity(again, "linux-x86_64") == identity(BASE, "linux-x86_64")
    assert identity(BASE, "linux-x86_64") == identity(from_dict(to_dict(BASE)), "linux-x86_64")
    assert len(identity(BASE, "linux-x86_64")) == 64


@pytest.mark.parametrize("change", [
    {"pip": ("numpy>=2", "torch==2.3.1")}, {"python": "3.12"}, {"index_url": ""},
    {"extra_index_urls": ("https://x",)}, {"find_links": ("/w",)}, {"conda": ("libgomp",)},
    {"channels": ("conda-forge",)}, {"image": "python:3.11"},
])
def test_the_identity_changes_with_any_part_of_the_spec(change: dict[str, object]) -> None:
    assert identity(dataclasses.replace(BASE, **change), "linux-x86_64") != identity(BASE, "linux-x86_64")  # type: ignore[arg-type]


def test_the_identity_changes_with_the_platform() -> None:
    assert identity(BASE, "linux-aarch64") != identity(BASE, "linux-x86_64")


@pytest.mark.parametrize(("spec", "message"), [
    (EnvSpec(python="3"), "python must be MAJOR.MINOR"),
    (EnvSpec(pip=tuple(f"p{i}" for i in range(2001))), "2001 pip requirement lines, over the limit of 2000"),
    (EnvSpec(pip=("x" * 1025,)), "a requirement line is over 1024 characters"),
    (EnvSpec(pip=("a\nb",)), "holds a line break"),
    (EnvSpec(image="python 3"), "image must be one name"),
    (EnvSpec(extra_index_urls=("u" * 3000,)), "a URL is over 2048 characters"),
    (EnvSpec(pip=tuple(f"{i:04}" + "x" * 1000 for i in range(200))), "over the limit of 131,072"),
])
def test_check_names_what_is_over_the_caps(spec: EnvSpec, message: str) -> None:
    assert message in check(spec)


def test_check_accepts_a_usual_spec() -> None:
    assert check(BASE) == ""


# --- references and versions ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "ref"), [
    ("pytorch:3", EnvRef("pytorch", "3")), ("pytorch@latest", EnvRef("pytorch")), ("pytorch", EnvRef("pytorch")),
    ("azureml:pytorch:1.2", EnvRef("pytorch", "1.2")), ("runyard:pytorch@latest", EnvRef("pytorch")),
    ("azureml:my-env_2.x:v3", EnvRef("my-env_2.x", "v3")),
])
def test_references_are_read(text: str, ref: EnvRef) -> None:
    assert parse_ref(text) == ref


@pytest.mark.parametrize(("text", "message"), [
    ("", "is not an environment reference"), ("a b", "is not an environment reference"),
    ("torch:", "environment version '' must be"), ("torch:1:2", "environment version '1:2' must be"),
    ("azureml://registries/azureml/environments/x/versions/1", "registries and asset URIs are not supported"),
])
def test_bad_references_say_what_one_looks_like(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_ref(text)


def test_a_reference_reads_back_as_written() -> None:
    assert (str(EnvRef("torch", "2")), str(EnvRef("torch"))) == ("torch:2", "torch@latest")


@pytest.mark.parametrize(("versions", "highest"), [
    (["1", "2", "10", "9"], "10"),
    (["1.9", "1.10", "1.2"], "1.10"),
    (["2024.1.5", "2024.10.1", "2024.2.30"], "2024.10.1"),
    (["v2", "v10", "v9"], "v10"),
    (["1", "1.0"], "1.0"),
    (["3"], "3"),
    ([], ""),
])
def test_latest_is_numeric_aware(versions: list[str], highest: str) -> None:
    assert latest(versions) == highest


def test_version_order_is_total_between_numbers_and_words() -> None:
    assert sorted(["b", "10", "a", "9"], key=version_key) == ["9", "10", "a", "b"]
