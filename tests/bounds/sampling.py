"""Points of an Lp ball intersected with the input box, for soundness oracles."""

from __future__ import annotations

import math

import torch

from verify.spec import LpBall


def sample_set(pset: LpBall, i: int, m: int, g: torch.Generator) -> torch.Tensor:
    """m points of example i's set: uniform for Linf (plus corners); directions x radii for L1 / L2.

    Points outside the box are clipped to it, which moves every coordinate towards the centre
    (inside the box), so they stay in the ball: this samples the intersection, faces included.
    """
    c = pset.center[i].to(torch.float64)
    d = c.numel()
    eps = float(pset.eps[i])
    if math.isinf(pset.p):
        lo, hi = (t[i].to(torch.float64) for t in pset.box())
        u = torch.rand(m, d, generator=g, dtype=torch.float64)
        u[: m // 4] = (u[: m // 4] > 0.5).to(torch.float64)  # a quarter at vertices
        x = lo.reshape(1, -1) + u * (hi - lo).reshape(1, -1)
    else:
        if pset.p == 2.0:
            v = torch.randn(m, d, generator=g, dtype=torch.float64)
            v = v / v.norm(dim=1, keepdim=True)
        else:
            v = -torch.log(torch.rand(m, d, generator=g, dtype=torch.float64))  # uniform on the simplex
            v = v / v.sum(1, keepdim=True) * torch.sign(torch.randn(m, d, generator=g, dtype=torch.float64))
            k = m // 4  # a quarter at the vertices +-eps e_i
            v[:k] = 0
            v[torch.arange(k), torch.randint(d, (k,), generator=g)] = torch.sign(torch.randn(k, generator=g, dtype=torch.float64))
        r = torch.rand(m, 1, generator=g, dtype=torch.float64) ** (1.0 / d)
        r[: m // 2] = 1.0  # half on the sphere, where bounds are tight
        x = c.reshape(1, -1) + eps * r * v
    x = x.clamp(pset.lo, pset.hi).reshape(m, *c.shape)
    single = LpBall(pset.center[i : i + 1].to(torch.float64).expand(m, *c.shape), pset.eps[i : i + 1].to(torch.float64).expand(m), pset.p, pset.lo, pset.hi)
    assert bool(single.contains(x, rtol=1e-12).all())
    return x
