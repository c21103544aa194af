"""``verify analyze norms|lipschitz|pgr``: outputs equal the API's values; bad input -> one line, exit 2."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from tests.bounds.nets import residual_net
from verify.analysis import lipschitz_product_bound, lipschitz_summary, network_norms, perturbation_growth
from tests.cli_util import run_captured as _run


@pytest.fixture()
def model(tmp_path):
    from verify.formats import save_model

    net = residual_net(0)
    path = tmp_path / "net.h5"
    save_model(net, path)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, *net.input_shape, generator=g)
    y = net.predict(x)
    pts = tmp_path / "pts.npz"
    np.savez(pts, x=x.numpy(), y=y.numpy())
    return net, path, pts, x, y


def test_norms_command(model, tmp_path, capsys) -> None:
    net, path, _, _, _ = model
    out, png = tmp_path / "n.json", tmp_path / "n.png"
    code, stdout, err = _run(["analyze", "norms", str(path), "--power-iters", "50", "-o", str(out), "--plot", str(png)], capsys)
    assert code == 0, err
    doc = json.loads(out.read_text())
    ref = network_norms(net, power_iters=50)
    assert [r["index"] for r in doc["examples"]] == [r.index for r in ref]
    for row, r in zip(doc["examples"], ref):
        assert row["l1"] == pytest.approx(r.l1, rel=1e-12) and row["linf"] == pytest.approx(r.linf, rel=1e-12)
    assert doc["product_upper_bounds"]["inf"] == pytest.approx(lipschitz_product_bound(net, "inf"), rel=1e-12)
    assert "loose upper bound" in stdout
    assert png.read_bytes()[:4] == b"\x89PNG"
    csv_out = tmp_path / "n.csv"
    code, _, err = _run(["analyze", "norms", str(path), "-o", str(csv_out)], capsys)
    assert code == 0, err
    rows = list(csv.DictReader(csv_out.open()))
    assert len(rows) == len(ref) and rows[0]["in_shape"] == "x".join(map(str, ref[0].in_shape))


def test_lipschitz_command(model, tmp_path, capsys) -> None:
    net, path, pts, x, y = model
    out = tmp_path / "l.json"
    code, stdout, err = _run(["analyze", "lipschitz", str(path), "--inputs", str(pts), "--p", "2", "--eps", "0.01",
                              "-o", str(out), "--plot", str(tmp_path / "l.png")], capsys)
    assert code == 0, err
    doc = json.loads(out.read_text())
    ref = lipschitz_summary(net, x, y, p=2, eps=0.01)
    assert doc["grad_loss_max"] == pytest.approx(ref.grad_loss_max, rel=1e-9)
    assert doc["product_bound"] == pytest.approx(ref.product_bound, rel=1e-12)
    assert doc["certified_bounds"] == ref.certified_bounds
    assert max(r["grad_loss_norm"] for r in doc["examples"]) == pytest.approx(ref.grad_loss_max, rel=1e-9)
    assert "certified at eps 0.01 by crown" in stdout
    assert (tmp_path / "l.png").exists()


def test_pgr_command(model, tmp_path, capsys) -> None:
    net, path, pts, x, y = model
    out = tmp_path / "p.csv"
    code, stdout, err = _run(["analyze", "pgr", str(path), "--inputs", str(pts), "--eps", "0.1", "--steps", "5",
                              "-o", str(out), "--plot", str(tmp_path / "p.png")], capsys)
    assert code == 0, err
    ref = perturbation_growth(net, x, y, eps=0.1, p="inf", steps=5)
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == len(ref.groups)
    for row, g in zip(rows, ref.groups):
        assert float(row["pgr_l2"]) == pytest.approx(g.pgr_l2, rel=1e-9)
    assert (tmp_path / "p.png").exists()


@pytest.mark.parametrize("argv,needle", [
    (["analyze", "norms", "missing.h5"], "not found"),
    (["analyze", "norms", "{model}", "-o", "x.txt"], "--output"),
    (["analyze", "norms", "{model}", "--plot", "x.jpg"], "--plot"),
    (["analyze", "lipschitz", "{model}", "--inputs", "{pts}", "--p", "3"], "unknown norm"),
    (["analyze", "lipschitz", "{model}", "--inputs", "{pts}", "--eps", "-1"], "eps"),
    (["analyze", "lipschitz", "{model}", "--inputs", "{pts}", "--method", "magic"], "method"),
    (["analyze", "lipschitz", "{model}"], "no data"),
    (["analyze", "pgr", "{model}", "--inputs", "{pts}", "--eps", "0"], "eps"),
    (["analyze", "pgr", "{model}", "--inputs", "{pts}", "--eps", "0.1", "--groups", "1:999"], "outside"),
    (["analyze", "pgr", "{model}", "--inputs", "{pts}", "--eps", "0.1", "--groups", "a:b"], "--groups"),
    (["analyze", "pgr", "{model}", "--inputs", "{pts}"], "--eps"),
    (["analyze", "bogus"], "bogus"),
])
def test_bad_input_is_one_line_and_exit_2(model, tmp_path, capsys, argv, needle) -> None:
    _, path, pts, _, _ = model
    argv = [a.format(model=path, pts=pts) for a in argv]
    code, _, err = _run(argv, capsys)
    assert code == 2
    assert err.startswith("error:") and err.count("\n") == 1 and needle in err
