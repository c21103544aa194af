"""Bad input to the attacks: a VerifyError subclass with a one-line message (Python API and CLI)."""

from __future__ import annotations

import math

import pytest
import torch

from verify.attacks import PGD, fgsm, pgd_attack
from verify.errors import DataError, SpecError, VerifyError
from verify.network import Flatten, Linear, Network
from verify.spec import LpBall
from tests.cli_util import run_captured as run_cli


def tiny_net() -> Network:
    g = torch.Generator().manual_seed(0)
    return Network([Flatten(), Linear(torch.randn(3, 16, generator=g))], (1, 4, 4))


def good() -> tuple[Network, torch.Tensor, torch.Tensor]:
    return tiny_net(), torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 0, 1])


def raises(kind: type[VerifyError], match: str, fn, *args, **kw) -> None:
    with pytest.raises(kind, match=match) as info:
        fn(*args, **kw)
    assert "\n" not in str(info.value)


def test_bad_norm():
    net, x, y = good()
    raises(SpecError, "unknown norm", LpBall.make, x, 0.1, 3)
    raises(SpecError, "unknown norm", pgd_attack, net, LpBall(x, torch.full((5,), 0.1, dtype=torch.float64), 3.0), y)
    raises(SpecError, "unknown norm", fgsm, net, LpBall(x, torch.full((5,), 0.1, dtype=torch.float64), 0.5), y)


@pytest.mark.parametrize("eps, what", [(-0.1, "must be >= 0"), (math.nan, "NaN"), (math.inf, "infinite")])
def test_bad_eps(eps, what):
    net, x, y = good()
    raises(SpecError, what, LpBall.make, x, eps, "inf")
    raises(SpecError, what, pgd_attack, net, LpBall(x, torch.full((5,), eps, dtype=torch.float64), math.inf), y)


def test_data_outside_the_box():
    net, x, y = good()
    raises(DataError, "outside", LpBall.make, x + 1.5, 0.1, "inf")
    raises(DataError, r"outside the input box \[0, 1\]", pgd_attack, net,
           LpBall(x + 1.5, torch.full((5,), 0.1, dtype=torch.float64), math.inf), y)
    raises(SpecError, "not inside the model's input range", pgd_attack, net,
           LpBall(x, torch.full((5,), 0.1, dtype=torch.float64), math.inf, -1.0, 2.0), y)
    bad = x.clone()
    bad[0, 0, 0, 0] = math.nan
    raises(DataError, "finite", pgd_attack, net, LpBall(bad, torch.full((5,), 0.1, dtype=torch.float64), math.inf), y)


def test_wrong_shape_and_labels():
    net, x, y = good()
    raises(DataError, r"inputs have shape \(16,\), the model expects \(1, 4, 4\)", pgd_attack, net,
           LpBall.make(x.reshape(5, 16), 0.1, "inf"), y)
    ball = LpBall.make(x, 0.1, "inf")
    raises(DataError, "labels for 5 examples", pgd_attack, net, ball, y[:4])
    raises(DataError, "labels for 5 examples", pgd_attack, net, ball, y[:, None])
    raises(DataError, r"labels must lie in 0..2", pgd_attack, net, ball, torch.tensor([0, 1, 2, 3, 0]))
    raises(DataError, "labels must be integers", pgd_attack, net, ball, torch.tensor([0.5, 1, 2, 0, 1]))
    raises(SpecError, "LpBall", pgd_attack, net, (x, 0.1), y)


def test_bad_options():
    raises(SpecError, "steps >= 1", PGD, steps=0)
    raises(SpecError, "restarts >= 1", PGD, restarts=0)
    raises(SpecError, "step size", PGD, step_size=-1.0)
    raises(SpecError, "step size", PGD, step_size=math.nan)
    raises(SpecError, "unknown attack loss", PGD, loss="hinge")
    raises(SpecError, "unknown step schedule", PGD, schedule="cosine")
    raises(SpecError, "l1_sparsity", PGD, l1_sparsity=0.0)


def test_empty_batch_is_fine():
    net = tiny_net()
    res = pgd_attack(net, LpBall.make(torch.zeros(0, 1, 4, 4), 0.1, "inf"), torch.zeros(0, dtype=torch.long))
    assert res.x_adv.shape == (0, 1, 4, 4) and res.success.numel() == 0


# --------------------------------------------------------------------------- the CLI


@pytest.fixture
def model_file(tmp_path):
    from verify.formats import save_model

    g = torch.Generator().manual_seed(0)
    net = Network([Flatten(), Linear(torch.randn(10, 784, generator=g) * 0.01)], (1, 28, 28))
    path = tmp_path / "net.h5"
    save_model(net, path)
    return path


@pytest.mark.parametrize("args, message", [
    (["--p", "3", "--eps", "0.1"], "unknown norm"),
    (["--p", "inf", "--eps", "-0.1"], "eps must be >= 0"),
    (["--p", "inf", "--eps", "nan"], "eps is NaN"),
    (["--p", "inf", "--eps", "0.1", "--steps", "0"], "steps >= 1"),
    (["--p", "inf", "--eps", "0.1", "--restarts", "0"], "restarts >= 1"),
    (["--p", "inf", "--eps", "0.1", "--step-size", "-1"], "step size"),
    (["--p", "inf", "--eps", "0.1", "--output", "x.txt"], "--output must end in .json or .csv"),
])
def test_cli_bad_spec(model_file, shared_data, capsys, args, message):
    code, out, err = run_cli(["attack", "--model", str(model_file), "--dataset", "mnist",
                              "--data-dir", str(shared_data), "-n", "5", *args], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_cli_bad_data(model_file, tmp_path, capsys):
    import numpy as np

    np.savez(tmp_path / "out.npz", x=np.full((3, 1, 28, 28), 2.0), y=np.array([0, 1, 2]))
    np.savez(tmp_path / "shape.npz", x=np.zeros((3, 3, 32, 32)), y=np.array([0, 1, 2]))
    np.savez(tmp_path / "len.npz", x=np.zeros((3, 1, 28, 28)), y=np.array([0, 1]))
    for name, message in (("out", "outside the model's input range"), ("shape", "the model expects (1, 28, 28)"),
                          ("len", "3 images but 2 labels")):
        code, out, err = run_cli(["attack", "--model", str(model_file), "--inputs", str(tmp_path / f"{name}.npz"),
                                  "--p", "inf", "--eps", "0.1"], capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, err = run_cli(["attack", "--model", str(model_file), "--dataset", "mnist", "--data-dir", str(empty),
                              "--p", "inf", "--eps", "0.1"], capsys)
    assert code == 2 and "not found" in err and len(err.strip().splitlines()) == 1, err
