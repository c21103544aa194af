"""Training on another device (``train-mmr --device``): every tensor follows its inputs' device.

CI has no GPU, so the oracle is torch's *default device*: with ``torch.set_default_device("meta")``
any tensor that the code creates without an explicit device lands on ``meta`` and the first
operation that mixes it with the (CPU) batch raises "not on the expected device". On a GPU the same
slip would put a tensor on the CPU next to CUDA ones, so a loss that computes under a foreign
default device, and equals the normal computation, is device-clean. The values must match exactly:
the device plumbing may not change the arithmetic.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from training.adversarial import AdversarialConfig, mix_adversarial
from training.architectures import build, to_network
from training.config import TrainConfig, TrainConfigError
from training.regularizers.kw import robust_loss
from training.regularizers.mmr import mmr_terms
from training.trainer import TrainData, train

SHAPE = (1, 28, 28)


@contextlib.contextmanager
def foreign_default_device():
    """Factory functions without ``device=`` create meta tensors inside the block."""
    old = torch.get_default_device()
    torch.set_default_device("meta")
    try:
        yield
    finally:
        torch.set_default_device(old)


def _batch(shared_data, n: int = 8):
    from verify.data import load_dataset

    ds = load_dataset("mnist", split="test", data_dir=shared_data)
    return ds.x[:n].float(), ds.y[:n]


def _module():
    return build("cnn_lenet_small", input_shape=SHAPE, n_classes=10, seed=3)


@pytest.mark.parametrize("method,p", [("kw", "inf"), ("kw", "2"), ("kw", "1"), ("ibp", "inf"), ("crown-ibp", "inf")])
def test_robust_losses_are_device_clean(shared_data, method: str, p: str) -> None:
    x, y = _batch(shared_data)
    module = _module()
    net = to_network(module, SHAPE, share_parameters=True)
    eps = 0.05 if p == "inf" else 0.3
    want = robust_loss(net, x, y, eps=eps, p=p, method=method, kappa=0.5, beta=0.5).loss
    with foreign_default_device():
        got = robust_loss(net, x, y, eps=eps, p=p, method=method, kappa=0.5, beta=0.5).loss
        (g,) = torch.autograd.grad(got, [module[0].weight])
    assert got.device.type == "cpu" and g.device.type == "cpu"
    assert got.item() == want.item()


@pytest.mark.parametrize("p", ["inf", "2", "1"])
def test_mmr_terms_are_device_clean(shared_data, p: str) -> None:
    x, y = _batch(shared_data)
    module = _module()
    net = to_network(module, SHAPE, share_parameters=True)
    kw = dict(p=p, k_relu=50, k_decision=9, gamma_relu=0.2, gamma_decision=0.2)
    want = mmr_terms(net, x, y, **kw)
    with foreign_default_device():
        got = mmr_terms(net, x, y, **kw)
        loss = got.relu_term + got.decision_term
        (g,) = torch.autograd.grad(loss, [module[0].weight])
    assert g.device.type == "cpu"
    assert got.relu_term.item() == want.relu_term.item()
    assert got.decision_term.item() == want.decision_term.item()


@pytest.mark.parametrize("attack,p", [("pgd", "inf"), ("pgd", "2"), ("pgd", "1"), ("fgsm", "inf")])
def test_adversarial_points_are_device_clean(shared_data, attack: str, p: str) -> None:
    x, y = _batch(shared_data)
    module = _module()
    cfg = AdversarialConfig(attack=attack, eps=0.1 if p == "inf" else 1.0, p=p, steps=3, ae_frac=0.5)  # type: ignore[arg-type]
    want = mix_adversarial(module, SHAPE, x, y, config=cfg, seed=5)
    with foreign_default_device():
        got = mix_adversarial(module, SHAPE, x, y, config=cfg, seed=5)
    assert got.device.type == "cpu"
    assert torch.equal(got, want)


@pytest.mark.parametrize("method", ["plain", "at", "kw", "mmr+at", "norm-decay", "lipschitz"])
def test_trainer_is_device_clean(tmp_path, shared_data, method: str) -> None:
    """A whole (short) run under the foreign default device ends with the normal run's weights."""
    from verify.data import load_dataset

    ds = load_dataset("mnist", split="test", data_dir=shared_data)
    data = TrainData(ds.x[:32], ds.y[:32], ds.x[32:48], ds.y[32:48], "mnist-test-slice")
    cfg = TrainConfig(dataset="mnist", method=method, epochs=1, batch_size=16, max_batches=1, pgd_steps=2, eps=0.02, seed=4,
                      device="cpu")
    want = train(cfg, run_dir=tmp_path / "a", data=data, progress=False)
    with foreign_default_device():
        got = train(cfg, run_dir=tmp_path / "b", data=data, progress=False)
    for (name, a), b in zip(want.module.state_dict().items(), got.module.state_dict().values()):
        assert b.device.type == "cpu", name
        assert torch.equal(a, b), name
    assert got.history[-1]["test_err"] == want.history[-1]["test_err"]
    assert got.network is not None and torch.equal(got.network.layers[0].weight, want.network.layers[0].weight)


def test_unavailable_device_is_a_clear_error() -> None:
    with pytest.raises(TrainConfigError, match="device"):
        TrainConfig(device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(TrainConfigError, match="CUDA is not available"):
            TrainConfig(device="cuda")
