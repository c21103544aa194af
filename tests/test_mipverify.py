"""The MIPVerify.jl backend: the exported .mat read back by an independent transcription of
MIPVerify's reading rules (tests/mipverify_reader.py), the verdict mapping, the errors without
Julia, and -- when julia and juliacall are present -- the Julia tests and agreement with HiGHS.
"""

from __future__ import annotations

import gzip
import importlib.util
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from verify.errors import ModelError, SolverUnavailableError, SpecError
from verify.formats import save_model
from verify.mip import mipverify
from verify.mip.mipverify import MipVerifyOptions, RawAnswer, map_answer
from verify.network import ChannelAffine, Conv2d, Flatten, Linear, Network, ReLU, same_padding
from verify.results import Verdict
from verify.spec import LpBall, margins_f64

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mipverify_reader as reader  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
HAVE_JULIA = shutil.which("julia") is not None
HAVE_JULIACALL = importlib.util.find_spec("juliacall") is not None
needs_julia = pytest.mark.skipif(not HAVE_JULIA, reason="julia not on PATH: MIPVerify.jl tests need Julia >= 1.10")
needs_juliacall = pytest.mark.skipif(
    not (HAVE_JULIA and HAVE_JULIACALL), reason="julia not on PATH or juliacall not importable: pip install relu-verify[julia]")


