"""verify.complete: the one entry point of the complete engines (mip, bab, auto).

Oracles: the engines must agree with each other on every instance (each is exact when it
decides), every counterexample must pass the float64 re-check, and the adapters (certify,
verify_property) must report the same verdicts whichever engine decides.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from verify.bab import BabOptions
from verify.bounds import compute_bounds
from verify.certify import CertifyConfig, certify
from verify.complete import AUTO_MIP_MAX_UNSTABLE, HighsBackend, decide, unstable_count
from verify.errors import SpecError
from verify.network import Linear, Network, ReLU
from verify.properties import OutputProperty, VerifyOptions, verify_property
from verify.query import Disjunct, Query
from verify.spec import LpBall, check_counterexample


def fc(seed: int, widths: tuple[int, ...] = (5, 16, 16, 3)) -> Network:
    g = torch.Generator().manual_seed(seed)
    layers: list = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(Linear(torch.randn(b, a, generator=g) / max(1.0, a ** 0.5 / 2), 0.3 * torch.randn(b, generator=g)))
        if i < len(widths) - 2:
            layers.append(ReLU())
    return Network(tuple(layers), (widths[0],))


def robustness(net: Network, seed: int, eps: float, p: str = "inf") -> tuple[Query, dict]:
    g = torch.Generator().manual_seed(1000 + seed)
    c = torch.rand((1, net.input_shape[0]), generator=g, dtype=torch.float64) * 0.6 + 0.2
    label = int(net.forward(c).argmax())
    ball = LpBall.make(c, eps, p)
    br = compute_bounds(net, ball, torch.tensor([label]), method="crown", dtype=torch.float64)
    return Query.robustness(ball, label, net.n_classes), dict(br.intermediate)


@pytest.mark.parametrize("p,eps", [("inf", 0.08), ("2", 0.25), ("1", 0.4)])
def test_engines_agree_on_random_robustness_queries(p: str, eps: float) -> None:
    decided = {"verified": 0, "falsified": 0}
    for seed in range(12):
        net = fc(seed)
        q, bounds = robustness(net, seed, eps, p)
        out = {e: decide(net, q, engine=e, deadline=time.perf_counter() + 30, mip=HighsBackend(), bounds=bounds)  # type: ignore[arg-type]
               for e in ("mip", "bab", "auto")}
        statuses = {o.status for o in out.values()}
        assert "unknown" not in statuses, out
        assert len(statuses) == 1, (seed, {e: o.status for e, o in out.items()})
        decided[out["mip"].status] += 1
        for o in out.values():
            if o.status == "falsified":
                assert o.counterexample is not None and o.disjunct is not None
                assert bool(check_counterexample(net, q.input_set, torch.tensor([q.label]), o.counterexample)[0])
        assert out["bab"].decided_by == "bab" and out["bab"].domains is not None
    assert decided["verified"] and decided["falsified"]  # both kinds of answer were exercised


def test_auto_uses_the_mip_for_small_models_and_falls_back_to_it() -> None:
    net = fc(3, (5, 64, 64, 3))
    q, bounds = robustness(net, 3, 0.25)
    n_unstable = unstable_count(bounds, net)
    assert n_unstable is not None and n_unstable > AUTO_MIP_MAX_UNSTABLE
    # branch and bound capped at one open domain gives up ('memory'); the portfolio's MIP decides
    capped = decide(net, q, engine="bab", deadline=time.perf_counter() + 30, mip=HighsBackend(), bounds=bounds,
                    bab_options=BabOptions(max_domains=1, attack=False))
    auto = decide(net, q, engine="auto", deadline=time.perf_counter() + 60, mip=HighsBackend(), bounds=bounds,
                  bab_options=BabOptions(max_domains=1, attack=False))
    mip = decide(net, q, engine="mip", deadline=time.perf_counter() + 60, mip=HighsBackend(), bounds=bounds)
    assert mip.status != "unknown"
    assert auto.status == mip.status
    if capped.status == "unknown":
        assert auto.decided_by == "mip"
    small_net = fc(4, (5, 6, 3))
    q2, b2 = robustness(small_net, 4, 0.05)
    assert (unstable_count(b2, small_net) or 0) <= AUTO_MIP_MAX_UNSTABLE
    assert decide(small_net, q2, engine="auto", deadline=time.perf_counter() + 30, mip=HighsBackend(), bounds=b2).decided_by == "mip"


def test_certify_reports_the_same_verdicts_with_every_engine() -> None:
    net = fc(7, (5, 24, 24, 3))
    g = torch.Generator().manual_seed(7)
    x = torch.rand((12, 5), generator=g, dtype=torch.float64) * 0.6 + 0.2
    y = net.forward(x).argmax(1)
    ball = LpBall.make(x, 0.15, "inf")
    runs = {}
    for engine in ("mip", "bab", "auto"):
        cfg = CertifyConfig(p=float("inf"), eps=0.15, methods=("crown",), attack_steps=0, timeout=30, complete=engine)  # type: ignore[arg-type]
        runs[engine] = certify(net, ball, y, list(range(12)), cfg, progress=False)
    for rs in zip(*runs.values()):
        assert len({r.status for r in rs}) == 1, [(r.status, r.decided_by) for r in rs]
    bab_rows = [r.row() for r in runs["bab"] if r.decided_by == "bab"]
    assert bab_rows, "no example reached the complete stage"
    assert all(row["domains"] is not None and row["domains"] >= 0 for row in bab_rows)


def test_vnnlib_properties_same_verdict_with_mip_and_bab() -> None:
    rng = np.random.default_rng(0)
    agree = 0
    for seed in range(8):
        net = fc(20 + seed, (3, 12, 12, 3))
        lo = rng.uniform(0.0, 0.5, 3)
        prop = OutputProperty(lo, lo + 0.3, tuple(Disjunct(rng.standard_normal((2, 3)), rng.standard_normal(2) * 0.5)
                                                  for _ in range(2)), 3)
        res = {e: verify_property(net, prop, VerifyOptions(timeout=30, attack_steps=0, complete=e)) for e in ("mip", "bab")}
        assert res["mip"].status == res["bab"].status, (seed, res)
        agree += 1
    assert agree == 8


def test_unknown_engine_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match="complete engine"):
        CertifyConfig(p=2.0, eps=0.1, complete="magic")  # type: ignore[arg-type]
