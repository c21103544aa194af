"""SSP networks: each block is the Runge-Kutta method it names, and the Network export is exact and verifiable.

Oracles: the Butcher-form formulas of Heun, SSP-RK3, the explicit midpoint rule and the
two-stage second-order family evaluated on f directly (the blocks use Shu-Osher forms); for a
linear f(x) = A x, the stability polynomials of the methods (dense A from the conv); the torch
module in eval mode against the converted Network; sampled margins against bound margins; and
PGD against certify's verdicts.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from training.architectures import build, to_network
from training.ssp import BLOCKS, SSPBlock, SSPGroup, ssp_cifar, ssp_mnist, ssp_network
from verify.network import Residual
from tests.cli_util import run_captured as _run

torch.set_default_dtype(torch.float32)


def _randomise_bn(module: nn.Module, seed: int = 0) -> None:
    """Non-trivial running statistics and affine parameters, so folding is really tested."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(0.1 * torch.rand(c, generator=g) - 0.05)
            m.running_var.copy_(0.05 + 0.1 * torch.rand(c, generator=g))  # small: BN amplifies, the net is not flat
            with torch.no_grad():
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.4 * torch.rand(c, generator=g) - 0.2)


def _block(kind: str, channels: int = 3, seed: int = 0, **kw) -> SSPBlock:
    torch.manual_seed(seed)
    b = SSPBlock(channels, kind, **kw)
    _randomise_bn(b, seed)
    return b.double().eval()


