"""Re-tightening the intermediate bounds of split subdomains, below the split only.

A child of a ReLU split has the parent's intermediate bounds with the split neuron's clamped at 0
(its set is a subset of the parent's, so every parent bound stays valid). Its ReLU inputs *after*
the split layer can be much tighter: the split neuron's relaxation is now exact, and the
relaxation gap it no longer contributes compounds through every later layer. This recomputes them
by CROWN, layer by layer in topological order from the first layer after the shallowest split, for
a batch of subdomains at once: the neurons still unstable in any of them are spec rows shared by
the whole batch (node k's own affine layer pulled back once), one batched backward pass per block
of subdomains. New bounds are intersected with the old ones, so they never get looser. Layers up
to (and including) a subdomain's shallowest split keep their bounds (they cannot change: the
subdomain restricts nothing before them that the parent did not).

Sound in float64 (the same backward engine as :func:`verify.bounds.intermediate.linear_intermediate`);
``deadline`` stops between blocks, keeping the bounds found so far.
"""

from __future__ import annotations

import math
import time
from typing import Any, cast

import torch
from torch import Tensor

from ..bounds.backward import backward_bound
from ..bounds.intermediate import neuron_rows
from ..bounds.relax import relu_relaxation
from ..bounds.types import NodeBounds
from ..network import Network
from ..spec import LpBall

# elements of the largest coefficient tensor per block of subdomains (float64: 8 bytes each)
BLOCK_ELEMENTS = 1 << 22


def retighten_after(net: Network, pset: Any, bounds: NodeBounds, srcs: list[int], first: Tensor, *,
                    deadline: float = math.inf) -> NodeBounds:
    """Bounds of the ReLU inputs ``srcs`` (topological order) re-tightened by CROWN on B subdomains.

    ``bounds``: ReLU input node -> (lo, hi) of shape (B, *shape), valid on each subdomain (split
    neurons already clamped); ``first`` (B,) long: the position in ``srcs`` of each subdomain's
    shallowest split -- only nodes at later positions are recomputed for it. ``pset`` holds the
    B subdomains' input sets (LpBall or Box with B examples). Returns new (lo, hi) tensors; the
    caller's are not modified.
    """
    out: NodeBounds = {j: (lo.clone(), hi.clone()) for j, (lo, hi) in bounds.items()}
    n = first.shape[0]
    for pos, k in enumerate(srcs):
        if pos == 0 or time.perf_counter() >= deadline:
            continue
        who = (first < pos).nonzero().reshape(-1)
        if who.numel() == 0:
            continue
        lo, hi = out[k]
        shape = net.graph[k].shape
        lo_f, hi_f = lo.reshape(n, -1), hi.reshape(n, -1)
        unstable = (lo_f[who] < 0) & (hi_f[who] > 0)
        rows = unstable.any(0).nonzero().reshape(-1)
        if rows.numel() == 0:
            continue
        anc = net.ancestors(k)
        need = [j for j in srcs if j in anc and j != k]
        m = rows.numel()
        begin, a_rows, c_rows = neuron_rows(net, k, rows, lo)
        widest = max(math.prod(net.graph[i].shape) for i in anc)
        block = max(1, BLOCK_ELEMENTS // (2 * m * widest))
        for b0 in range(0, who.numel(), block):
            if time.perf_counter() >= deadline:
                break
            ex = who[b0 : b0 + block]
            e = ex.numel()
            rels = {j: relu_relaxation(out[j][0].index_select(0, ex), out[j][1].index_select(0, ex), "crown")
                    for j in need}
            sub = pset.select(ex)
            a = torch.cat([a_rows, -a_rows]).unsqueeze(0).expand(e, 2 * m, *a_rows.shape[1:])
            c = torch.cat([c_rows, -c_rows]).unsqueeze(0).expand(e, 2 * m)
            with torch.no_grad():
                val = backward_bound(net, cast(LpBall, sub), begin, a, {}, rule="crown", const=c, relaxations=rels)
            v_lo, v_hi = val[:, :m], -val[:, m:]
            cur_lo, cur_hi = lo_f[ex][:, rows], hi_f[ex][:, rows]
            u = (cur_lo < 0) & (cur_hi > 0)
            new_lo = torch.where(u, torch.maximum(cur_lo, v_lo), cur_lo)
            new_hi = torch.where(u, torch.minimum(cur_hi, v_hi), cur_hi)
            blk_lo, blk_hi = lo_f[ex], hi_f[ex]
            blk_lo[:, rows] = new_lo
            blk_hi[:, rows] = new_hi
            lo_f[ex] = blk_lo
            hi_f[ex] = blk_hi
        out[k] = (lo_f.reshape(n, *shape), hi_f.reshape(n, *shape))
    return out

