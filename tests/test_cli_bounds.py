"""``verify bounds``: results on a real model file, and bad input -> exit 2 with one line."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from verify.network import Linear, Network, ReLU
from tests.cli_util import run_captured as _run


@pytest.fixture()
def model_and_inputs(tmp_path):
    pytest.importorskip("verify.formats")
    from verify.formats import save_model

    g = torch.Generator().manual_seed(0)
    net = Network([Linear(torch.randn(16, 8, generator=g) * 0.5, torch.randn(16, generator=g) * 0.1), ReLU(),
                   Linear(torch.randn(3, 16, generator=g) * 0.5, torch.randn(3, generator=g) * 0.1)], (8,))
    path = tmp_path / "net.pt"
    save_model(net, path)
    x = torch.rand(12, 8, generator=g)
    y = net.predict(x)
    y[0] = (y[0] + 1) % 3  # one misclassified point: never certified
    inputs = tmp_path / "pts.npz"
    np.savez(inputs, x=x.numpy(), y=y.numpy())
    return net, path, inputs, x, y


def test_bounds_command_writes_rows_matching_the_api(model_and_inputs, tmp_path, capsys) -> None:
    from verify.bounds import certify_with_bounds
    from verify.spec import LpBall

    net, path, inputs, x, y = model_and_inputs
    out = tmp_path / "res.json"
    code, stdout, err = _run(["bounds", "--model", str(path), "--inputs", str(inputs), "--p", "inf", "--eps", "0.02",
                              "--method", "crown", "--output", str(out)], capsys)
    assert code == 0, err
    assert "n=12" in stdout and "certified=" in stdout
    doc = json.loads(out.read_text())
    rows = doc["examples"]
    assert [r["index"] for r in rows] == list(range(12))
    assert rows[0]["certified"] is False  # misclassified
    ref = certify_with_bounds(net, LpBall.make(x, 0.02, "inf"), y, method="crown")
    for r, c, m in zip(rows, ref.certified.tolist(), ref.margin_lb.tolist()):
        assert r["certified"] == (c and r["prediction"] == r["label"])
        assert math.isclose(float(r["margin_lb"]), m, rel_tol=1e-9, abs_tol=1e-12)
    assert doc["certified_fraction"] == sum(r["certified"] for r in rows) / 12


@pytest.mark.parametrize("args,needle", [
    (["--p", "3", "--eps", "0.1"], "norm"),
    (["--p", "inf", "--eps", "-1"], "eps"),
    (["--p", "inf", "--eps", "nan"], "NaN"),
])
def test_bad_spec_exits_2_with_one_line(args, needle, tmp_path, capsys) -> None:
    code, _, err = _run(["bounds", "--model", str(tmp_path / "none.pt"), "--dataset", "mnist", *args], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0]


def test_data_outside_the_box_exits_2(model_and_inputs, tmp_path, capsys) -> None:
    _, path, _, x, y = model_and_inputs
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=(x * 3).numpy(), y=y.numpy())
    code, _, err = _run(["bounds", "--model", str(path), "--inputs", str(bad), "--p", "inf", "--eps", "0.1"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "outside" in lines[0]


def test_lp_with_l2_exits_2(model_and_inputs, capsys) -> None:
    _, path, inputs, _, _ = model_and_inputs
    code, _, err = _run(["bounds", "--model", str(path), "--inputs", str(inputs), "--p", "2", "--eps", "0.1",
                         "--method", "lp"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "L2" in err
