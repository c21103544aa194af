"""``verify certify`` end to end: third-party weight layouts, JSON/CSV rows, bad input, interruption."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from verify.formats import load_model, save_model
from verify.network import Network
from verify.torch_modules import network_from_torch
from tests.cli_util import run_cli


@pytest.fixture(scope="module")
def cnn() -> Network:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 4, 4, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 4, stride=2, padding=1), nn.ReLU(),
                      nn.Flatten(), nn.Linear(8 * 7 * 7, 32), nn.ReLU(), nn.Linear(32, 10))
    return network_from_torch(m, (1, 28, 28))


@pytest.mark.parametrize("fmt,suffix", [("mat-mipverify", ".mat"), ("mat-mmr", ".mat"), ("pt", ".pth")])
def test_certify_third_party_layouts(cnn: Network, fmt: str, suffix: str, tmp_path: Path, shared_data: Path, capsys) -> None:
    path = tmp_path / f"net{suffix}"
    try:
        save_model(cnn, path, format=fmt)
    except Exception as e:  # a layout that cannot hold this net is the formats' business, not ours
        pytest.skip(f"{fmt} cannot store this network: {e}")
    back = load_model(path, format=fmt)
    x = torch.rand(3, 1, 28, 28, dtype=torch.float64)
    assert torch.allclose(back(x), cnn(x), atol=1e-5)
    out = tmp_path / "res.json"
    code = run_cli(["certify", "--model", str(path), "--format", fmt, "--p", "inf", "--eps", "0.005", "--dataset", "mnist",
                    "--data-dir", str(shared_data / "mnist"), "-n", "6", "--timeout", "30", "-q", "--output", str(out)])
    assert code == 0, capsys.readouterr().err
    res = json.loads(out.read_text())
    for key in ("n", "clean_error", "lb", "ub", "unknown", "median_seconds", "total_seconds", "config", "examples"):
        assert key in res
    assert res["n"] == 6 and len(res["examples"]) == 6
    assert res["clean_error"] <= res["lb"] <= res["ub"] <= 1
    stdout = capsys.readouterr().out
    assert "PGD+complete lower bound" in stdout and "unknown" in stdout


def test_bad_input_is_one_line_exit_2(cnn: Network, tmp_path: Path, shared_data: Path, capsys) -> None:
    path = tmp_path / "net.pth"
    save_model(cnn, path, format="pt")
    base = ["certify", "--model", str(path), "--dataset", "mnist", "--data-dir", str(shared_data / "mnist"), "-n", "2"]
    for extra in (["--p", "inf", "--eps", "-0.1"], ["--p", "3", "--eps", "0.1"],
                  ["--p", "inf", "--eps", "0.1", "--output", str(tmp_path / "r.txt")]):
        assert run_cli(base + extra) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and "\n" not in err


def test_sigkill_keeps_rows(cnn: Network, tmp_path: Path, shared_data: Path) -> None:
    path = tmp_path / "net.pth"
    save_model(cnn, path, format="pt")
    out = tmp_path / "rows.json"
    proc = subprocess.Popen([sys.executable, "-m", "verify", "certify", "--model", str(path), "--p", "inf", "--eps", "0.02",
                             "--dataset", "mnist", "--data-dir", str(shared_data / "mnist"), "-n", "300", "-q",
                             "--methods", "ibp", "--attack-steps", "0", "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if out.exists() and len(json.loads(out.read_text())["examples"]) >= 3:
                break
            time.sleep(0.2)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    res = json.loads(out.read_text())  # never half-written
    assert len(res["examples"]) >= 3
    assert all(r["status"] in ("misclassified", "falsified", "verified", "unknown") for r in res["examples"])


def test_threads_sets_torch_threads_too(cnn: Network, tmp_path: Path, shared_data: Path, capsys) -> None:
    path = tmp_path / "net.pth"
    save_model(cnn, path, format="pt")
    seen = []
    from verify.certify import certify as run

    def spy(*args, **kw):  # type: ignore[no-untyped-def]
        seen.append(torch.get_num_threads())
        return run(*args, **kw)

    import verify.certify

    mp = pytest.MonkeyPatch()
    mp.setattr(verify.certify, "certify", spy)
    try:
        before = torch.get_num_threads()
        code = run_cli(["certify", "--model", str(path), "--p", "inf", "--eps", "0.001", "--dataset", "mnist",
                        "--data-dir", str(shared_data / "mnist"), "-n", "2", "--threads", "2", "-q", "--no-mip"])
        assert code == 0, capsys.readouterr().err
    finally:
        mp.undo()
    assert seen == [2]  # certify ran with two torch threads
    assert torch.get_num_threads() == before  # and the runner restored the count