@pytest.fixture()
def x() -> torch.Tensor:
    return torch.randn(4, 3, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def test_res_is_euler(x) -> None:
    b = _block("res")
    with torch.no_grad():
        assert torch.allclose(b(x), x + b.f(x), atol=1e-12)


def test_ssp2_is_heun(x) -> None:
    b = _block("ssp2")
    f = b.f
    with torch.no_grad():
        k1 = f(x)
        k2 = f(x + k1)
        assert torch.allclose(b(x), x + 0.5 * k1 + 0.5 * k2, atol=1e-12)


def test_ssp3_is_shu_osher_rk3_in_butcher_form(x) -> None:
    """SSP-RK3's Butcher tableau: c = (0, 1, 1/2), b = (1/6, 1/6, 2/3)."""
    b = _block("ssp3")
    f = b.f
    with torch.no_grad():
        k1 = f(x)
        k2 = f(x + k1)
        k3 = f(x + 0.25 * k1 + 0.25 * k2)
        assert torch.allclose(b(x), x + (k1 + k2 + 4 * k3) / 6, atol=1e-12)


def test_midrk2_is_the_explicit_midpoint_rule(x) -> None:
    b = _block("midrk2")
    f = b.f
    with torch.no_grad():
        assert torch.allclose(b(x), x + f(x + 0.5 * f(x)), atol=1e-12)


@pytest.mark.parametrize("b_logit", [-2.0, 0.0, 1.0, 3.0])
@pytest.mark.parametrize("a_logit", [-1.0, 0.25, 2.0])
def test_ark_is_the_second_order_family_for_every_a(x, b_logit: float, a_logit: float) -> None:
    """x + (1 - 1/(2c)) f(x) + 1/(2c) f(x + c f(x)) with c = sigmoid(b), whatever the fixed a is."""
    blk = _block("ark", ark_b=b_logit, ark_a_logit=a_logit)
    c = 1 / (1 + math.exp(-b_logit))
    assert float(blk.c2().detach()) == pytest.approx(c, rel=1e-12)
    f = blk.f
    with torch.no_grad():
        k1 = f(x)
        k2 = f(x + c * k1)
        assert torch.allclose(blk(x), x + (1 - 1 / (2 * c)) * k1 + 1 / (2 * c) * k2, atol=1e-10)


def test_ark_at_c_one_is_heun_and_at_one_half_is_the_midpoint(x) -> None:
    heun, mid = _block("ssp2", seed=3), _block("midrk2", seed=3)
    for target, c in ((heun, 1.0 - 1e-15), (mid, 0.5)):
        ark = _block("ark", seed=3)
        ark.f.load_state_dict(target.f.state_dict())
        with torch.no_grad():
            ark.b.fill_(math.log(c / (1 - c)) if c < 1 else 40.0)
            assert torch.allclose(ark(x), target(x), atol=1e-9)


def test_ark_learns_its_stage_coefficient() -> None:
    blk = SSPBlock(2, "ark").train()
    blk(torch.randn(3, 2, 4, 4)).square().sum().backward()
    assert blk.b.grad is not None and blk.b.grad != 0
    assert not any(n == "a_logit" for n, _ in blk.named_parameters())  # a is fixed, as in the paper's runs


# ---------------------------------------------------------------------------- linear f: stability polynomials


def _linear_block(kind: str, conv: nn.Conv2d) -> SSPBlock:
    b = SSPBlock(conv.in_channels, kind).double().eval()
    b.f = conv  # f(x) = A x: every method applies its stability polynomial to A
    return b


def _dense(conv: nn.Conv2d, shape: tuple[int, int, int]) -> torch.Tensor:
    n = int(np.prod(shape))
    with torch.no_grad():
        cols = conv(torch.eye(n, dtype=torch.float64).reshape(n, *shape)).reshape(n, -1)
    return cols.T  # y = A x on flattened tensors


@pytest.mark.parametrize("kind,coeffs", [
    ("res", [1, 1]), ("ssp2", [1, 1, 1 / 2]), ("midrk2", [1, 1, 1 / 2]), ("ark", [1, 1, 1 / 2]),
    ("ssp3", [1, 1, 1 / 2, 1 / 6]),
])
def test_stability_polynomial_on_a_linear_f(kind: str, coeffs: list[float]) -> None:
    """For f(x) = A x: Euler I + A; every second-order two-stage method I + A + A^2/2; SSP-RK3 adds A^3/6."""
    torch.manual_seed(5)
    conv = nn.Conv2d(2, 2, 3, 1, 1, bias=False).double()
    shape = (2, 4, 4)
    a = _dense(conv, shape)
    poly = sum(c * torch.linalg.matrix_power(a, k) for k, c in enumerate(coeffs))
    x = torch.randn(3, *shape, dtype=torch.float64)
    with torch.no_grad():
        got = _linear_block(kind, conv)(x).reshape(3, -1)
    assert torch.allclose(got, x.reshape(3, -1) @ poly.T, atol=1e-12)


# ---------------------------------------------------------------------------- the Network export


def _small(arch: str, kind: str, in_shape=(1, 12, 12), blocks: int = 2, width: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    build_fn = ssp_mnist if arch == "ssp_mnist" else ssp_cifar
    m = build_fn(in_shape, 10, block=kind, blocks=blocks, width=width)
    _randomise_bn(m, seed)
    if kind == "ark":
        with torch.no_grad():
            for i, blk in enumerate(b for b in m.modules() if isinstance(b, SSPBlock)):
                blk.b.fill_(-1.0 + 0.7 * i)  # different learned c2 per block
    return m.eval()


@pytest.mark.parametrize("arch", ["ssp_mnist", "ssp_cifar"])
@pytest.mark.parametrize("kind", BLOCKS)
def test_network_equals_module_in_eval_mode(arch: str, kind: str) -> None:
    m = _small(arch, kind, in_shape=(1, 12, 12) if arch == "ssp_mnist" else (3, 8, 8))
    net = to_network(m, m_shape := ((1, 12, 12) if arch == "ssp_mnist" else (3, 8, 8)), name="t")
    x = torch.rand(5, *m_shape, dtype=torch.float64)
    with torch.no_grad():
        ref = m.double()(x)
    assert torch.allclose(net(x), ref, atol=1e-6, rtol=0)
    assert (net(x) - ref).abs().max() < 1e-12  # float64 throughout: exact up to rounding
    # every stage's f is a separate copy holding the same values
    convs = [l for l in net.walk() if l.kind == "conv2d"]
    blk = next(b for b in m.modules() if isinstance(b, SSPBlock))
    w = blk.f[2].weight.detach().double()
    from training.ssp import STAGES

    assert sum(torch.equal(c.weight, w) for c in convs) == STAGES[kind]


@pytest.mark.parametrize("kind", BLOCKS)
def test_group_nodes_are_the_group_ends(kind: str) -> None:
    """metadata['groups'] names the nodes holding each SSPGroup's input and output."""
    m = _small("ssp_cifar", kind, in_shape=(3, 8, 8)).double()
    net = ssp_network(m, (3, 8, 8))
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    hooks = [g.register_forward_hook(lambda mod, inp, out: seen.append((inp[0], out)))
             for g in m.modules() if isinstance(g, SSPGroup)]
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        m(x)
        values = net.forward(x, all_nodes=True)
    for h in hooks:
        h.remove()
    groups = net.metadata["groups"]
    assert len(groups) == len(seen) == 3
    for (a, b), (inp, out) in zip(groups, seen):
        assert torch.allclose(values[a], inp, atol=1e-12) and torch.allclose(values[b], out, atol=1e-12)
        assert isinstance(net.graph[b].op, type(net.graph[b].op))  # a valid node


def test_blocks_use_only_affine_shortcuts() -> None:
    net = ssp_network(_small("ssp_mnist", "ark"), (1, 12, 12))

    def check(layers) -> None:
        for l in layers:
            if isinstance(l, Residual):
                assert all(s.affine for s in l.shortcut)
                check(l.body)

    check(net.layers)
    # stem 10x10x3 + 5x5x3; 2 blocks x 2 stages x 2 ReLU layers of 3x2x2; head 3x2x2
    assert net.num_relus() == 10 * 10 * 3 + 5 * 5 * 3 + 2 * 2 * 2 * (3 * 2 * 2) + 3 * 2 * 2


@pytest.mark.parametrize("ext", [".h5", ".pt", ".onnx"])
def test_saved_network_keeps_its_groups(tmp_path, ext: str) -> None:
    from verify.formats import load_model, save_model

    if ext == ".onnx":
        pytest.importorskip("onnx")
    net = ssp_network(_small("ssp_mnist", "ssp3"), (1, 12, 12), name="ssp3")
    save_model(net, tmp_path / f"m{ext}")
    back = load_model(tmp_path / f"m{ext}")
    assert back.metadata["groups"] == net.metadata["groups"]
    x = torch.rand(3, 1, 12, 12, dtype=torch.float64)
    assert torch.allclose(back(x), net(x), atol=1e-6)
    assert [n.shape for n in back.graph] == [n.shape for n in net.graph]


def test_build_and_default_sizes() -> None:
    m = build("ssp_mnist", seed=0, block="ssp2", blocks=2, width=4)
    assert not m.training  # eval mode until training starts
    assert len([b for b in m.modules() if isinstance(b, SSPBlock)]) == 2
    # the paper's defaults: 64 channels, 3 blocks (MNIST); 16/32/64 channels, 6 blocks per group (CIFAR)
    assert build("ssp_mnist").width == 64 and build("ssp_mnist").blocks == 3
    c = build("ssp_cifar", input_shape=(3, 32, 32))
    assert c.blocks == 6 and len(to_network(c, (3, 32, 32)).metadata["groups"]) == 3


def test_unknown_options_are_rejected() -> None:
    from verify.errors import ModelError

    with pytest.raises(ModelError, match="does not take"):
        build("kw_small", block="ssp2")
    with pytest.raises(ModelError, match="unknown SSP block"):
        build("ssp_mnist", block="rk4")
    with pytest.raises(ModelError, match="parameter-sharing"):
        to_network(build("ssp_mnist", width=2, blocks=1), (1, 28, 28), share_parameters=True)


# ---------------------------------------------------------------------------- bounds and certify accept it


def test_bounds_are_below_sampled_margins() -> None:
    from verify.bounds import compute_bounds
    from verify.spec import LpBall

    net = ssp_network(_small("ssp_mnist", "ssp2", width=2, seed=1), (1, 12, 12))
    g = torch.Generator().manual_seed(2)
    x = torch.rand(3, 1, 12, 12, generator=g, dtype=torch.float64)
    y = net.predict(x)
    eps = 0.02
    for method in ("ibp", "kw", "crown"):
        lb = compute_bounds(net, LpBall.make(x, eps, "inf"), y, method=method, dtype=torch.float64).margin_lb
        for _ in range(20):
            xs = (x + eps * (2 * torch.rand(x.shape, generator=g, dtype=torch.float64) - 1)).clamp(0, 1)
            z = net(xs)
            margins = z.gather(1, y[:, None]) - z  # f_y - f_j (column y: lb is +inf there)
            other = torch.ones_like(margins, dtype=torch.bool).scatter_(1, y[:, None], False)
            assert (lb[other] <= margins[other] + 1e-9).all(), method


@pytest.mark.parametrize("kind", ["ssp2", "ark"])
def test_verify_bounds_and_certify_accept_an_ssp_network(tmp_path, capsys, kind: str) -> None:
    from verify.attacks import pgd_attack
    from verify.formats import save_model
    from verify.spec import LpBall

    net = ssp_network(_small("ssp_mnist", kind, width=2, blocks=1, seed=1), (1, 12, 12), name=kind)
    path = tmp_path / "ssp.h5"
    save_model(net, path)
    g = torch.Generator().manual_seed(4)
    x = torch.rand(6, 1, 12, 12, generator=g)
    y = net.predict(x)
    inputs = tmp_path / "pts.npz"
    np.savez(inputs, x=x.numpy(), y=y.numpy())
    eps = 0.02
    code, out, err = _run(["bounds", "--model", str(path), "--inputs", str(inputs), "--p", "inf", "--eps", str(eps),
                           "--method", "crown"], capsys)
    assert code == 0, err
    assert "n=6" in out
    res = tmp_path / "cert.json"
    code, out, err = _run(["certify", "--model", str(path), "--inputs", str(inputs), "--p", "inf", "--eps", str(eps),
                           "--timeout", "20", "-q", "--output", str(res)], capsys)
    assert code == 0, err
    rows = json.loads(res.read_text())["examples"]
    assert len(rows) == 6 and all(r["status"] in ("verified", "falsified", "unknown", "misclassified") for r in rows)
    # oracle: a point certify verifies is one PGD cannot break; a falsified one PGD or the MIP broke, checked in float64
    attack = pgd_attack(net, LpBall.make(x.double(), eps, "inf"), y, steps=100, restarts=3, seed=1)
    for r in rows:  # rows come in the order examples finish
        if r["status"] == "verified":
            assert not bool(attack.success[r["index"]])
    assert any(r["status"] == "verified" for r in rows)


def test_exact_mip_on_an_ssp3_network_agrees_with_strong_pgd() -> None:
    """Bounds too weak on purpose (ibp only, no attack): every example reaches the MIP, whose
    verdicts must match a strong PGD, with counterexamples inside the ball and misclassified."""
    from verify.attacks import pgd_attack
    from verify.certify import CertifyConfig, certify
    from verify.spec import LpBall

    net = ssp_network(_small("ssp_mnist", "ssp3", width=2, blocks=1, seed=1), (1, 12, 12), name="ssp3")
    x = torch.rand(6, 1, 12, 12, generator=torch.Generator().manual_seed(4)).double()
    y = net.predict(x)
    ball = LpBall.make(x, 0.05, "inf")
    res = certify(net, ball, y, list(range(6)), CertifyConfig(p=math.inf, eps=0.05, methods=("ibp",), attack_steps=0,
                                                               timeout=20), progress=False)
    attack = pgd_attack(net, ball, y, steps=200, restarts=5, seed=1)
    assert all(r.decided_by in ("mip", "bab") for r in res)  # the complete stage (auto: either engine)
    assert {r.status for r in res} == {"verified", "falsified"}
    for r in res:
        assert (r.status == "falsified") == bool(attack.success[r.index])
        if r.status == "falsified":
            cx = torch.as_tensor(r.counterexample, dtype=torch.float64).reshape(1, 1, 12, 12)
            assert bool(ball.select(torch.tensor([r.index])).contains(cx).all())
            assert int(net(cx).argmax(1)) != int(y[r.index])