def mnist_test(shared: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(shared / "mnist" / "t10k-images-idx3-ubyte.gz", "rb") as fh:
        raw = fh.read()
    x = np.frombuffer(raw, dtype=np.uint8, offset=16)[: n * 784].reshape(n, 1, 28, 28).astype(np.float64) / 255.0
    with gzip.open(shared / "mnist" / "t10k-labels-idx1-ubyte.gz", "rb") as fh:
        y = np.frombuffer(fh.read(), dtype=np.uint8, offset=8)[:n].astype(np.int64)
    return x, y


def _conv(gen: torch.Generator, c_in: int, c_out: int, k: int, stride: int, padding) -> Conv2d:
    w = torch.randn(c_out, c_in, k, k, generator=gen, dtype=torch.float64) / (k * math.sqrt(c_in))
    return Conv2d(w.float(), (0.1 * torch.randn(c_out, generator=gen)).float(), stride, padding)


def _linear(gen: torch.Generator, n_in: int, n_out: int) -> Linear:
    w = torch.randn(n_out, n_in, generator=gen) / math.sqrt(n_in)
    return Linear(w, 0.1 * torch.randn(n_out, generator=gen))


def conv_net(order: str, *, normalize: bool = False) -> Network:
    """LeNet-small-like: 4x4 stride 2 'SAME' (pad 1) then a 5x5 stride 2 conv with TF's asymmetric SAME padding."""
    g = torch.Generator().manual_seed(1)
    layers = [ChannelAffine.normalize([0.1307], [0.3081])] if normalize else []
    layers += [
        _conv(g, 1, 4, 4, 2, 1), ReLU(),
        _conv(g, 4, 6, 5, 2, same_padding((14, 14), (5, 5), (2, 2))), ReLU(),
        _conv(g, 6, 5, 3, 1, (0, 1, 1, 0)), ReLU(),
        Flatten(order), _linear(g, 5 * 6 * 6, 20), ReLU(), _linear(g, 20, 10),
    ]
    return Network(layers, (1, 28, 28), name=f"conv_{order}")


def fc_net(vector_input: bool = False) -> Network:
    g = torch.Generator().manual_seed(2)
    layers = ([] if vector_input else [Flatten()]) + [_linear(g, 784, 30), ReLU(), _linear(g, 30, 15), ReLU(), _linear(g, 15, 10)]
    return Network(layers, (784,) if vector_input else (1, 28, 28), name="fc")


# --------------------------------------------------------------------------- the .mat read by MIPVerify's rules


def test_transcribed_conv_loops_equal_vectorised():
    """The vectorised conv of the reader is the literal @nloops transcription, for every padding kind."""
    rng = np.random.default_rng(0)
    for padding in ("same", "valid", 1, (1, 2), (0, 2, 1, 0)):
        for stride in (1, 2, 3):
            x = rng.random((2, 7, 6, 3))
            f = rng.standard_normal((3, 2, 3, 4))
            b = rng.standard_normal(4)
            a = reader.conv2d_loops(x, f, b, stride, padding)
            c = reader.conv2d(x, f, b, stride, padding)
            assert a.shape == c.shape
            np.testing.assert_allclose(a, c, rtol=0, atol=1e-12)


def test_transcribed_flatten_orders():
    """Flatten([1,4,3,2]) on NHWC reads channels fastest (TF), Flatten([1,3,2,4]) reads C order (PyTorch)."""
    chw = np.arange(2 * 3 * 4, dtype=np.float64).reshape(2, 3, 4)
    nhwc = chw.transpose(1, 2, 0)[None]
    np.testing.assert_array_equal(reader.flatten(nhwc, [1, 4, 3, 2]), chw.transpose(1, 2, 0).reshape(-1))
    np.testing.assert_array_equal(reader.flatten(nhwc, [1, 3, 2, 4]), chw.reshape(-1))


def test_exported_keys_shapes_follow_mipverify(tmp_path):
    net = conv_net("NHWC", normalize=True)
    path = tmp_path / "net.mat"
    save_model(net, path, format="mat-mipverify")
    d = scipy.io.loadmat(path)
    assert d["conv1/weight"].shape == (4, 4, 1, 4)  # HWIO
    assert d["conv2/weight"].shape == (5, 5, 4, 6)
    assert d["conv1/bias"].shape == (1, 4)
    assert d["fc1/weight"].shape == (5 * 6 * 6, 20)  # (in, out)
    assert d["fc1/bias"].shape == (1, 20)
    assert d["logits/weight"].shape == (20, 10)
    assert d["logits/bias"].shape == (1, 10)
    convs = [l for l in net.layers if isinstance(l, Conv2d)]
    np.testing.assert_array_equal(d["conv2/weight"], convs[1].weight.numpy().transpose(2, 3, 1, 0))
    assert d["conv2/padding"].reshape(-1).tolist() == [1, 2, 1, 2]  # TF SAME, k5 s2 on 14x14
    assert int(d["conv2/stride"].reshape(-1)[0]) == 2


@pytest.mark.parametrize("make", [
    lambda: conv_net("NHWC"), lambda: conv_net("NCHW"), lambda: conv_net("NHWC", normalize=True),
    lambda: fc_net(), lambda: fc_net(vector_input=True),
], ids=["conv-nhwc", "conv-nchw", "conv-normalize", "fc", "fc-vector-input"])
def test_mipverify_reading_rules_give_network_logits(make, tmp_path, shared_data):
    """100 MNIST test images: logits by MIPVerify's reading rules == Network.forward (float64)."""
    net = make()
    path = tmp_path / "net.mat"
    save_model(net, path, format="mat-mipverify")
    x, _ = mnist_test(shared_data, 100)
    if net.input_shape == (784,):
        x = x.reshape(100, 784)
    got = reader.logits_from_file(str(path), x)
    want = net.forward(torch.as_tensor(x), dtype=torch.float64).numpy()
    assert got.shape == (100, 10)
    assert np.abs(got - want).max() <= 1e-5
    assert np.abs(want).max() > 0.1  # not a degenerate all-zero network


def test_flatten_order_matters_in_the_file(tmp_path, shared_data):
    """The same weights read with the other Flatten give different logits: the order is really in the file."""
    net = conv_net("NHWC")
    path = tmp_path / "net.mat"
    save_model(net, path, format="mat-mipverify")
    d = reader.matread(str(path))
    d["flatten_order"] = "NCHW"
    layers, _ = reader.read_layers(d)
    x, _ = mnist_test(shared_data, 3)
    other = np.stack([reader.forward(layers, reader.to_mipverify_input(xi)) for xi in x])
    want = net.forward(torch.as_tensor(x), dtype=torch.float64).numpy()
    assert np.abs(other - want).max() > 1e-3


# --------------------------------------------------------------------------- verdict mapping


def toy_net() -> Network:
    """h = relu([x1 - x2, x2 - x1]), logits = h: at (0.7, 0.3) the Linf radius is 0.2, the L1 radius 0.4."""
    w = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64)
    return Network([Linear(w, torch.zeros(2)), ReLU(), Linear(torch.eye(2), torch.zeros(2))], (2,), name="toy")


def raw(**kw) -> RawAnswer:
    base = dict(solved=True, termination="OPTIMAL", infeasible=False, has_solution=False, objective=math.nan,
                dual_bound=math.nan, gap=math.nan, perturbed=np.zeros(0), predicted=0, solve_time=0.1,
                total_time=0.2, n_binaries=2, objective_kind="worst", norm_order=math.inf)
    base.update(kw)
    return RawAnswer(**base)


def ball(eps: float, p) -> LpBall:
    return LpBall.make(torch.tensor([[0.7, 0.3]], dtype=torch.float64), eps, p)


