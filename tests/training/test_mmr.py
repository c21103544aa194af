"""MMR distances against an independent oracle: the region's affine map from autograd, and an LP."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import linprog
from torch import nn

from training.architectures import to_network
from training.regularizers.mmr import mmr_terms, region_distances
from verify.torch_modules import FlattenNHWC


def _small_cnn() -> nn.Sequential:
    torch.manual_seed(3)
    m = nn.Sequential(nn.Conv2d(1, 3, 3, stride=2, padding=1), nn.ReLU(), FlattenNHWC(),
                      nn.Linear(3 * 3 * 3, 8), nn.ReLU(), nn.Linear(8, 4)).double()
    with torch.no_grad():  # positive biases: most ReLUs active, so every region has live hyperplanes
        m[0].bias.fill_(0.2)
        m[3].bias.fill_(0.2)
    return m


def _oracle(module: nn.Sequential, x: torch.Tensor, y: int, q: float) -> tuple[np.ndarray, np.ndarray]:
    """Per point: distances from torch.autograd.functional.jacobian of every pre-activation."""
    pre_idx = [i for i, m in enumerate(module) if isinstance(m, (nn.Linear, nn.Conv2d))]

    def pres(inp: torch.Tensor) -> torch.Tensor:
        h, out = inp[None], []
        for i, m in enumerate(module):
            h = m(h)
            if i in pre_idx:
                out.append(h.reshape(-1))
        return torch.cat(out)

    z = pres(x).detach()
    jac = torch.autograd.functional.jacobian(pres, x).reshape(z.numel(), -1)
    k = module[-1].out_features
    zr, jr = z[:-k], jac[:-k]
    relu = (zr.abs() / jr.norm(p=q, dim=1)).numpy()
    f, jf = z[-k:], jac[-k:]
    dec = np.full(k, math.inf)
    for j in range(k):
        if j != y:
            dec[j] = float((f[y] - f[j]) / (jf[y] - jf[j]).norm(p=q))
    return relu, dec


@pytest.mark.parametrize("p", [math.inf, 2.0, 1.0])
def test_distances_match_autograd_jacobian(p: float) -> None:
    module = _small_cnn()
    net = to_network(module, (1, 5, 5))
    x = torch.rand(6, 1, 5, 5, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    d = region_distances(net, x, y, p=p)
    q = {math.inf: 1.0, 2.0: 2.0, 1.0: math.inf}[p]
    for n in range(6):
        relu, dec = _oracle(module, x[n], int(y[n]), q)
        fin = np.isfinite(relu)  # a ReLU dead w.r.t. x in this region (zero gradient) has no hyperplane
        assert fin.sum() > 0.5 * fin.size
        np.testing.assert_allclose(d.relu[n].numpy()[fin], relu[fin], rtol=1e-10)
        assert (d.relu[n].numpy()[~fin] > 1e6).all()
        np.testing.assert_allclose(d.decision[n].numpy(), dec, rtol=1e-10)
        assert np.isinf(dec[int(y[n])]) and np.isfinite(np.delete(dec, int(y[n]))).all()


@pytest.mark.parametrize("p", [math.inf, 1.0])
def test_distance_is_the_lp_distance_to_the_hyperplane(p: float) -> None:
    """An LP (HiGHS via scipy) finds the Lp-closest point of a first-layer ReLU hyperplane."""
    torch.manual_seed(5)
    module = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)).double()
    net = to_network(module, (5,))
    x = torch.rand(3, 5, dtype=torch.float64)
    d = region_distances(net, x, torch.zeros(3, dtype=torch.long), p=p)
    w, b = module[0].weight.detach().numpy(), module[0].bias.detach().numpy()
    for n in range(3):
        for i in range(4):
            # min ||delta||_p  s.t.  w_i . (x + delta) + b_i = 0, with delta = u - v, u, v >= 0
            c0 = float(w[i] @ x[n].numpy() + b[i])
            dim = 5
            if p == 1.0:
                cost = np.ones(2 * dim)
                res = linprog(cost, A_eq=np.concatenate([w[i], -w[i]])[None], b_eq=[-c0], bounds=(0, None))
            else:  # variables u, v, t: min t with u_k + v_k <= t
                cost = np.zeros(2 * dim + 1)
                cost[-1] = 1
                a_ub = np.hstack([np.eye(dim), np.eye(dim), -np.ones((dim, 1))])
                res = linprog(cost, A_ub=a_ub, b_ub=np.zeros(dim), A_eq=np.concatenate([w[i], -w[i], [0]])[None],
                              b_eq=[-c0], bounds=(0, None))
            assert res.status == 0
            assert float(d.relu[n, i]) == pytest.approx(res.fun, rel=1e-7, abs=1e-10)


@pytest.mark.parametrize("p", [math.inf, 2.0, 1.0])
def test_regulariser_gradient_is_finite_and_descends(p: float) -> None:
    module = _small_cnn().float()
    net = to_network(module, (1, 5, 5), share_parameters=True)
    x = torch.rand(16, 1, 5, 5)
    y = torch.randint(0, 4, (16,))

    def value() -> torch.Tensor:
        v = mmr_terms(net, x, y, p=p, k_relu=10, k_decision=4, gamma_relu=0.5, gamma_decision=0.5)
        return v.relu_term + v.decision_term

    r0 = value()
    r0.backward()
    grads = [m.grad for m in module.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    with torch.no_grad():
        for prm in module.parameters():
            prm -= 1e-3 * prm.grad
    assert value().item() < r0.item()


def _jacobian_distances(net, x: torch.Tensor, y: torch.Tensor, q: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference: full forward-mode Jacobians (region_jacobians), norms taken over them."""
    from training.regularizers.mmr import region_jacobians

    rj = region_jacobians(net, x)
    relu = torch.cat([z.abs() / torch.linalg.vector_norm(g, ord=q, dim=1).clamp(min=1e-12)
                      for z, g in zip(rj.pre, rj.grads)], 1)
    lg = rj.logit_grads.expand(x.shape[0], -1, -1)
    g_y = lg.gather(2, y[:, None, None].expand(-1, lg.shape[1], 1))
    denom = torch.linalg.vector_norm(g_y - lg, ord=q, dim=1).clamp(min=1e-12)
    dec = (rj.logits.gather(1, y[:, None]) - rj.logits) / denom
    return relu, dec.scatter(1, y[:, None], math.inf)


