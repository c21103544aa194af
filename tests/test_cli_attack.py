"""``verify attack`` through the real CLI entry point, checked against the Python API and the data."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from torch import nn

from verify.attacks import pgd_attack
from verify.cli import main
from verify.data import load_dataset
from verify.torch_modules import network_from_torch
from verify.spec import LpBall


@pytest.fixture(scope="module")
def softmax_model(shared_data, tmp_path_factory):
    """A linear softmax classifier (one epoch of Adam on the shared 10k MNIST training subset), saved as .h5."""
    from verify.formats import save_model

    torch.manual_seed(0)
    train = load_dataset("mnist-train-10k", data_dir=shared_data)
    module = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    opt = torch.optim.Adam(module.parameters(), lr=1e-2)
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    for i in range(0, len(train), 100):
        idx = perm[i : i + 100]
        opt.zero_grad()
        nn.functional.cross_entropy(module(train.x[idx]), train.y[idx]).backward()
        opt.step()
    net = network_from_torch(module, (1, 28, 28))
    path = tmp_path_factory.mktemp("attack") / "softmax.h5"
    save_model(net, path)
    return path


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def test_attack_json_matches_the_api(softmax_model, shared_data, tmp_path, capsys):
    from verify.formats import load_model

    out_json = tmp_path / "res.json"
    code, out, err = run(["attack", "--model", str(softmax_model), "--p", "inf", "--eps", "0.05", "--dataset", "mnist",
                          "--data-dir", str(shared_data), "-n", "60", "--steps", "20", "--seed", "1",
                          "--output", str(out_json)], capsys)
    assert code == 0, err
    doc = json.loads(out_json.read_text())
    rows = doc["examples"]
    assert [r["index"] for r in rows] == list(range(60))

    # the same numbers straight from the data and the Python API
    net = load_model(softmax_model)
    test = load_dataset("mnist", data_dir=shared_data)
    x, y = test.x[:60], test.y[:60]
    pred = net.predict(x)
    res = pgd_attack(net, LpBall.make(x, 0.05, "inf"), y, steps=20, seed=1)
    assert [r["label"] for r in rows] == y.tolist() and [r["prediction"] for r in rows] == pred.tolist()
    assert [r["adversarial"] for r in rows] == res.success.tolist()
    assert [r["margin"] for r in rows] == pytest.approx(res.margin.tolist(), abs=1e-12)
    assert all((r["margin"] > 0) == r["adversarial"] for r in rows)

    correct = (pred == y)
    n_adv = int(res.success.sum())
    broken = int((res.success & correct).sum())
    assert doc["clean_accuracy"] == pytest.approx(float(correct.float().mean()))
    assert doc["robust_accuracy_ub"] == pytest.approx(1 - n_adv / 60)
    assert doc["attack_success_rate"] == pytest.approx(broken / int(correct.sum()))
    assert 0 < broken < int(correct.sum())  # eps 0.05 breaks some, not all, of a linear model's points
    assert f"clean accuracy={doc['clean_accuracy']:.4f}" in out
    assert f"robust accuracy <= {doc['robust_accuracy_ub']:.4f}" in out
    assert f"({broken}/{int(correct.sum())} correct points)" in out


def test_attack_csv_and_indices(softmax_model, shared_data, tmp_path, capsys):
    out_csv = tmp_path / "res.csv"
    code, out, err = run(["attack", "--model", str(softmax_model), "--p", "2", "--eps", "1.0", "--dataset", "mnist",
                          "--data-dir", str(shared_data), "--indices", "3,9,27", "--steps", "10",
                          "--output", str(out_csv)], capsys)
    assert code == 0, err
    with open(out_csv) as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["index"]) for r in rows] == [3, 9, 27]
    test = load_dataset("mnist", data_dir=shared_data)
    assert [int(r["label"]) for r in rows] == test.y[[3, 9, 27]].tolist()
    assert all(r["adversarial"] in ("True", "False") for r in rows)
    assert all((float(r["margin"]) > 0) == (r["adversarial"] == "True") for r in rows)