def test_only_exact_infeasible_verifies():
    net = toy_net()
    r = map_answer(net, ball(0.15, "inf"), 0, raw(termination="INFEASIBLE", infeasible=True), seconds=1.0)
    assert (r.status, r.decided_by, r.solver_status) == ("verified", "mip", "INFEASIBLE")
    for status in ("INFEASIBLE_OR_UNBOUNDED", "LOCALLY_INFEASIBLE", "OTHER_ERROR"):
        r = map_answer(net, ball(0.15, "inf"), 0, raw(termination=status, infeasible=False), seconds=1.0)
        assert r.status == "unknown" and status in r.reason
    r = map_answer(net, ball(0.15, "inf"), 0, raw(termination="TIME_LIMIT"), seconds=1.0)
    assert (r.status, r.reason) == ("unknown", "timeout")


def test_counterexamples_are_rechecked_in_float64():
    net = toy_net()
    # a real counterexample for eps = 0.25: the corner (0.45, 0.55) has violation 0.1
    good = raw(has_solution=True, objective=0.1, dual_bound=0.1, perturbed=np.array([0.45, 0.55]))
    r = map_answer(net, ball(0.25, "inf"), 0, good, seconds=1.0)
    assert r.status == "falsified"
    assert float(margins_f64(net, r.counterexample, torch.tensor([0]))[0]) == pytest.approx(0.1)  # max_j f_j - f_y
    assert torch.allclose(r.counterexample, torch.tensor([[0.45, 0.55]], dtype=torch.float64))
    # the solver's point does not misclassify (numerical trouble): never falsified
    bad = raw(has_solution=True, objective=0.1, dual_bound=0.1, perturbed=np.array([0.6, 0.4]))
    r = map_answer(net, ball(0.25, "inf"), 0, bad, seconds=1.0)
    assert (r.status, r.reason) == ("unknown", "numerics")
    assert r.counterexample is None


def test_closest_objective_bound_and_boundary_points():
    net = toy_net()
    # L1 eps 0.3: MIPVerify proves the min L1 distortion is 0.4 > 0.3
    r = map_answer(net, ball(0.3, 1), 0, raw(objective_kind="closest", norm_order=1.0, objective=0.4, dual_bound=0.4,
                                              has_solution=True, perturbed=np.array([0.5, 0.5])), seconds=1.0)
    assert r.status == "verified" and "0.4" in r.reason
    # a bound that only equals eps does not certify
    r = map_answer(net, ball(0.4, 1), 0, raw(objective_kind="closest", norm_order=1.0, objective=0.4, dual_bound=0.4),
                   seconds=1.0)
    assert r.status == "unknown"
    # L1 eps 0.5: the closest point (0.5, 0.5) is a tie; pushing past the boundary gives a strict one
    r = map_answer(net, ball(0.5, 1), 0, raw(objective_kind="closest", norm_order=1.0, objective=0.4, dual_bound=0.4,
                                              has_solution=True, perturbed=np.array([0.5, 0.5])), seconds=1.0)
    assert r.status == "falsified"
    x = r.counterexample[0]
    assert float(x[1] - x[0]) > 0 and float((x - torch.tensor([0.7, 0.3], dtype=torch.float64)).abs().sum()) <= 0.5
    # L2: MIPVerify's objective is the squared norm; 0.2 = 0.447^2 < 0.45^2 must not certify eps 0.45
    r = map_answer(net, ball(0.45, 2), 0, raw(objective_kind="closest", norm_order=2.0, termination="TIME_LIMIT",
                                               dual_bound=0.2), seconds=1.0)
    assert r.status == "unknown"
    r = map_answer(net, ball(0.4, 2), 0, raw(objective_kind="closest", norm_order=2.0, termination="TIME_LIMIT",
                                              dual_bound=0.2), seconds=1.0)
    assert r.status == "verified"  # sqrt(0.2) = 0.447 > 0.4


# --------------------------------------------------------------------------- without Julia


def test_options_validate():
    with pytest.raises(SpecError):
        MipVerifyOptions(tightening="exact")  # type: ignore[arg-type]
    with pytest.raises(SpecError):
        MipVerifyOptions(time_limit=0)
    assert MipVerifyOptions.coerce(None).time_limit == 120.0

    class Other:
        time_limit = 7.0

    assert MipVerifyOptions.coerce(Other()).time_limit == 7.0


def test_input_range_other_than_unit_box_is_rejected():
    net = Network([Linear(torch.eye(2), torch.zeros(2))], (2,), input_range=(-1.0, 1.0))
    pset = LpBall.make(torch.zeros(1, 2), 0.1, "inf", (-1.0, 1.0))
    with pytest.raises(ModelError, match=r"\[0, 1\]"):
        mipverify.solve_example(net, pset, 0, 0)


