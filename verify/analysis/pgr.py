"""Perturbation growth ratio (PGR) per group of layers (Kim et al., ECCV 2020, SSP networks).

For a group that maps node ``in_node`` of ``net.graph`` to node ``out_node``, and a test
point x with an adversarial point x_adv (PGD, :func:`verify.attacks.pgd_attack`),

    PGR_p = mean over points of ||out(x_adv) - out(x)||_p / ||in(x_adv) - in(x)||_p,   p = 1, 2.

A ratio above 1 means the group amplifies the adversarial perturbation it receives.

Groups: ``net.metadata["groups"]`` when the model carries them (a list of [in_node, out_node],
as the SSP networks of ``training.architectures`` store them); otherwise one group per
top-level :class:`~verify.network.Residual` block (the node feeding it -> its Add node), and
for networks without residual blocks one group per ReLU layer (from the previous ReLU, or
the input, to this ReLU's output) plus a last group from the last ReLU to the logits.

Every test point, misclassified or not, gets a PGD point. Points where a group's input
difference is exactly zero (e.g. a perturbation that only moves pixels the group's input
ignores) have no ratio for that group and are left out of its mean; each group reports how
many points it averaged.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from ..errors import DataError, SpecError
from ..network import Layer, Network, Residual
from ..spec import LpBall, check_eps, p_name, parse_p

Group = tuple[int, int]


def count_graph_nodes(layers: Sequence[Layer]) -> int:
    """How many nodes of net.graph a layer sequence emits (the arithmetic of verify.network._build_graph)."""
    n = 0
    for layer in layers:
        n += count_graph_nodes(layer.body) + count_graph_nodes(layer.shortcut) + 1 if isinstance(layer, Residual) else 1
    return n


def top_level_nodes(net: Network) -> list[tuple[int, int]]:
    """For each top-level layer: (index of the node feeding it, index of its output node)."""
    out = []
    src = 0
    nxt = 1
    for layer in net.layers:
        nxt += count_graph_nodes([layer])
        out.append((src, nxt - 1))
        src = nxt - 1
    return out


def default_groups(net: Network) -> list[Group]:
    """``net.metadata["groups"]``, else one group per top-level Residual block, else per ReLU layer (see module doc)."""
    meta = net.metadata.get("groups") if isinstance(net.metadata, dict) else None
    if meta is not None:
        return check_groups(net, meta)
    spans = top_level_nodes(net)
    res = [span for span, layer in zip(spans, net.layers) if isinstance(layer, Residual)]
    if res:
        return res
    groups: list[Group] = []
    start = 0
    for node in net.relu_nodes:
        groups.append((start, node.index))
        start = node.index
    last = len(net.graph) - 1
    if start != last:
        groups.append((start, last))
    return groups


def check_groups(net: Network, groups: Any) -> list[Group]:
    """Groups as (in_node, out_node) pairs of valid node indices with in_node <= out_node."""
    try:
        pairs = [(int(a), int(b)) for a, b in groups]
    except (TypeError, ValueError):
        raise SpecError(f"groups must be a list of [in_node, out_node] pairs, got {groups!r}") from None
    n = len(net.graph)
    for a, b in pairs:
        if not (0 <= a < n and 0 <= b < n):
            raise SpecError(f"group ({a}, {b}) names a node outside 0..{n - 1}")
        if a > b:
            raise SpecError(f"group ({a}, {b}) runs backwards: its input node must come first")
    if not pairs:
        raise SpecError("no groups given")
    return pairs


def parse_groups(text: str) -> list[Group]:
    """'0:3,3:7' -> [(0, 3), (3, 7)] (for the command line)."""
    out = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        bits = part.split(":")
        if len(bits) != 2 or not all(b.isdigit() for b in bits):
            raise SpecError(f"--groups must look like 0:3,3:7 (in_node:out_node pairs), got {text!r}")
        out.append((int(bits[0]), int(bits[1])))
    if not out:
        raise SpecError(f"--groups must look like 0:3,3:7, got {text!r}")
    return out


def growth_ratios(net: Network, x: Tensor, x_adv: Tensor, groups: Sequence[Group]) -> Tensor:
    """Per point and group: ratios (N, G, 2) for p = 1 and p = 2, in float64; NaN where the input difference is 0."""
    groups = check_groups(net, groups)
    if x.shape != x_adv.shape:
        raise DataError(f"points {tuple(x.shape)} and perturbed points {tuple(x_adv.shape)} differ in shape")
    with torch.no_grad():
        a = net.forward(x.to(torch.float64), all_nodes=True)
        b = net.forward(x_adv.to(torch.float64), all_nodes=True)
    n = x.shape[0]
    out = torch.full((n, len(groups), 2), math.nan, dtype=torch.float64)
    for g, (i, o) in enumerate(groups):
        din = (b[i] - a[i]).reshape(n, -1)
        dout = (b[o] - a[o]).reshape(n, -1)
        for k, p in enumerate((1.0, 2.0)):
            num = dout.norm(p=p, dim=1)
            den = din.norm(p=p, dim=1)
            ok = den > 0
            out[ok, g, k] = num[ok] / den[ok]
    return out


@dataclass(frozen=True)
class GroupGrowth:
    """The mean growth ratios of one group."""

    group: int
    in_node: int
    out_node: int
    label: str
    pgr_l1: float  # mean over points of ||d out||_1 / ||d in||_1
    pgr_l2: float
    points: int  # points with a non-zero input difference (those averaged)


@dataclass(frozen=True)
class PGRResult:
    """Growth ratios per group for PGD points at (p, eps)."""

    p: str  # the attack's norm
    eps: float
    n: int
    attack_success_rate: float  # float64-confirmed counterexamples among all points
    groups: tuple[GroupGrowth, ...]

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["groups"] = [asdict(g) for g in self.groups]
        return d


def _label(net: Network, i: int, o: int) -> str:
    op = net.graph[o].op
    return f"{i}->{o} ({getattr(op, 'kind', 'input') if op is not None else 'input'})"


def summarize_ratios(net: Network, ratios: Tensor, groups: Sequence[Group]) -> tuple[GroupGrowth, ...]:
    out = []
    for g, (i, o) in enumerate(groups):
        r = ratios[:, g]
        ok = ~torch.isnan(r[:, 0])
        cnt = int(ok.sum())
        m1 = float(r[ok, 0].mean()) if cnt else math.nan
        m2 = float(r[ok, 1].mean()) if cnt else math.nan
        out.append(GroupGrowth(g, i, o, _label(net, i, o), m1, m2, cnt))
    return tuple(out)


def perturbation_growth(
    net: Network,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    p: float | str = "inf",
    groups: Sequence[Group] | None = None,
    steps: int = 20,
    restarts: int = 1,
    seed: int = 0,
) -> PGRResult:
    """PGD points in the (p, eps) ball, then the mean growth ratio of every group for p = 1 and 2.

    Every point gets a PGD point (cross-entropy ascent), misclassified ones included:
    :func:`verify.attacks.pgd_attack` would leave those at their centre, so this runs the same
    :class:`~verify.attacks.PGD` search on all points; ``attack_success_rate`` is the fraction
    of float64-confirmed counterexamples among all points (misclassified ones count as broken).
    """
    from ..attacks import PGD, inside_set, validate_attack_inputs
    from ..spec import check_counterexample

    pv = parse_p(p)
    e = float(check_eps(eps)[0])
    if e <= 0:
        raise SpecError("eps must be > 0: growth ratios need a perturbation")
    gs = check_groups(net, groups) if groups is not None else default_groups(net)
    ball = LpBall.make(x, e, pv, net.input_range)
    yl = validate_attack_inputs(net, ball, y)
    cand, _ = PGD(steps=steps, restarts=restarts, loss="ce", seed=seed).run(net, ball.to(torch.float32), yl)
    x_adv = inside_set(ball, cand.detach())
    success = check_counterexample(net, ball, yl, x_adv)
    ratios = growth_ratios(net, x, x_adv, gs)
    rate = float(success.float().mean()) if success.numel() else 0.0
    return PGRResult(p_name(pv), e, int(x.shape[0]), rate, summarize_ratios(net, ratios, gs))


def plot_pgr(result: PGRResult, path: str, *, title: str | None = None) -> None:
    """Bars per group: PGR for p = 1 and p = 2, with the line at 1 (no growth)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from ..atomic import write_atomic_with

    gs = result.groups
    xs = np.arange(len(gs))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(gs) + 2), 4))
    ax.bar(xs - 0.2, [g.pgr_l1 for g in gs], 0.4, label="PGR, L1")
    ax.bar(xs + 0.2, [g.pgr_l2 for g in gs], 0.4, label="PGR, L2")
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xticks(xs)
    ax.set_xticklabels([g.label for g in gs], fontsize=7, rotation=30, ha="right")
    ax.set_ylabel("mean ||d out|| / ||d in||")
    ax.set_title(title or f"perturbation growth ratio per group (PGD, L{result.p}, eps {result.eps:g})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    write_atomic_with(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
