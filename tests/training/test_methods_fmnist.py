"""Each of the other seeds' methods trains through ``train-mmr`` on Fashion-MNIST (test-sized: 300
points, one epoch) and its model goes through ``verify certify`` (or, for the FPD, ``verify attack``).

Checks are on values: the certify rows agree with the saved model's own predictions, a verified
example is one a strong PGD cannot break, the SSP file keeps its growth-ratio groups, BatchNorm
projection holds in the trained weights, and the logged terms are the method's.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from training.cli import main as train_main
from verify.cli import main as verify_main

SUBSET = ["--dataset", "fmnist", "--train-subset", "300", "--epochs", "1", "--batch-size", "50", "--quiet"]


def _train(args: list[str], out: Path, data: Path) -> None:
    with pytest.raises(SystemExit) as e:
        train_main([*SUBSET, "--data-dir", str(data), *args, "--out", str(out), "--run-dir", str(out.parent / "run")])
    assert int(e.value.code or 0) == 0


def _verify(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as e:
        verify_main(args)
    out = capsys.readouterr()
    assert int(e.value.code or 0) == 0, out.err
    return out.out


def _log(out: Path) -> dict[str, str]:
    with open(out.parent / "run" / "log.csv") as fh:
        return list(csv.DictReader(fh))[-1]


def _certify_and_check(model: Path, data: Path, capsys, eps: float = 0.01, n: int = 6) -> list[dict]:
    from verify.attacks import pgd_attack
    from verify.data import load_dataset
    from verify.formats import load_model
    from verify.spec import LpBall

    res = model.parent / "cert.json"
    _verify(["certify", "--model", str(model), "--dataset", "fmnist", "--data-dir", str(data), "-n", str(n), "--p", "inf",
             "--eps", str(eps), "--timeout", "10", "-q", "--output", str(res)], capsys)
    doc = json.loads(res.read_text())
    rows = sorted(doc["examples"], key=lambda r: r["index"])
    assert [r["index"] for r in rows] == list(range(n))
    net = load_model(model)
    test = load_dataset("fmnist", split="test", data_dir=data)
    x, y = test.x[:n], test.y[:n]
    assert [r["prediction"] for r in rows] == net.predict(x).tolist()
    assert doc["clean_error"] <= doc["lb"] <= doc["ub"] <= 1
    attack = pgd_attack(net, LpBall.make(x.double(), eps, "inf"), y, steps=100, restarts=2, seed=3)
    for r in rows:
        assert r["status"] in ("verified", "falsified", "unknown", "misclassified")
        if r["status"] == "verified":
            assert not bool(attack.success[r["index"]])
        if r["status"] == "misclassified":
            assert r["prediction"] != r["label"]
    return rows


@pytest.mark.parametrize("block", ["ssp2", "ark"])
def test_ssp_adversarial_training_then_certify(tmp_path, shared_data, capsys, block: str) -> None:
    from verify.formats import load_model

    out = tmp_path / "ssp.h5"
    _train(["--nn-type", "ssp_mnist", "--block", block, "--blocks", "1", "--width", "4", "--method", "at", "--eps", "0.1",
            "--ae-frac", "1", "--pgd-steps", "5", "--lr", "0.01"], out, shared_data)
    net = load_model(out)
    assert net.metadata["block"] == block and len(net.metadata["groups"]) == 1
    if block == "ark":
        assert 0 < net.metadata["ark_c2"][0] < 1
    _certify_and_check(out, shared_data, capsys)


def test_norm_decay_with_batchnorm_projection_then_certify(tmp_path, shared_data, capsys) -> None:
    out = tmp_path / "nd.h5"
    _train(["--nn-type", "ssp_mnist", "--block", "res", "--blocks", "1", "--width", "4", "--method", "norm-decay",
            "--norm-decay-lambda", "0.01", "--bn-max-norm", "1.5", "--lr", "0.01"], out, shared_data)
    row = _log(out)
    assert float(row["norm_sum"]) > 0 and float(row["loss"]) > float(row["ce"])
    state = torch.load(out.parent / "run" / "checkpoint.pt", weights_only=False)["model"]
    scales = [(state[k] / torch.sqrt(state[k.replace("weight", "running_var")] + 1e-5)).abs().max()
              for k in state if k.endswith(".weight") and k.replace("weight", "running_var") in state]
    assert scales and max(float(s) for s in scales) <= 1.5 + 1e-6  # projected after every step
    _certify_and_check(out, shared_data, capsys)


@pytest.mark.parametrize("method,extra", [("lipschitz", ["--lipschitz-lambda", "0.5"]), ("j1", ["--eps", "2.0"]),
                                          ("j2", ["--eps", "2.0"]), ("jinf", ["--eps", "1.0"])])
def test_lipschitz_and_j_training_then_certify(tmp_path, shared_data, capsys, method: str, extra: list[str]) -> None:
    out = tmp_path / f"{method}.h5"
    _train(["--nn-type", "fc1", "--method", method, *extra], out, shared_data)
    row = _log(out)
    if method == "lipschitz":
        assert float(row["max_grad_l2"]) > 0
        assert float(row["loss"]) == pytest.approx(float(row["ce"]) + 0.5 * float(row["max_grad_l2"]), rel=1e-5)
    rows = _certify_and_check(out, shared_data, capsys)
    assert sum(r["prediction"] == r["label"] for r in rows) >= 3  # it learned something in one epoch


def test_fpd_two_phase_training_then_attack(tmp_path, shared_data, capsys) -> None:
    from verify.attacks import pgd_attack
    from verify.data import load_dataset
    from verify.exported import load_exported
    from verify.spec import LpBall

    out = tmp_path / "fpd.pt2"
    _train(["--nn-type", "fpd_small", "--width", "4", "--method", "fpd", "--eps", "0.1", "--fpd-threshold", "0.1",
            "--lr", "0.01", "--train-subset", "600"], out, shared_data)
    row = _log(out)
    assert 0 < float(row["phase2"]) <= 1  # some batches reached phase 2 at this threshold
    res = tmp_path / "att.json"
    stdout = _verify(["attack", "--model", str(out), "--dataset", "fmnist", "--data-dir", str(shared_data), "-n", "20",
                      "--p", "inf", "--eps", "0.05", "--steps", "10", "--output", str(res)], capsys)
    assert "n=20" in stdout
    doc = json.loads(res.read_text())
    e = load_exported(out)
    test = load_dataset("fmnist", split="test", data_dir=shared_data)
    x, y = test.x[:20], test.y[:20]
    assert [r["prediction"] for r in doc["examples"]] == e.predict(x).tolist()
    ref = pgd_attack(e, LpBall.make(x, 0.05, "inf"), y, steps=10, seed=0)
    assert [r["adversarial"] for r in doc["examples"]] == ref.success.tolist()
    # bounds and certify refuse it: not piecewise linear
    with pytest.raises(SystemExit) as ex:
        verify_main(["certify", "--model", str(out), "--dataset", "fmnist", "--data-dir", str(shared_data), "-n", "2",
                     "--p", "inf", "--eps", "0.1"])
    assert ex.value.code == 2 and "only `verify attack`" in capsys.readouterr().err


def test_fpd_needs_a_pt2_output(tmp_path, shared_data, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        train_main([*SUBSET, "--nn-type", "fpd_small", "--method", "fpd", "--out", str(tmp_path / "fpd.h5")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ".pt2" in err[0]


def test_ssp_refuses_a_mat_output_before_training(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        train_main([*SUBSET, "--nn-type", "ssp_mnist", "--method", "at", "--out", str(tmp_path / "ssp.mat")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "residual" in err[0]
    assert not (tmp_path / "ssp.mat").exists()