@pytest.mark.skipif(HAVE_JULIA and HAVE_JULIACALL, reason="julia and juliacall are installed here")
def test_unavailable_gives_one_actionable_line():
    ok, why = mipverify.available()
    assert not ok
    assert "\n" not in why
    for needle in ("Julia >= 1.10", "Pkg.instantiate()", "pip install relu-verify[julia]", "PYTHON_JULIACALL_EXE"):
        assert needle in why
    net = toy_net()
    with pytest.raises(SolverUnavailableError) as e:
        mipverify.solve_example(net, ball(0.1, "inf"), 0, 0)
    assert str(e.value) == why
    # L2 on HiGHS is refused before Julia is needed, with its own reason
    with pytest.raises(SolverUnavailableError, match="Gurobi"):
        mipverify.solve_example(net, ball(0.1, 2), 0, 0)


def test_eps_zero_needs_no_julia():
    r = mipverify.solve_example(toy_net(), ball(0.0, "inf"), 0, 0)
    assert isinstance(r, Verdict) and r.status == "verified"
    r = mipverify.solve_example(toy_net(), ball(0.0, "inf"), 1, 0)
    assert r.status == "falsified"


def test_module_import_does_not_start_julia():
    code = "import sys, verify.mip.mipverify; print('juliacall' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.skipif(HAVE_JULIA and HAVE_JULIACALL, reason="julia and juliacall are installed here")
@pytest.mark.skipif(not (REPO / "verify" / "cli" / "certify.py").exists(), reason="verify certify not written yet")
def test_cli_certify_mipverify_exits_2_with_one_line(tmp_path, shared_data):
    from verify.cli import main

    model = tmp_path / "fc.mat"
    save_model(fc_net(), model, format="mat-mipverify")
    proc = subprocess.run(
        [sys.executable, "-m", "verify", "certify", "--model", str(model), "--p", "inf", "--eps", "0.1",
         "--methods", "ibp", "--attack-steps", "0", "-q",
         "--dataset", "mnist", "--data-dir", str(shared_data), "-n", "2", "--solver", "mipverify"],
        capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Pkg.instantiate()" in lines[0]
    assert main  # the in-process entry point exists too


# --------------------------------------------------------------------------- with Julia


@needs_julia
@pytest.mark.julia
@pytest.mark.slow
def test_julia_testsuite():
    proc = subprocess.run(["julia", "--project=.", "julia/test/runtests.jl"], cwd=REPO, capture_output=True,
                          text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@needs_juliacall
@pytest.mark.julia
def test_julia_reads_the_same_logits(tmp_path, shared_data):
    _, jl = mipverify._julia_module()
    import juliacall

    for net in (conv_net("NHWC", normalize=True), conv_net("NCHW"), fc_net()):
        path = mipverify.export_network(net)
        x, _ = mnist_test(shared_data, 5)
        for xi in x:
            got = np.asarray([float(v) for v in jl.forward_logits(
                path, juliacall.convert(mipverify.jl_vector_type(juliacall), xi.reshape(-1).tolist()))])
            want = net.forward(torch.as_tensor(xi[None]), dtype=torch.float64).numpy()[0]
            assert np.abs(got - want).max() <= 1e-5


@needs_juliacall
@pytest.mark.julia
@pytest.mark.slow
def test_mipverify_verdicts_equal_highs(shared_data):
    from verify.mip.highs import solve_query
    from verify.query import Query

    g = torch.Generator().manual_seed(3)
    net = Network([Flatten(), _linear(g, 784, 12), ReLU(), _linear(g, 12, 10)], (1, 28, 28), name="small")
    x, _ = mnist_test(shared_data, 8)
    xt = torch.as_tensor(x)
    y = net.predict(xt)
    compared = 0
    for p, eps in (("inf", 0.01), ("inf", 0.05), ("1", 0.5), ("1", 3.0)):
        pset = LpBall.make(xt, eps, p)
        for i in range(len(x)):
            a = solve_query(net, Query.robustness(pset.select([i]), int(y[i]), 10), deadline=time.perf_counter() + 60)
            b = mipverify.solve_example(net, pset, int(y[i]), i, options=MipVerifyOptions(time_limit=60))
            if "unknown" in (a.status, b.status):
                continue
            assert a.status == b.status, (p, eps, i, a, b)
            compared += 1
    assert compared >= 16
