"""Feature pyramid decoder: the denoising block's formula, the two training phases, and the
attack-only .pt2 export that ``verify attack`` evaluates (and every other command refuses)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.fpd import Denoise, FPDNet, denoise, export_classifier, fpd_loss, fpd_small, gram_term
from verify.errors import ModelError
from tests.cli_util import run_captured as _run


def test_gram_term_matches_explicit_sums() -> None:
    """out[c] = sum_k (sum_p x[k,p] x[c,p]) x[k] / (H W), by loops."""
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    n, c, h, w = x.shape
    ref = torch.zeros_like(x)
    for i in range(n):
        for a in range(c):
            for k in range(c):
                g = float((x[i, k] * x[i, a]).sum())
                ref[i, a] += g * x[i, k] / (h * w)
    assert torch.allclose(gram_term(x), ref, atol=1e-12)
    # the authors' einsum form
    g = torch.einsum("nihw,njhw->nij", x, x)
    assert torch.allclose(denoise(x), torch.einsum("nij,nihw->njhw", g, x) / (h * w) + x, atol=1e-12)


def test_denoising_block_is_parameter_free_and_not_piecewise_linear() -> None:
    assert list(Denoise().parameters()) == []
    x = torch.rand(1, 2, 3, 3, dtype=torch.float64)
    # cubic: scaling the input by t scales the Gram term by t^3
    assert torch.allclose(gram_term(2 * x), 8 * gram_term(x), atol=1e-12)


def _eval_fpd(width: int = 3, seed: int = 0) -> FPDNet:
    torch.manual_seed(seed)
    m = fpd_small((1, 28, 28), 10, width=width)
    g = torch.Generator().manual_seed(seed)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.copy_(0.1 * torch.rand(mod.num_features, generator=g))
            mod.running_var.copy_(0.5 + torch.rand(mod.num_features, generator=g))
    return m.eval()


def test_restore_and_classify_shapes_and_shared_backbone() -> None:
    m = _eval_fpd()
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        r, z = m.restore_and_classify(x)
        assert r.shape == x.shape and z.shape == (4, 10)
        assert torch.equal(m(x), z)  # forward: the pre-tanh logits
        # the classifier is the same backbone run on r + G(x) x / (H W)
        feats = m.features(r + gram_term(x))
        assert torch.allclose(m.fc(feats[-1].mean(dim=(2, 3))), z, atol=1e-6)


def test_phase_one_trains_restoration_only() -> None:
    m = _eval_fpd().train()
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    r = fpd_loss(m, x, y, noise=0.1, threshold=1e-12, generator=torch.Generator().manual_seed(0))
    assert r.phase == 1 and r.terms["phase2"] == 0.0
    noisy = (x + 0.1 * (2 * torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) - 1)).clamp(0, 1)
    assert torch.allclose(r.loss, F.mse_loss(m.restore_and_classify(noisy)[0], x), atol=1e-7)  # the MSE alone
    r.loss.backward()
    assert m.fc.weight.grad is None  # the classification layer gets no gradient in phase 1
    assert m.to_image.weight.grad is not None and m.stages[0][0].weight.grad is not None


def test_phase_two_adds_classification_and_the_second_pass() -> None:
    m = _eval_fpd()  # eval mode: BatchNorm uses running statistics, so the loss can be recomputed exactly
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    out = fpd_loss(m, x, y, noise=0.1, threshold=10.0, generator=torch.Generator().manual_seed(0))
    noisy = (x + 0.1 * (2 * torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) - 1)).clamp(0, 1)
    with torch.no_grad():
        rest, z = m.restore_and_classify(noisy)
        rest2, z2 = m.restore_and_classify(rest)
        want = (F.mse_loss(rest, x) + F.cross_entropy(torch.tanh(z), y) + F.mse_loss(rest2, x)
                + F.cross_entropy(torch.tanh(z2), y))
    assert out.phase == 2 and out.terms["phase2"] == 1.0
    assert torch.allclose(out.loss.detach(), want, atol=1e-6)
    assert torch.allclose(out.logits.detach(), z, atol=1e-6)  # pre-tanh logits of the noisy batch
    out.loss.backward()
    assert m.fc.weight.grad is not None and m.fc.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------- export and verify attack


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from verify.exported import load_exported

    m = _eval_fpd(width=2, seed=1)
    path = tmp_path_factory.mktemp("fpd") / "fpd.pt2"
    export_classifier(m, path, input_shape=(1, 28, 28), name="fpd_test")
    return m, path, load_exported(path)


def test_exported_program_is_the_pre_tanh_classifier(exported) -> None:
    m, _, e = exported
    assert e.n_classes == 10 and e.input_shape == (1, 28, 28) and e.input_range == (0.0, 1.0)
    assert e.metadata["output"] == "pre-tanh logits" and e.name == "fpd_test"
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(e(x), m(x), atol=1e-6)
        assert torch.allclose(e(x[:1]), m(x[:1]), atol=1e-6)  # batch of one
        ref64 = _eval_fpd(width=2, seed=1).double()(x.double())
        assert torch.allclose(e(x, dtype=torch.float64), ref64, atol=1e-12)
    assert torch.equal(e.predict(x), m(x).argmax(1))


def test_pgd_through_the_program_is_differentiable_and_confirmed(exported) -> None:
    from verify.attacks import pgd_attack
    from verify.spec import LpBall, margins_f64

    _, _, e = exported
    x = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    y = e.predict(x)
    ball = LpBall.make(x, 0.1, "inf")
    res = pgd_attack(e, ball, y, steps=20, seed=0)
    # every claimed success: inside the ball and misclassified by a float64 forward pass
    assert bool(ball.contains(res.x_adv.double())[res.success].all())
    assert bool((margins_f64(e, res.x_adv, y)[res.success] > 0).all())
    # gradients flow through the program: PGD raises every margin above its clean value
    assert bool((res.margin > margins_f64(e, x, y) + 1e-6).all())


def test_verify_attack_reads_the_program_and_matches_the_api(exported, tmp_path, capsys) -> None:
    from verify.attacks import pgd_attack
    from verify.spec import LpBall

    _, path, e = exported
    x = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(5))
    y = e.predict(x)
    inputs = tmp_path / "pts.npz"
    np.savez(inputs, x=x.numpy(), y=y.numpy())
    out = tmp_path / "att.json"
    code, stdout, err = _run(["attack", "--model", str(path), "--inputs", str(inputs), "--p", "inf", "--eps", "0.05",
                              "--steps", "10", "--output", str(out)], capsys)
    assert code == 0, err
    assert "n=5" in stdout and "clean accuracy=1.0000" in stdout
    rows = json.loads(out.read_text())["examples"]
    ref = pgd_attack(e, LpBall.make(x, 0.05, "inf"), y, steps=10, seed=0)
    assert [r["adversarial"] for r in rows] == ref.success.tolist()


@pytest.mark.parametrize("command", [["bounds", "--method", "ibp"], ["certify"], ["info"]])
def test_other_commands_refuse_the_program(exported, tmp_path, capsys, command: list[str]) -> None:
    _, path, _ = exported
    args = [command[0], "--model", str(path)] if command[0] == "info" else \
        [*command, "--model", str(path), "--dataset", "fmnist", "--p", "inf", "--eps", "0.1", "-n", "2"]
    if command[0] == "info":
        args = ["info", str(path)]
    code, _, err = _run(args, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "only `verify attack`" in lines[0]


def test_bad_program_files_are_one_line_errors(tmp_path) -> None:
    from verify.exported import load_exported, save_exported

    bad = tmp_path / "bad.pt2"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="not a readable torch.export program"):
        load_exported(bad)
    with pytest.raises(ModelError, match="does not exist"):
        load_exported(tmp_path / "missing.pt2")
    foreign = tmp_path / "foreign.pt2"
    prog = torch.export.export(torch.nn.Linear(3, 2), (torch.rand(2, 3),))
    torch.export.save(prog, foreign)
    with pytest.raises(ModelError, match="header"):
        load_exported(foreign)
    with pytest.raises(ModelError, match=".pt2"):
        save_exported(torch.nn.Linear(3, 2), tmp_path / "x.pt", input_shape=(3,))