def _two_conv_cnn() -> nn.Sequential:
    """cnn_lenet_small's shape on 16x16 inputs: conv 4x4/2 SAME, conv 4x4/2 SAME, fc, out."""
    from training.architectures import same_padding

    torch.manual_seed(11)
    pad = same_padding((16, 16), (4, 4), (2, 2))
    return nn.Sequential(nn.ZeroPad2d(pad), nn.Conv2d(1, 4, 4, stride=2), nn.ReLU(),
                         nn.ZeroPad2d(same_padding((8, 8), (4, 4), (2, 2))), nn.Conv2d(4, 6, 4, stride=2), nn.ReLU(),
                         FlattenNHWC(), nn.Linear(6 * 4 * 4, 12), nn.ReLU(), nn.Linear(12, 5)).double()


@pytest.mark.parametrize("p", [math.inf, 2.0, 1.0])
def test_window_gradients_equal_the_full_jacobian(p: float) -> None:
    """region_distances (conv neurons on receptive-field windows, reverse mode elsewhere) == the
    full forward-mode Jacobians, in value and in the parameter gradient of the MMR terms;
    on a two-conv CNN (windows with zero padding) and on a residual net (reverse mode only)."""
    from tests.bounds.nets import residual_net
    from verify.bounds.local import local_plan
    from verify.spec import LpBall

    q = {math.inf: 1.0, 2.0: 2.0, 1.0: math.inf}[p]
    module = _two_conv_cnn()
    net = to_network(module, (1, 16, 16), share_parameters=True)
    x = torch.rand(7, 1, 16, 16, dtype=torch.float64)
    y = torch.randint(0, 5, (7,), generator=torch.Generator().manual_seed(2))
    ball = LpBall.make(x, 0.0, "inf")
    assert sum(local_plan(net, ball, n.inputs[0]) is not None for n in net.relu_nodes) == 2  # both convs windowed

    grads = []
    for fast in (True, False):
        module.zero_grad()
        if fast:
            d = region_distances(net, x, y, p=p)
            relu, dec = d.relu, d.decision
        else:
            relu, dec = _jacobian_distances(net, x, y, q)
        loss = hinge_closest_sum(relu, dec)
        loss.backward()
        grads.append(torch.cat([prm.grad.reshape(-1) for prm in module.parameters()]))
        if fast:
            ref_relu, ref_dec = relu.detach(), dec.detach()
        else:
            torch.testing.assert_close(ref_relu, relu.detach(), rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(ref_dec, dec.detach(), rtol=1e-10, atol=1e-12)
    assert float(grads[0].abs().sum()) > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-9, atol=1e-12)

    rnet = residual_net(2)
    xr = torch.rand(5, *rnet.input_shape, dtype=torch.float64)
    yr = rnet.predict(xr)
    d = region_distances(rnet, xr, yr, p=p)
    relu, dec = _jacobian_distances(rnet, xr, yr, q)
    torch.testing.assert_close(d.relu, relu, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(d.decision, dec, rtol=1e-10, atol=1e-12)


def hinge_closest_sum(relu: torch.Tensor, dec: torch.Tensor) -> torch.Tensor:
    from training.regularizers.mmr import hinge_closest

    return hinge_closest(relu, 20, 0.5).mean() + hinge_closest(dec, 5, 0.5).mean()


def test_pull_back_to_a_node_only_where_it_separates() -> None:
    """backward_coefficients(stop=j): coefficients on node j's value, composed with node j's map,
    equal those on the input; a node that a skip connection bypasses is refused."""
    from tests.bounds.nets import residual_net
    from training.regularizers.mmr import _separates
    from verify.bounds.backward import backward_coefficients
    from verify.bounds.relax import ReluRelaxation

    net = residual_net(2)
    x = torch.rand(3, *net.input_shape, dtype=torch.float64)
    values = net.forward(x, all_nodes=True)
    rels = {}
    for node in net.relu_nodes:
        m = (values[node.inputs[0]] > 0).to(torch.float64)
        rels[node.inputs[0]] = ReluRelaxation(m, m, torch.zeros_like(m), torch.zeros_like(m, dtype=torch.bool))
    last = len(net.graph) - 1
    spec = torch.randn(3, 2, *net.graph[last].shape, dtype=torch.float64)
    assert _separates(net, 3, last) and _separates(net, 9, last)
    assert not _separates(net, 5, last)  # node 8 adds node 3: the skip bypasses 4..7
    full, c_full = backward_coefficients(net, last, spec, rels)
    at9, c9 = backward_coefficients(net, last, spec, rels, stop=9)
    # <spec, out> = <at9, value of node 9> + c9 and = <full, x> + c_full, for the points' own inputs
    lhs = (at9 * values[9].unsqueeze(1)).flatten(2).sum(2) + c9
    rhs = (full * x.unsqueeze(1)).flatten(2).sum(2) + c_full
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="does not separate"):
        backward_coefficients(net, last, spec, rels, stop=5)


