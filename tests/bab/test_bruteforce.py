"""BaB against exact minima by activation-pattern enumeration (tests/bab/oracle.py) on tiny nets.

The property is moved to within 0.005-0.1 of the boundary (its exact minimum becomes -u), so most
instances need branching. verified => exact min > 0; falsified => confirm accepted and exact
min <= 0; and every instance is decided within a few seconds, in each mode.
"""

from __future__ import annotations

import functools

import pytest
import torch

import numpy as np

from tests.bab.oracle import box_confirm, exact_min, near_boundary_property, random_disjuncts, random_net
from verify.bab import BabOptions, bab

MODES = [("on", True, "babsr", {}), ("off", True, "babsr", {}), ("off", False, "babsr", {}), ("off", True, "fsb", {}),
         # CROWN re-tightening of the children every other round, float64 steps, alpha-CROWN on the whole root
         ("off", True, "babsr", {"retighten": 2, "float32_steps": False, "intermediate_alpha_share": 1.0}),
         # one joint search over every open disjunct (the default is a search per disjunct)
         ("off", True, "babsr", {"per_disjunct": False}),
         # no extra steps for stalled children (the default gives them stall_steps more)
         ("off", True, "babsr", {"stall_steps": 0})]


@functools.lru_cache(maxsize=None)
def _instance(seed: int):
    net, lo, hi, dis, u = near_boundary_property(seed, (0.15, 0.4), 3)
    return net, lo, hi, dis, -u  # every row moved by t0 + u: the exact minimum moves by the same


@pytest.mark.parametrize("split,attack,branching,extra", MODES)
def test_decides_like_the_exact_minimum(split: str, attack: bool, branching: str, extra: dict[str, object]) -> None:
    branched = 0
    for seed in range(10):
        net, lo, hi, dis, true = _instance(seed)
        q, conf = box_confirm(net, torch.tensor(lo), torch.tensor(hi), dis)
        r = bab(net, q,
                options=BabOptions(timeout=8, input_split=split, attack=attack, branching=branching,  # type: ignore[arg-type]
                                   **extra))  # type: ignore[arg-type]
        assert r.status != "unknown", (seed, r)
        assert r.total_seconds < 8
        if r.status == "verified":
            assert true > 0, (seed, true, r)
            assert r.margin_lb is not None and 0 < r.margin_lb <= true + 1e-9
        else:
            assert true <= 0, (seed, true, r)
            assert r.counterexample is not None and r.counterexample.dtype == torch.float64
            assert tuple(r.counterexample.shape) == (1, *net.input_shape)
            found = conf(r.counterexample)
            assert found is not None and found[1] == r.disjunct
            assert r.margin_lb is None or r.margin_lb <= true + 1e-9
        branched += r.domains > 1
    assert branched >= 3


def _every_disjunct_near(seed: int):
    """3-4 disjuncts, each moved to within 0.005-0.1 of the boundary on its own (so that several are open at the
    root), all on the same side: (net, lo, hi, disjuncts, exact minimum)."""
    rg = np.random.default_rng(1000 + seed)
    n_in = int(rg.integers(2, 5))
    net = random_net(1000 + seed, n_in, (int(rg.integers(4, 9)), int(rg.integers(4, 9))), 3)
    c = rg.uniform(0.2, 0.8, n_in)
    eps = rg.uniform(0.15, 0.4)
    lo, hi = np.clip(c - eps, 0, 1), np.clip(c + eps, 0, 1)
    side = float(rg.choice([-1.0, 1.0]))
    out = []
    for C, d in random_disjuncts(rg, 3, int(rg.integers(3, 5)), 3, shift=0.0):
        t = exact_min(net, lo, hi, [(C, d)])
        out.append((C, d + t - side * rg.uniform(0.005, 0.1)))
    return net, lo, hi, out, exact_min(net, lo, hi, out)


def test_a_search_per_disjunct_decides_like_the_exact_minimum(monkeypatch: pytest.MonkeyPatch) -> None:
    """Up to four disjuncts of 1-3 rows: the default path (a search per disjunct open at the root,
    verify.bab.core._per_disjunct) runs, decides every instance as the exact minimum says, and its
    lower bound of a verified instance lies in (0, exact minimum]."""
    import verify.bab.core as core

    calls: list[int] = []
    inner = core._per_disjunct

    def counting(*a, **k):  # type: ignore[no-untyped-def]
        calls.append(len(a[9]))  # open_k
        return inner(*a, **k)

    monkeypatch.setattr(core, "_per_disjunct", counting)
    for seed in range(12):
        net, lo, hi, dis, true = _every_disjunct_near(seed)
        q, conf = box_confirm(net, torch.tensor(lo), torch.tensor(hi), dis)
        r = bab(net, q,
                options=BabOptions(timeout=8, input_split="off"))
        assert r.status == ("verified" if true > 0 else "falsified"), (seed, true, r)
        if r.status == "verified":
            assert 0 < r.margin_lb <= true + 1e-9, (seed, true, r)
        else:
            assert r.counterexample is not None and conf(r.counterexample) is not None
            assert r.margin_lb is None or r.margin_lb <= true + 1e-9
    assert len(calls) >= 3 and max(calls) >= 2, calls


def test_stalled_children_get_more_steps_and_never_a_lower_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stall escalation, made to run on every open child (no child of these tiny nets stalls on
    its own), only raises row bounds, and the verdicts still match the exact minima (a lower bound
    above the true minimum would verify a falsifiable one)."""
    import verify.bab.core as core

    monkeypatch.setattr(core, "STALL_GAIN", 1e9)

    calls: list[int] = []
    orig = core._Search.unstall

    def spy(self, idx, res, lb, bounds, signs, pprov):  # type: ignore[no-untyped-def]
        res2, lb2 = orig(self, idx, res, lb, bounds, signs, pprov)
        assert bool((lb2 >= lb).all())
        calls.append(int(idx.numel()))
        return res2, lb2

    monkeypatch.setattr(core._Search, "unstall", spy)
    for seed in range(10):
        net, lo, hi, dis, true = _instance(seed)
        q, _ = box_confirm(net, torch.tensor(lo), torch.tensor(hi), dis)
        r = bab(net, q, options=BabOptions(timeout=8, input_split="off", per_disjunct=False))
        assert r.status != "unknown", (seed, r)
        assert (r.status == "verified") == (true > 0), (seed, true, r)
        if r.status == "verified":
            assert r.margin_lb is not None and 0 < r.margin_lb <= true + 1e-9
    assert len(calls) >= 5
