"""Re-tightened intermediate bounds of split subdomains (verify.bab.retighten) against sampling:
every sampled point of the ball that satisfies the subdomain's splits has every ReLU input inside
the re-tightened bounds; the bounds never get looser, and on most subdomains they get tighter."""

from __future__ import annotations

import torch

from tests.bab.oracle import random_net
from tests.bounds.sampling import sample_set
from verify.bab.retighten import retighten_after
from verify.bounds import linear_intermediate
from verify.bounds.backward import relu_inputs
from verify.spec import LpBall


def test_retightened_bounds_contain_every_sample_of_the_subdomain() -> None:
    g = torch.Generator().manual_seed(0)
    tighter = 0
    cases = 0
    for seed in range(8):
        net = random_net(seed, 5, (10, 10, 10), 3)
        x = torch.rand(1, 5, generator=g, dtype=torch.float64) * 0.6 + 0.2
        ball = LpBall.make(x, 0.15, "inf")
        srcs = relu_inputs(net)
        bounds = linear_intermediate(net, ball, rule="crown", dtype=torch.float64)
        pts = sample_set(ball, 0, 20000, g)
        vals = net.forward(pts, all_nodes=True)
        for pos in (0, 1):
            j = srcs[pos]
            lo, hi = (t.clone() for t in bounds[j])
            unstable = ((lo < 0) & (hi > 0)).reshape(-1).nonzero().reshape(-1)[:2]
            if unstable.numel() == 0:
                continue
            # the subdomain: the sign pattern of a sampled point on up to two unstable neurons of layer pos
            ref = vals[j][int(torch.randint(len(pts), (1,), generator=g))].reshape(-1)
            keep = torch.ones(len(pts), dtype=torch.bool)
            for i in unstable.tolist():
                if float(ref[i]) >= 0:
                    lo.reshape(-1)[i] = 0.0
                    keep &= vals[j].reshape(len(pts), -1)[:, i] >= 0
                else:
                    hi.reshape(-1)[i] = 0.0
                    keep &= vals[j].reshape(len(pts), -1)[:, i] <= 0
            sub = {k: bounds[k] for k in srcs}
            sub[j] = (lo, hi)
            # the same subdomain twice in one batch, and a copy that is told its split is deeper (nothing to do)
            batch = {k: (torch.cat([t[0]] * 3), torch.cat([t[1]] * 3)) for k, t in sub.items()}
            first = torch.tensor([pos, pos, len(srcs)])
            out = retighten_after(net, ball.select([0, 0, 0]), batch, srcs, first)
            cases += 1
            gained = False
            for k in srcs:
                olo, ohi = out[k]
                assert torch.equal(olo[0], olo[1]) and torch.equal(ohi[0], ohi[1])
                assert torch.equal(olo[2:], batch[k][0][2:]) and torch.equal(ohi[2:], batch[k][1][2:])
                assert bool((olo >= batch[k][0]).all()) and bool((ohi <= batch[k][1]).all())
                v = vals[k][keep].reshape(int(keep.sum()), -1)
                assert bool((v >= olo[0].reshape(1, -1) - 1e-9).all()), (seed, pos, k)
                assert bool((v <= ohi[0].reshape(1, -1) + 1e-9).all()), (seed, pos, k)
                if srcs.index(k) <= pos:
                    assert torch.equal(olo, batch[k][0]) and torch.equal(ohi, batch[k][1])
                gained |= bool((olo[0] > batch[k][0][0] + 1e-9).any() or (ohi[0] < batch[k][1][0] - 1e-9).any())
            tighter += gained
    assert cases >= 10
    assert tighter >= cases // 2
