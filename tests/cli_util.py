"""Running the command-line entry points in-process from tests."""

from __future__ import annotations

from typing import Callable

import pytest


def run_captured(argv: list[str], capsys, main: Callable[[list[str]], None] | None = None) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``verify ARGV`` (or of ``main``, e.g. train-mmr's)."""
    if main is None:
        from verify.cli import main
    with pytest.raises(SystemExit) as e:
        main(argv)  # type: ignore[misc]
    out = capsys.readouterr()
    return int(e.value.code or 0), out.out, out.err


def run_cli(args: list[str]) -> int:
    """The exit code of ``verify ARGS`` (output left to pytest's capture)."""
    from verify.cli import main

    try:
        main(args)
    except SystemExit as e:
        return int(e.code or 0)
    return 0
