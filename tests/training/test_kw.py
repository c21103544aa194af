"""Certified-training losses: gradients reach the weights through verify.bounds, values are bounds."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from training.architectures import to_network
from training.regularizers.kw import RobustSchedule, margin_lower_bounds, robust_loss


def _tiny() -> nn.Sequential:
    torch.manual_seed(11)
    return nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 3 * 3, 12), nn.ReLU(), nn.Linear(12, 3)).double()


@pytest.mark.parametrize("method", ["kw", "ibp", "crown", "crown-ibp"])
def test_gradient_matches_finite_differences(method: str) -> None:
    module = _tiny()
    net = to_network(module, (1, 5, 5), share_parameters=True)
    x = torch.rand(4, 1, 5, 5, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0])
    kw = dict(eps=0.05, p="inf", method=method, kappa=0.3 if method == "crown-ibp" else 0.0, beta=0.5)
    loss = robust_loss(net, x, y, **kw).loss
    loss.backward()
    w = module[3].weight
    g = w.grad[2, 5].item()
    assert g != 0.0
    h = 1e-6
    with torch.no_grad():
        w[2, 5] += h
        up = robust_loss(net, x, y, **kw).loss.item()
        w[2, 5] -= 2 * h
        down = robust_loss(net, x, y, **kw).loss.item()
        w[2, 5] += h
    assert g == pytest.approx((up - down) / (2 * h), rel=1e-4, abs=1e-7)


def test_bounds_hold_on_samples_and_loss_upper_bounds_clean_ce() -> None:
    module = _tiny()
    net = to_network(module, (1, 5, 5), share_parameters=True)
    x = torch.rand(6, 1, 5, 5, dtype=torch.float64) * 0.8 + 0.1
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    m = margin_lower_bounds(net, x, y, eps=0.05, p="inf", method="kw").detach()
    with torch.no_grad():
        for _ in range(200):
            xs = (x + (torch.rand_like(x) * 2 - 1) * 0.05).clamp(0, 1)
            f = module(xs)
            margins = f.gather(1, y[:, None]) - f
            other = torch.isfinite(m)  # +inf marks the label column
            assert (margins[other] >= m[other] - 1e-9).all()
    r = robust_loss(net, x, y, eps=0.05, p="inf", method="kw")
    assert r.robust_ce.item() >= F.cross_entropy(module(x), y).item() - 1e-12
    r0 = robust_loss(net, x, y, eps=0.0, p="inf", method="kw")  # eps 0: the bounds are the margins
    assert r0.robust_ce.item() == pytest.approx(r0.clean_ce.item(), rel=1e-9)


def test_eps_schedule_ramps_like_wong_et_al() -> None:
    s = RobustSchedule(eps=0.1, warmup_epochs=3, eps_start=0.0)
    # N warm-up epochs: from eps_start at the first batch to eps at the end of epoch N
    assert [round(s.eps_at(e), 6) for e in (1, 2, 3, 4)] == [0.0, round(0.1 / 3, 6), round(0.2 / 3, 6), 0.1]
    assert s.eps_at(3, 0.999999) < 0.1 and s.eps_at(4, 0.0) == 0.1
    one = RobustSchedule(eps=0.1, warmup_epochs=1)  # one warm-up epoch is a ramp over epoch 1, not none
    assert one.eps_at(1, 0.0) == 0.0 and abs(one.eps_at(1, 0.5) - 0.05) < 1e-12 and one.eps_at(2, 0.0) == 0.1
    assert RobustSchedule(eps=0.1, warmup_epochs=0).eps_at(1, 0.0) == 0.1
    c = RobustSchedule(eps=0.1, warmup_epochs=4, method="crown-ibp", kappa_end=0.5)
    assert c.kappa_at(1) == 1.0 and c.kappa_at(5) == 0.5 and c.beta_at(1) == 1.0 and c.beta_at(5) == 0.0
