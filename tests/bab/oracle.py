"""Independent oracles for the BaB tests: random small nets, exact minima by activation-pattern
enumeration (a DFS over neurons, each partial pattern's region checked by an LP), and confirm()."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import linprog

from verify.network import Linear, Network, ReLU
from verify.properties import Box, Disjunct
from verify.query import Query, confirm_point


def random_net(seed: int, n_in: int, hidden: tuple[int, ...], n_out: int) -> Network:
    g = torch.Generator().manual_seed(seed)
    sizes = (n_in, *hidden, n_out)
    layers: list = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(Linear(torch.randn(b, a, generator=g, dtype=torch.float64) * 1.5 / a**0.5,
                             torch.randn(b, generator=g, dtype=torch.float64) * 0.3))
        if i < len(sizes) - 2:
            layers.append(ReLU())
    return Network(layers, (n_in,), (0.0, 1.0), name=f"rand{seed}")


def _linears(net: Network) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(l.weight.numpy(), l.bias.numpy()) for l in net.layers if isinstance(l, Linear)]


def _feasible(A: list[np.ndarray], b: list[float], lo: np.ndarray, hi: np.ndarray) -> bool:
    n = lo.size
    if not A:
        return True
    res = linprog(np.zeros(n), A_ub=np.array(A), b_ub=np.array(b), bounds=list(zip(lo, hi)), method="highs")
    return bool(res.status == 0)


def exact_min(net: Network, lo: np.ndarray, hi: np.ndarray, disjuncts: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """min over the box and the disjuncts k of max_i (C_ki y(x) - d_ki): <= 0 iff the property is violated."""
    lins = _linears(net)
    n = lo.size
    best = math.inf

    def leaf(W: np.ndarray, c: np.ndarray, A: list[np.ndarray], b: list[float]) -> None:
        nonlocal best
        Wl, bl = lins[-1]
        Wo, co = Wl @ W, Wl @ c + bl  # y = Wo x + co on this region
        for C, d in disjuncts:
            if len(d) == 0:
                best = min(best, -math.inf)
                continue
            rows = C @ Wo
            A_ub = np.vstack([np.hstack([np.array(A).reshape(-1, n), np.zeros((len(A), 1))]),
                              np.hstack([rows, -np.ones((len(d), 1))])])
            b_ub = np.concatenate([np.array(b, dtype=float), d - C @ co])
            res = linprog(np.r_[np.zeros(n), 1.0], A_ub=A_ub, b_ub=b_ub, bounds=list(zip(lo, hi)) + [(None, None)],
                          method="highs")
            if res.status == 0:
                best = min(best, float(res.fun))

    def rec(layer: int, W: np.ndarray, c: np.ndarray, A: list[np.ndarray], b: list[float]) -> None:
        if layer == len(lins) - 1:
            leaf(W, c, A, b)
            return
        Wl, bl = lins[layer]
        pre_W, pre_c = Wl @ W, Wl @ c + bl
        m = pre_W.shape[0]

        def neuron(i: int, act: list[bool], A: list[np.ndarray], b: list[float]) -> None:
            if i == m:
                mask = np.array(act, dtype=float)
                rec(layer + 1, mask[:, None] * pre_W, mask * pre_c, A, b)
                return
            for on in (True, False):
                s = -1.0 if on else 1.0  # on: -v <= 0
                A2, b2 = A + [s * pre_W[i]], b + [-s * pre_c[i]]
                if _feasible(A2, b2, lo, hi):
                    neuron(i + 1, act + [on], A2, b2)

        neuron(0, [], A, b)

    rec(0, np.eye(n), np.zeros(n), [], [])
    return best


def box_confirm(net: Network, lo: torch.Tensor, hi: torch.Tensor, disjuncts: list[tuple[np.ndarray, np.ndarray]]):
    box = Box.make(lo.reshape(1, -1).numpy(), hi.reshape(1, -1).numpy())
    q = Query(box, tuple(Disjunct(np.asarray(C), np.asarray(d)) for C, d in disjuncts))
    return q, lambda x: confirm_point(net, q, x)


def random_disjuncts(g: np.random.Generator, n_out: int, k: int, m_max: int, shift: float) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for _ in range(k):
        m = int(g.integers(1, m_max + 1))
        C = g.standard_normal((m, n_out))
        d = g.standard_normal(m) * 0.3 + shift
        out.append((C, d))
    return out


def near_boundary_property(seed: int, eps_range: tuple[float, float], max_rows: int):
    """A random tiny net, an input box and 3 random disjuncts (1 to max_rows - 1 rows each) whose
    rows are all moved by t0 + u, so that the exact minimum t0 of the violation becomes -u with
    |u| in [0.005, 0.1]: (net, lo, hi, disjuncts, u). Most such instances need branching."""
    rg = np.random.default_rng(seed)
    n_in = int(rg.integers(2, 5))
    net = random_net(seed, n_in, (int(rg.integers(4, 9)), int(rg.integers(4, 9))), 3)
    c = rg.uniform(0.2, 0.8, n_in)
    eps = rg.uniform(*eps_range)
    lo, hi = np.clip(c - eps, 0, 1), np.clip(c + eps, 0, 1)
    dis = random_disjuncts(rg, 3, int(rg.integers(1, max_rows)), 3, shift=0.0)
    t0 = exact_min(net, lo, hi, dis)
    u = float(rg.choice([-1.0, 1.0]) * rg.uniform(0.005, 0.1))
    return net, lo, hi, [(C, d + t0 + u) for C, d in dis], u