@pytest.mark.parametrize("p", [math.inf, 2.0])
@pytest.mark.parametrize("k", [5, 40, 10_000])
def test_deferred_rows_give_the_same_terms_and_gradients(p: float, k: int, monkeypatch) -> None:
    """mmr_terms differentiates the dense layers after a windowed conv only where they are among
    the k closest (recomputed then): same value and parameter gradients as differentiating every
    distance; also when the batch is split into passes (offsets of the deferred blocks)."""
    import training.regularizers.mmr as mmr
    from training.regularizers.mmr import hinge_closest

    monkeypatch.setattr(mmr, "EXAMPLES_PER_PASS", 3)
    module = _two_conv_cnn()
    net = to_network(module, (1, 16, 16), share_parameters=True)
    x = torch.rand(8, 1, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    y = torch.randint(0, 5, (8,), generator=torch.Generator().manual_seed(6))
    d = region_distances(net, x, y, p=p, defer=True)
    n_dense = 12  # the fc layer's ReLUs, the last columns of d.relu
    chosen = torch.topk(d.relu.detach(), min(k, d.relu.shape[1]), dim=1, largest=False).indices
    n_chosen = int((chosen >= d.relu.shape[1] - n_dense).sum())
    assert n_chosen > 0, "the closest must reach into the deferred rows"
    assert k < 10_000 or n_chosen == 8 * n_dense
    results = []
    for deferred in (True, False):
        module.zero_grad()
        if deferred:
            v = mmr_terms(net, x, y, p=p, k_relu=k, k_decision=5, gamma_relu=0.5, gamma_decision=0.5)
            rb, db = v.relu_term, v.decision_term
        else:
            ref = region_distances(net, x, y, p=p)
            rb, db = hinge_closest(ref.relu, k, 0.5).mean(), hinge_closest(ref.decision, 5, 0.5).mean()
        (rb + db).backward()
        results.append((rb.detach(), torch.cat([prm.grad.reshape(-1) for prm in module.parameters()])))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("p", [math.inf, 2.0])
@pytest.mark.parametrize("prune", [False, True])
def test_margins_composed_with_the_recomputed_rows(p: float, prune: bool, monkeypatch) -> None:
    """With deferred rows, the margins' norms of a pass are composed in one product with the rows
    closest() recomputes (or alone, when the decision distances are read first or no deferred row is
    among the closest): both orders give the decision distances, the terms and the parameter
    gradients of the undeferred computation."""
    import training.regularizers.mmr as mmr
    from training.regularizers.mmr import hinge_closest

    monkeypatch.setattr(mmr, "EXAMPLES_PER_PASS", 3)
    module = _two_conv_cnn()
    net = to_network(module, (1, 16, 16), share_parameters=True)
    x = torch.rand(8, 1, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    y = torch.randint(0, 5, (8,), generator=torch.Generator().manual_seed(6))
    joined = []
    original = mmr._Margins.along
    monkeypatch.setattr(mmr._Margins, "along", lambda self, v: (joined.append(self.norms is None), original(self, v))[1])

    def terms(order: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        module.zero_grad()
        if order == "reference":
            d = region_distances(net, x, y, p=p)
            closest, dec = torch.topk(d.relu, 40, dim=1, largest=False).values, d.decision
        else:
            d = region_distances(net, x, y, p=p, defer=True, prune=prune)
            if order == "decision first":
                dec = d.decision
                closest = d.closest(40)
            else:
                closest = d.closest(40)
                dec = d.decision
        rb, db = hinge_closest(closest, 40, 0.5).mean(), hinge_closest(dec, 5, 0.5).mean()
        (rb + 2 * db).backward()
        return dec.detach(), torch.stack([rb, db]).detach(), torch.cat([prm.grad.reshape(-1) for prm in module.parameters()])

    ref = terms("reference")
    for order in ("closest first", "decision first"):
        joined.clear()
        got = terms(order)
        assert joined and all(joined) == (order == "closest first"), (order, joined)
        torch.testing.assert_close(got[0], ref[0], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(got[1], ref[1], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(got[2], ref[2], rtol=1e-9, atol=1e-12)
