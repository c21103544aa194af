"""``verify vnnlib`` end to end on networks the project exports to ONNX, against ``verify certify``.

Robustness properties are written as VNNLIB by :func:`verify.vnnlib.robustness_vnnlib`; on every
instance ``verify vnnlib`` must agree with ``verify certify`` (sat <-> misclassified / falsified,
unsat <-> verified), and every sat counterexample is re-checked with onnxruntime: inside the box,
float32-exact, outputs as written, and unsafe.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from verify.data import load_dataset
from verify.formats import load_model, save_model
from verify.vnnlib import parse_result, robustness_vnnlib

from tests.vnnlib.nets import train_fc, write_instances
from tests.cli_util import run_cli

ort = pytest.importorskip("onnxruntime")
REPO = Path(__file__).resolve().parents[2]


def ort_check(onnx_path: Path, vnnlib_path: Path, result_text: str, label: int) -> None:
    """The sat counterexample, re-checked by onnxruntime (float32), independent of our forward pass."""
    from verify.vnnlib import load_vnnlib

    status, xs, ys = parse_result(result_text)
    assert status == "sat"
    prop = load_vnnlib(vnnlib_path)
    assert xs.shape == prop.lower.shape
    assert np.all(xs >= prop.lower) and np.all(xs <= prop.upper)  # inside the box, exactly
    x32 = xs.astype(np.float32)
    assert np.array_equal(x32.astype(np.float64), xs)  # the same input onnxruntime sees
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    shape = [d if isinstance(d, int) else 1 for d in sess.get_inputs()[0].shape]
    out = sess.run(None, {sess.get_inputs()[0].name: x32.reshape(shape)})[0].reshape(-1).astype(np.float64)
    np.testing.assert_allclose(out, ys, atol=1e-4, rtol=1e-5)
    others = np.delete(out, label)
    assert others.max() >= out[label], "onnxruntime does not confirm the counterexample"


def _agree(cert_status: str, vnn_status: str) -> bool:
    if vnn_status == "sat":
        return cert_status in ("misclassified", "falsified", "unknown")
    if vnn_status == "unsat":
        return cert_status in ("verified", "unknown")
    return True


@pytest.fixture(scope="module")
def fc_onnx(tmp_path_factory, shared_data: Path) -> Path:
    folder = tmp_path_factory.mktemp("fc")
    path = folder / "fc.onnx"
    save_model(train_fc(shared_data), path, format="onnx")
    return path


def certify_statuses(model: Path, shared: Path, indices: list[int], eps_list: list[float], tmp: Path,
                     timeout: float) -> dict[tuple[int, float], str]:
    """``verify certify`` on the same points and radii: {(index, eps): status}."""
    cert: dict[tuple[int, float], str] = {}
    for eps in eps_list:
        out = tmp / f"cert_{eps}.json"
        code = run_cli(["certify", "--model", str(model), "--p", "inf", "--eps", str(eps), "--dataset", "mnist",
                        "--data-dir", str(shared), "--indices", ",".join(map(str, indices)), "--timeout", str(timeout),
                        "-q", "--output", str(out)])
        assert code == 0
        for row in json.loads(out.read_text())["examples"]:
            cert[(row["index"], eps)] = row["status"]
    return cert


def check_agreement(onnx_path: Path, folder: Path, inst: list, cert: dict, labels: torch.Tensor, tmp: Path,
                    extra: list[str], timeout: float) -> list[str]:
    """Run ``verify vnnlib`` on every instance; agree with certify; re-check every sat with onnxruntime."""
    statuses = []
    for name, i, eps in ((d["vnnlib"], d["index"], d["eps"]) for d in inst):
        res = tmp / f"{name}.txt"
        code = run_cli(["vnnlib", "--onnx", str(onnx_path), "--vnnlib", str(folder / name), "--timeout", str(timeout),
                        "--output", str(res), *extra])
        assert code == 0
        text = res.read_text()
        status = text.split("\n", 1)[0]
        statuses.append(status)
        assert _agree(cert[(i, eps)], status), (name, cert[(i, eps)], status)
        if status == "sat":
            ort_check(onnx_path, folder / name, text, int(labels[i]))
    return statuses


@pytest.mark.parametrize("attack_steps", [50, 0])
def test_agrees_with_certify_and_onnxruntime(fc_onnx: Path, shared_data: Path, tmp_path: Path,
                                             attack_steps: int) -> None:
    """With the attack (sat from PGD) and without it (every sat from the MIP, every unsat from bounds or MIP)."""
    ds = load_dataset("mnist", split="test", data_dir=shared_data)
    indices, eps_list = list(range(6)), [0.02, 0.04]
    inst = write_instances(tmp_path, fc_onnx.name, ds.x, ds.y, indices, eps_list, 60)
    cert = certify_statuses(fc_onnx, shared_data, indices, eps_list, tmp_path, 60)
    statuses = check_agreement(fc_onnx, tmp_path, inst, cert, ds.y, tmp_path, ["--attack-steps", str(attack_steps)], 60)
    # a tiny MLP: both verifiers decide everything, so they must give the same answer
    assert all(s in ("sat", "unsat") for s in statuses) and "unknown" not in cert.values()
    for d, s in zip(inst, statuses):
        name, i, eps = d["vnnlib"], d["index"], d["eps"]
        assert (s == "sat") == (cert[(i, eps)] in ("misclassified", "falsified")), name
    assert "sat" in statuses and "unsat" in statuses  # both answers are exercised


@pytest.mark.slow
def test_exported_cnn_agrees_with_certify(shared_data: Path, tmp_path: Path) -> None:
    """The shipped MNIST CNN (models/mnist_cnn_small_plain.mat) exported to ONNX: 10 points at three radii (~15 min)."""
    onnx_path = tmp_path / "cnn.onnx"
    save_model(load_model(REPO / "models" / "mnist_cnn_small_plain.mat"), onnx_path, format="onnx")
    ds = load_dataset("mnist", split="test", data_dir=shared_data)
    indices, eps_list = list(range(10)), [0.005, 0.01, 0.02]
    inst = write_instances(tmp_path, onnx_path.name, ds.x, ds.y, indices, eps_list, 60)
    cert = certify_statuses(onnx_path, shared_data, indices, eps_list, tmp_path, 60)
    statuses = check_agreement(onnx_path, tmp_path, inst, cert, ds.y, tmp_path, [], 60)
    decided = sum(s in ("sat", "unsat") for s in statuses)
    assert decided >= 0.8 * len(statuses)


def test_batch_mode_summary_and_result_files(fc_onnx: Path, shared_data: Path, tmp_path: Path, capsys) -> None:
    ds = load_dataset("mnist", split="test", data_dir=shared_data)
    folder = tmp_path / "bench"
    folder.mkdir()
    (folder / "onnx").mkdir()
    (folder / "onnx" / "fc.onnx").write_bytes(fc_onnx.read_bytes())
    inst = write_instances(folder, "onnx/fc.onnx", ds.x, ds.y, [0, 1, 2], [0.02, 0.08], 30)
    out = tmp_path / "summary.csv"
    code = run_cli(["vnnlib", "--instances", str(folder / "instances.csv"), "--output", str(out), "--results-dir",
                    str(tmp_path / "results"), "-q"])
    assert code == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["instances", "sat", "unsat", "timeout", "unknown", "error", "seconds"]
    counts = dict(zip(table[0].split(), table[1].split()))
    import csv

    rows = list(csv.DictReader(out.read_text().splitlines()))
    assert len(rows) == len(inst) == int(counts["instances"])
    for key in ("sat", "unsat"):
        assert int(counts[key]) == sum(r["result"] == key for r in rows)
    for r, d in zip(rows, inst):
        name, i = d["vnnlib"], d["index"]
        text = (tmp_path / "results" / f"fc__{name.removesuffix('.vnnlib')}.txt").read_text()
        assert text.split("\n")[0] == r["result"]
        if r["result"] == "sat":
            ort_check(folder / "onnx" / "fc.onnx", folder / name, text, int(ds.y[i]))
    # --check only loads and parses
    assert run_cli(["vnnlib", "--instances", str(folder / "instances.csv"), "--check"]) == 0
    assert capsys.readouterr().out.startswith(f"ok: {len(inst)} of {len(inst)}")


def test_modes_agree_and_no_mip_is_unknown(fc_onnx: Path, shared_data: Path, tmp_path: Path, capsys) -> None:
    ds = load_dataset("mnist", split="test", data_dir=shared_data)
    inst = write_instances(tmp_path, str(fc_onnx), ds.x, ds.y, [0, 3], [0.05], 30)
    for name in (d["vnnlib"] for d in inst):
        got = []
        for extra in ([], ["--mode", "indicator"], ["--attack-steps", "0"]):
            assert run_cli(["vnnlib", "--onnx", str(fc_onnx), "--vnnlib", str(tmp_path / name), *extra]) == 0
            got.append(capsys.readouterr().out.split()[0])
        assert len(set(got)) == 1 and got[0] in ("sat", "unsat"), got
        assert run_cli(["vnnlib", "--onnx", str(fc_onnx), "--vnnlib", str(tmp_path / name), "--no-mip",
                        "--attack-steps", "0"]) == 0
        assert capsys.readouterr().out.split()[0] in (got[0], "unknown")


def test_bad_input_is_one_line_exit_2(fc_onnx: Path, tmp_path: Path, capsys) -> None:
    good = tmp_path / "p.vnnlib"
    good.write_text(robustness_vnnlib(np.zeros(784), np.full(784, 0.01), 0, 10))
    wrong_size = tmp_path / "small.vnnlib"
    wrong_size.write_text(robustness_vnnlib(np.zeros(5), np.ones(5), 0, 10))
    bad_csv = tmp_path / "instances.csv"
    bad_csv.write_text(f"{fc_onnx},p.vnnlib,60\n{fc_onnx},p.vnnlib\n")
    neg_csv = tmp_path / "neg.csv"
    neg_csv.write_text(f"{fc_onnx},p.vnnlib,-5\n")
    broken = tmp_path / "broken.vnnlib"
    broken.write_text("(declare-const X_0 Real)\n(assert (<= X_0 1)\n")
    cases = [
        (["--onnx", str(fc_onnx)], "give --onnx"),
        (["--onnx", str(fc_onnx), "--vnnlib", str(good), "--instances", str(bad_csv)], "not both"),
        (["--onnx", str(fc_onnx), "--vnnlib", str(wrong_size)], "declares 5 inputs"),
        (["--onnx", str(fc_onnx), "--vnnlib", str(broken)], f"{broken}:2:"),
        (["--onnx", str(tmp_path / "missing.onnx"), "--vnnlib", str(good)], "missing.onnx"),
        (["--onnx", str(fc_onnx), "--vnnlib", str(good), "--timeout", "-1"], "timeout"),
        (["--onnx", str(fc_onnx), "--vnnlib", str(good), "--mode", "both"], "mode"),
        (["--instances", str(bad_csv)], f"{bad_csv}:2: expected onnx,vnnlib,timeout"),
        (["--instances", str(neg_csv)], f"{neg_csv}:1: timeout must be positive"),
        (["--instances", str(bad_csv), "--output", str(tmp_path / "s.txt")], "--output must end in .csv or .json"),
    ]
    for args, words in cases:
        assert run_cli(["vnnlib", *args]) == 2, args
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and "\n" not in err and words in err, (args, err)


def test_vnncomp_scripts(fc_onnx: Path, tmp_path: Path) -> None:
    """prepare_instance.sh / run_instance.sh with the competition's arguments write the result file."""
    prop = tmp_path / "p.vnnlib"
    x = np.full(784, 0.5)
    prop.write_text(robustness_vnnlib(x - 0.001, x + 0.001, 3, 10))
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    scripts = REPO / "scripts" / "vnncomp"
    p = subprocess.run(["bash", str(scripts / "prepare_instance.sh"), "v1", "mnist", str(fc_onnx), str(prop)],
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    result = tmp_path / "out" / "result.txt"
    p = subprocess.run(["bash", str(scripts / "run_instance.sh"), "v1", "mnist", str(fc_onnx), str(prop), str(result),
                        "60"], env=env, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr
    status = result.read_text().split("\n")[0]
    assert status in ("sat", "unsat")
    net = load_model(fc_onnx)
    label = 3
    y = net.forward(torch.tensor(x)[None].reshape(1, 1, 28, 28)).numpy()[0]
    if status == "sat":
        ort_check(fc_onnx, prop, result.read_text(), label)
    else:  # a certified robust point: the centre is classified as 3 with nothing at least as high
        assert np.delete(y, label).max() < y[label]
    bad = subprocess.run(["bash", str(scripts / "prepare_instance.sh"), "v2", "mnist", str(fc_onnx), str(prop)],
                         env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "v1" in bad.stderr
