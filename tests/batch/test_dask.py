"""Batch certification on real Dask workers: resume after a killed driver, a killed worker,
sharding, and the SLURM job script. Verdicts are compared with an uninterrupted in-process run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from verify.batch import ResultsStore

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "models" / "mnist_cnn_small_plain.mat"
# cheap settings (interval bounds, short PGD, no MIP): the point here is the bookkeeping across
# processes; the verdicts themselves are tested in tests/test_certify.py and tests/mip/
N = "200"
ARGS = ["--model", str(MODEL), "--p", "inf", "--eps", "0.02", "--dataset", "mnist", "--methods", "ibp",
        "--attack-steps", "10", "--no-mip", "-q"]


def _cmd(shared: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "verify", "certify", *ARGS, "--data-dir", str(shared), "--output", str(out), *extra]


def _statuses(path: Path) -> dict[int, str]:
    with ResultsStore.open(path, create=False) as s:
        rows = s.rows()
    assert len({r["index"] for r in rows}) == len(rows)  # no duplicate rows
    return {r["index"]: r["status"] for r in rows}


def _wait_rows(path: Path, k: int, proc: subprocess.Popen, limit: float = 300) -> int:
    deadline = time.time() + limit
    while time.time() < deadline and proc.poll() is None:
        if path.exists():
            try:
                with ResultsStore.open(path, create=False) as s:
                    n = len(s)
                if n >= k:
                    return n
            except Exception:
                pass
        time.sleep(0.2)
    raise AssertionError(f"no {k} rows in {path} (driver exit code {proc.poll()})")


def _kill_tree(proc: subprocess.Popen) -> None:
    try:
        kids = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        kids = []
    for p in [psutil.Process(proc.pid), *kids] if proc.poll() is None else kids:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


@pytest.fixture(scope="module")
def reference(shared_data, tmp_path_factory) -> tuple[Path, dict[int, str]]:
    """An uninterrupted in-process run on the same examples."""
    out = tmp_path_factory.mktemp("ref") / "ref.sqlite"
    subprocess.run(_cmd(shared_data, out, "-n", N), check=True, capture_output=True, timeout=600)
    st = _statuses(out)
    assert sorted(st) == list(range(200))
    assert {"misclassified", "falsified", "unknown"} <= set(st.values())
    return out, st


def test_killed_driver_resumes_to_identical_results(shared_data, reference, tmp_path):
    out = tmp_path / "run.sqlite"
    proc = subprocess.Popen(_cmd(shared_data, out, "-n", N, "--workers", "2"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        n_before = _wait_rows(out, 6, proc)
    finally:
        _kill_tree(proc)  # kill -9 the driver (and its now orphaned workers)
        proc.wait()
    partial = _statuses(out)
    assert 6 <= len(partial) < 200, n_before
    done = subprocess.run(_cmd(shared_data, out, "-n", N, "--workers", "2"), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "skipped" in done.stdout  # the resumed run says what it did not redo
    assert _statuses(out) == reference[1]


def test_killed_worker_loses_nothing(shared_data, reference, tmp_path):
    out = tmp_path / "run.sqlite"
    proc = subprocess.Popen(_cmd(shared_data, out, "-n", N, "--workers", "2"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_rows(out, 4, proc)
        workers = [p for p in psutil.Process(proc.pid).children(recursive=True)
                   if "spawn_main" in " ".join(p.cmdline()) or "multiprocessing" in " ".join(p.cmdline())]
        assert workers, "no worker processes found"
        workers[-1].send_signal(signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        _kill_tree(proc)
    assert proc.returncode == 0, stderr[-2000:]
    assert _statuses(out) == reference[1]


def test_shards_merge_to_the_unsharded_run(shared_data, reference, tmp_path):
    parts = []
    for i in (1, 2, 3):
        p = tmp_path / f"s{i}.sqlite"
        r = subprocess.run(_cmd(shared_data, p, "-n", N, "--shard", f"{i}/3"), capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        parts.append(str(p))
    merged = tmp_path / "all.sqlite"
    r = subprocess.run([sys.executable, "-m", "verify", "merge", *parts, "--out", str(merged)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert _statuses(merged) == reference[1]
    r = subprocess.run([sys.executable, "-m", "verify", "summary", str(merged), "--plot", str(tmp_path / "p.png"),
                        "--csv", str(tmp_path / "rows.csv")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "UB" in r.stdout and (tmp_path / "p.png").stat().st_size > 1000
    assert len((tmp_path / "rows.csv").read_text().splitlines()) == 201


def test_changed_configuration_is_refused(shared_data, reference, tmp_path):
    r = subprocess.run(_cmd(shared_data, reference[0], "-n", N), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr  # same configuration: nothing to do
    assert "skipped 200" in r.stdout
    cmd = _cmd(shared_data, reference[0], "-n", N)
    cmd[cmd.index("0.02")] = "0.03"
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error:") and "different configuration" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_slurm_job_script_carries_the_resources():
    from verify.batch.executor import ClusterOptions, make_slurm_cluster

    opts = ClusterOptions(cluster="slurm", jobs=3, queue="gpu-short", memory="6GB", walltime="02:30:00", cores=2,
                          account="proj42", job_extra=("--constraint=haswell",))
    cluster = make_slurm_cluster(opts)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "#SBATCH -p gpu-short" in script
    assert "#SBATCH -A proj42" in script
    assert "#SBATCH -t 02:30:00" in script
    assert "#SBATCH --mem=" in script and "#SBATCH --cpus-per-task=2" in script
    assert "#SBATCH --constraint=haswell" in script
    assert "--nthreads 1" in script and "OMP_NUM_THREADS=1" in script
