"""BaB against exact minima by activation-pattern enumeration (tests/bab/oracle.py) on tiny nets.

The property is moved to within 0.005-0.1 of the boundary (its exact minimum becomes -u), so most
instances need branching. verified => exact min > 0; falsified => confirm accepted and exact
min <= 0; and every instance is decided within a few seconds, in each mode.
"""

from __future__ import annotations

import functools

import pytest
import torch

from tests.bab.oracle import box_confirm, near_boundary_property
from verify.bab import BabOptions, bab

MODES = [("on", True, "babsr", {}), ("off", True, "babsr", {}), ("off", False, "babsr", {}), ("off", True, "fsb", {}),
         # CROWN re-tightening of the children every other round, float64 steps, alpha-CROWN on the whole root
         ("off", True, "babsr", {"retighten": 2, "float32_steps": False, "intermediate_alpha_share": 1.0})]


@functools.lru_cache(maxsize=None)
def _instance(seed: int):
    net, lo, hi, dis, u = near_boundary_property(seed, (0.15, 0.4), 3)
    return net, lo, hi, dis, -u  # every row moved by t0 + u: the exact minimum moves by the same


@pytest.mark.parametrize("split,attack,branching,extra", MODES)
def test_decides_like_the_exact_minimum(split: str, attack: bool, branching: str, extra: dict[str, object]) -> None:
    branched = 0
    for seed in range(10):
        net, lo, hi, dis, true = _instance(seed)
        box, conf = box_confirm(net, torch.tensor(lo), torch.tensor(hi), dis)
        r = bab(net, box, [(torch.tensor(C), torch.tensor(d)) for C, d in dis], confirm=conf,
                options=BabOptions(timeout=8, input_split=split, attack=attack, branching=branching,  # type: ignore[arg-type]
                                   **extra))  # type: ignore[arg-type]
        assert r.status != "unknown", (seed, r)
        assert r.seconds < 8
        if r.status == "verified":
            assert true > 0, (seed, true, r)
            assert 0 < r.lower_bound <= true + 1e-9
        else:
            assert true <= 0, (seed, true, r)
            assert r.counterexample is not None and r.counterexample.dtype == torch.float64
            assert tuple(r.counterexample.shape) == (1, *net.input_shape)
            found = conf(r.counterexample)
            assert found is not None and found[1] == r.disjunct
            assert r.lower_bound <= true + 1e-9
        branched += r.domains > 1
    assert branched >= 3
