"""A wheelhouse of tiny packages the tests and the benchmarks build themselves, offline, for agents configured with
`pip_index_url = "none"` and `pip_find_links = [wheelhouse]`: real uv installs real wheels with no network.

    tinyalpha 1.0   module `tinyalpha` (VALUE = "alpha 1.0") and a console script `tinyalpha-hello`
    tinybeta 1.0    module `tinybeta` (VALUE = "beta 1.0")
    tinybeta 2.0    module `tinybeta` (VALUE = "beta 2.0")
    tinygamma 1.0   module `tinygamma`, which requires tinyalpha

Each is written as a source tree and built with `pip wheel --no-deps --no-build-isolation` (setuptools and wheel
are dev dependencies); pip builds one version of a name per process, so the trees go in two batches.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

PACKAGES: dict[tuple[str, str], dict[str, str]] = {
    ("tinyalpha", "1.0"): {
        "requires": "",
        "scripts": 'tinyalpha-hello = "tinyalpha:hello"',
        "code": ('VALUE = "alpha 1.0"\n\n\ndef hello() -> None:\n'
                 '    import sys\n    print("hello from tinyalpha in", sys.prefix)\n'),
    },
    ("tinybeta", "1.0"): {"requires": "", "scripts": "", "code": 'VALUE = "beta 1.0"\n'},
    ("tinybeta", "2.0"): {"requires": "", "scripts": "", "code": 'VALUE = "beta 2.0"\n'},
    ("tinygamma", "1.0"): {"requires": '"tinyalpha"', "scripts": "",
                           "code": 'import tinyalpha\n\nVALUE = "gamma over " + tinyalpha.VALUE\n'},
}


def build_wheelhouse(root: Path) -> Path:
    """Write the source trees below `root` and build their wheels into `root/wheels`; returns that directory."""
    batches: list[list[str]] = [[], []]
    seen: set[str] = set()
    for (name, version), parts in PACKAGES.items():
        tree = root / "src" / f"{name}-{version}"
        (tree / name).mkdir(parents=True)
        (tree / name / "__init__.py").write_text(parts["code"])
        scripts = f"\n[project.scripts]\n{parts['scripts']}\n" if parts["scripts"] else ""
        (tree / "pyproject.toml").write_text(textwrap.dedent(f"""\
            [build-system]
            requires = ["setuptools"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "{name}"
            version = "{version}"
            dependencies = [{parts['requires']}]
            """) + scripts)
        batches[name in seen].append(str(tree))
        seen.add(name)
    wheels = root / "wheels"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    for sources in batches:
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                        "--no-index", "--wheel-dir", str(wheels), *sources], check=True, env=env, cwd=root,
                       timeout=120)
    return wheels
