"""End to end on a real single-node SLURM (scripts/slurm/start_local_slurm.sh, which .ci/run starts
when Debian's slurm-wlm is installed): Dask workers started as SLURM jobs by dask-jobqueue certify
the same verdicts as an in-process run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from verify.batch import ResultsStore

REPO = Path(__file__).resolve().parents[2]


def _slurm_up() -> bool:
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return False
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return any(s in out for s in ("idle", "mix"))


pytestmark = pytest.mark.skipif(not _slurm_up(), reason="no SLURM controller with an idle node (start one with "
                                "scripts/slurm/start_local_slurm.sh after apt-get install slurm-wlm)")


def _statuses(path: Path) -> dict[int, str]:
    with ResultsStore.open(path, create=False) as s:
        return {r["index"]: r["status"] for r in s.rows()}


def test_slurm_workers_certify_like_the_driver(shared_data, tmp_path):
    args = [sys.executable, "-m", "verify", "certify", "--model", str(REPO / "models" / "mnist_cnn_small_plain.mat"),
            "--p", "inf", "--eps", "0.02", "--dataset", "mnist", "--data-dir", str(shared_data), "-n", "30",
            "--methods", "ibp", "--attack-steps", "10", "--no-mip", "-q"]
    ref = tmp_path / "ref.sqlite"
    subprocess.run([*args, "--output", str(ref)], check=True, capture_output=True, timeout=300)
    out = tmp_path / "slurm.sqlite"
    r = subprocess.run([*args, "--output", str(out), "--cluster", "slurm", "--jobs", "1", "--cores", "1",
                        "--memory", "2GB", "--walltime", "00:10:00"], capture_output=True, text=True, timeout=600,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert _statuses(out) == _statuses(ref) and len(_statuses(out)) == 30
    logs = list(tmp_path.glob("slurm-*.out"))
    assert logs and "SLURMCluster" in logs[0].read_text()  # the worker really ran as a SLURM job
