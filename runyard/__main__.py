"""`python -m runyard` and the `runyard` command's entry point.

`runyard --version` is answered here from the installed package's metadata, before click or anything else of the
CLI is imported; every other command goes to `runyard.cli`, which imports what each command needs when it runs.
"""

from __future__ import annotations

import sys


def version_line() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"runyard, version {version('runyard')}"
    except PackageNotFoundError:
        return "runyard, version unknown"


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--version"]:
        print(version_line())
        return
    from runyard.cli import main as cli_main

    cli_main(list(args))


if __name__ == "__main__":
    main()
