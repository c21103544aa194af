"""``mypy --strict`` passes on the package, as configured in pyproject.toml's ``[tool.mypy]``.

The configuration names the files (``verify``, all of it: verify/bounds is checked too since
issue #23), the strictness and the third-party packages without type information.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None,
                    reason="mypy is not installed (pip install 'relu-verify[test]')")
def test_mypy_strict_passes() -> None:
    # the configured files, checked from this checkout (not an installed copy); no cache written
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(REPO / "pyproject.toml"), "--cache-dir", os.devnull]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"mypy failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}"
