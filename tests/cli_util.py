"""Running the command-line entry points in-process from tests."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import pytest
import torch


@contextlib.contextmanager
def _same_torch_threads() -> Iterator[None]:
    """The commands set torch's thread count (``--threads``); a test leaves it as it found it."""
    before = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_captured(argv: list[str], capsys, main: Callable[[list[str]], None] | None = None) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``verify ARGV`` (or of ``main``, e.g. train-mmr's)."""
    if main is None:
        from verify.cli import main
    with _same_torch_threads(), pytest.raises(SystemExit) as e:
        main(argv)  # type: ignore[misc]
    out = capsys.readouterr()
    return int(e.value.code or 0), out.out, out.err


def run_cli(args: list[str]) -> int:
    """The exit code of ``verify ARGS`` (output left to pytest's capture)."""
    from verify.cli import main

    with _same_torch_threads():
        try:
            main(args)
        except SystemExit as e:
            return int(e.code or 0)
    return 0
