"""The certify pipeline on random MLPs and on the MNIST CNNs of the model zoo (models/).

Oracles: a 100-restart PGD attack must find nothing on verified points; every falsified
point's counterexample passes an independent float64 check; LB <= UB; and for the
Kolter-Wong-trained CNN at Linf 0.1 the MIP decides every point (LB == UB). The zoo's
models are trained by `train-mmr` (commands in models/MODELS.md), not in the test session.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from verify.attacks import pgd_attack
from verify.certify import CertifyConfig, certify, summarize
from verify.data import load_dataset
from verify.formats import load_model
from verify.network import Linear, Network, ReLU
from verify.spec import LpBall, check_counterexample

MODELS = Path(__file__).resolve().parents[1] / "models"


def random_mlp(seed: int = 0, d: int = 12) -> Network:
    g = torch.Generator().manual_seed(seed)
    return Network((Linear(torch.randn(24, d, generator=g) / 2, 0.1 * torch.randn(24, generator=g)), ReLU(),
                    Linear(torch.randn(16, 24, generator=g) / 4, 0.1 * torch.randn(16, generator=g)), ReLU(),
                    Linear(torch.randn(4, 16, generator=g) / 3)), (d,))


@pytest.fixture(scope="module")
def mlp_points() -> tuple[Network, torch.Tensor, torch.Tensor]:
    net = random_mlp()
    x = torch.rand(40, 12, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    y = net(x).argmax(1)
    y[:4] = (y[:4] + 1) % 4  # a few misclassified points
    return net, x, y


@pytest.mark.parametrize("eps", [0.02, 0.08])
def test_consistency_random_mlp(mlp_points, eps: float) -> None:
    net, x, y = mlp_points
    res = check_consistency(net, x, y, eps, timeout=30, restarts=10)
    s = summarize(res)
    assert s.clean_error == pytest.approx(4 / 40)
    assert s.unknown == 0 and s.lb == s.ub  # a small MLP: the MIP decides everything
    assert any(r.decided_by == "mip" for r in res) or eps == 0.02
    for r in res:  # the JSON / CSV / store row says how large the MIP was
        row = r.row()
        assert (row["n_binaries"] is not None) == ("mip" in r.seconds), row


def test_alpha_crown_mip_bounds_same_verdicts(mlp_points) -> None:
    """Starting the MIP from alpha-CROWN bounds changes its size, never its verdicts."""
    net, x, y = mlp_points
    ball = LpBall.make(x.to(torch.float64), 0.08, "inf")
    out = {}
    for mode in ("crown", "alpha-crown"):
        cfg = CertifyConfig(p=math.inf, eps=0.08, timeout=30, attack_steps=0, strong_attack_restarts=0,
                            methods=("ibp",), mip_bounds=mode)
        out[mode] = certify(net, ball, y, list(range(len(y))), cfg, progress=False)
    mip = [i for i, r in enumerate(out["crown"]) if r.decided_by == "mip"]
    assert len(mip) >= 5
    assert [r.status for r in out["crown"]] == [r.status for r in out["alpha-crown"]]
    assert all(r.status != "unknown" for r in out["alpha-crown"])
    # never more binaries (here the MIP's own LP tightening reaches the same bounds from either start)
    pairs = [(out["crown"][i].n_binaries, out["alpha-crown"][i].n_binaries) for i in mip]
    assert all(b <= a for a, b in pairs), pairs


@pytest.fixture(scope="session")
def robust_net() -> Network:
    return load_model(MODELS / "mnist_cnn_small_kw.mat")  # Kolter-Wong robust loss, Linf 0.1


@pytest.fixture(scope="session")
def pgd_net() -> Network:
    return load_model(MODELS / "mnist_cnn_small_at.mat")  # PGD adversarial training, Linf 0.1


@pytest.fixture(scope="session")
def mnist_test(shared_data: Path) -> tuple[torch.Tensor, torch.Tensor]:
    ds = load_dataset("mnist", split="test", data_dir=shared_data)
    return ds.x, ds.y


def check_consistency(net: Network, x: torch.Tensor, y: torch.Tensor, eps: float, timeout: float,
                      restarts: int = 100, complete: str = "auto") -> list:
    ball = LpBall.make(x.to(torch.float64), eps, "inf")
    res = certify(net, ball, y, list(range(len(y))), CertifyConfig(p=math.inf, eps=eps, timeout=timeout, complete=complete),  # type: ignore[arg-type]
                  progress=False)
    s = summarize(res)
    assert s.lb <= s.ub
    assert s.clean_error <= s.pgd_lb <= s.lb
    assert s.ub <= s.bound_ub
    ver = [i for i, r in enumerate(res) if r.status == "verified"]
    if ver:
        att = pgd_attack(net, ball.select(ver), y[ver], steps=40, restarts=restarts, seed=1)
        assert not bool(att.success.any()), "PGD found a counterexample on a verified point"
    for i, r in enumerate(res):
        if r.status == "falsified":
            assert r.counterexample is not None
            assert bool(check_counterexample(net, ball.select([i]), y[i : i + 1], r.counterexample)[0])
        if r.status == "misclassified":
            assert int(r.prediction) != int(r.label) or r.margin_lb is None
    return res


@pytest.mark.slow
def test_robust_cnn_mip_closes_the_gap(robust_net: Network, mnist_test) -> None:
    x, y = mnist_test
    # the first 10 test points and four that the bounds leave to the MIP (which decides them)
    pick = list(range(10)) + [33, 95, 121, 195]
    res = check_consistency(robust_net, x[pick], y[pick], 0.1, timeout=120, complete="mip")
    assert sum(r.decided_by == "mip" for r in res) >= 4
    s = summarize(res)
    assert s.unknown == 0 and s.lb == s.ub


def test_timeout_gives_unknown_never_verified(mlp_points) -> None:
    robust_net, x, y = mlp_points
    # no attack, only IBP: many points reach the MIP, whose microscopic time limit must not verify them
    ball = LpBall.make(x[:30].to(torch.float64), 0.1, "inf")
    res = certify(robust_net, ball, y[:30], list(range(30)),
                  CertifyConfig(p=math.inf, eps=0.1, timeout=1e-3, methods=("ibp",), attack_steps=0), progress=False)
    mip = [r for r in res if "mip" in r.seconds or "bab" in r.seconds]
    assert mip, "no example reached the complete stage"
    assert all(r.status != "verified" for r in mip)
    assert all(r.reason for r in mip if r.status == "unknown")


def test_interrupt_keeps_rows(mlp_points) -> None:
    robust_net, x, y = mlp_points
    ball = LpBall.make(x[:20].to(torch.float64), 0.1, "inf")
    seen = []

    def stop_after_five(r) -> None:
        seen.append(r)
        if len(seen) == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        certify(robust_net, ball, y[:20], list(range(20)), CertifyConfig(p=math.inf, eps=0.1), progress=False,
                on_result=stop_after_five)
    assert len(seen) == 5


@pytest.mark.slow
@pytest.mark.parametrize("which", ["robust", "pgd"])
def test_consistency_200_points(which: str, request, mnist_test) -> None:
    net = request.getfixturevalue(f"{which}_net")
    x, y = mnist_test
    # the KW-trained net: 120 s per MIP, and the MIP must decide every point; the adversarially
    # trained net has thousands of unstable ReLUs at eps 0.1 (most MIPs would run to any limit),
    # so it gets 5 s: its check is consistency (no PGD point on a verified one, LB <= UB), not exactness
    check_consistency(net, x[:200], y[:200], 0.1, timeout=120 if which == "robust" else 5)


@pytest.mark.slow
def test_kw_cnn_exact_on_200_points(robust_net: Network, mnist_test) -> None:
    x, y = mnist_test
    ball = LpBall.make(x[:200].to(torch.float64), 0.1, "inf")
    s = summarize(certify(robust_net, ball, y[:200], list(range(200)), CertifyConfig(p=math.inf, eps=0.1, timeout=120),
                          progress=False))
    assert s.unknown == 0 and s.lb == s.ub


def test_mip_time_limit_holds_in_lp_tightening(mnist_test) -> None:
    """Regression: one bound-tightening LP of this example (AT CNN, MNIST test point 148, Linf 0.1)
    ran for over 13 minutes under a 5 s limit, because the LPs had no time limit of their own. The
    bound here is 10x the limit, far from any timing noise; the verdict must not be 'verified'."""
    net = load_model(MODELS / "mnist_cnn_small_at.mat")
    x, y = mnist_test
    ball = LpBall.make(x[[148]].to(torch.float64), 0.1, "inf")
    r = certify(net, ball, y[[148]], [148], CertifyConfig(p=math.inf, eps=0.1, timeout=2.0, complete="mip"), progress=False)[0]
    assert "mip" in r.seconds  # the bounds leave it to the MIP
    assert r.status != "verified" or r.decided_by == "mip"
    assert r.seconds["mip"] < 20.0, r.seconds


def test_a_points_verdict_does_not_depend_on_its_batch(pgd_net: Network, mnist_test) -> None:
    """PGD's random starts are keyed by data-set index: certifying points 0..39 at once, or a few of
    them alone and in another order (as -n, --shard, --workers and --indices runs do), gives each
    the same verdict, by the same stage, with the same counterexample."""
    x, y = mnist_test
    cfg = CertifyConfig(p=math.inf, eps=0.1, no_mip=True, attack_steps=10, strong_attack_steps=20)
    ball = LpBall.make(x[:40].to(torch.float64), 0.1, "inf")
    whole = certify(pgd_net, ball, y[:40], list(range(40)), cfg, progress=False)
    falsified = [r.index for r in whole if r.status == "falsified"]
    assert falsified, "the at model has PGD counterexamples at eps 0.1 among the first 40 points"
    pick = sorted(set(falsified[:3]) | {0, 1}, reverse=True)
    part = certify(pgd_net, ball.select(pick), y[pick], pick, cfg, progress=False)
    for r in part:
        w = whole[r.index]
        assert (r.status, r.decided_by) == (w.status, w.decided_by), r.index
        if r.counterexample is not None:
            torch.testing.assert_close(r.counterexample, w.counterexample, rtol=0, atol=1e-6)
