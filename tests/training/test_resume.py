"""A run killed mid-epoch and resumed ends with exactly the weights of an uninterrupted run.

Deterministic mode, the per-epoch shuffling generator seeded by (seed, epoch), per-batch attack
seeds and a stateless learning-rate schedule make every epoch a pure function of the checkpoint
it starts from, so equality is exact (torch.equal), not approximate.
"""

from __future__ import annotations

import pytest
import torch

from training.config import TrainConfig
from training.trainer import TrainData, train


class Killed(Exception):
    pass


def _data(shared_data) -> TrainData:
    from verify.data import load_dataset

    ds = load_dataset("mnist", split="test", data_dir=shared_data)
    return TrainData(ds.x[:128], ds.y[:128], ds.x[128:256], ds.y[128:256], "mnist-test-slice")


@pytest.mark.parametrize("method", ["plain", "at"])
def test_killed_and_resumed_equals_uninterrupted(tmp_path, shared_data, method: str) -> None:
    cfg = TrainConfig(dataset="mnist", arch="cnn_lenet_small", method=method, epochs=2, batch_size=32,
                      pgd_steps=3, eps=0.1, seed=7, lr_schedule="cosine")
    data = _data(shared_data)
    full = train(cfg, run_dir=tmp_path / "full", data=data, progress=False)

    def kill(epoch: int, batch: int) -> None:
        if epoch == 2 and batch == 2:
            raise Killed

    with pytest.raises(Killed):
        train(cfg, run_dir=tmp_path / "cut", data=data, progress=False, on_batch=kill)
    ckpt = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)
    assert ckpt["epoch"] == 1  # the interrupted epoch left no checkpoint
    resumed = train(cfg, run_dir=tmp_path / "cut", data=data, progress=False, resume=True)
    for (name, a), b in zip(full.module.state_dict().items(), resumed.module.state_dict().values()):
        assert torch.equal(a, b), name
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    assert resumed.history[-1]["loss"] == full.history[-1]["loss"]
    log = (tmp_path / "cut" / "log.csv").read_text().splitlines()
    assert log[0].startswith("epoch,") and len(log) == 3
    assert (tmp_path / "cut" / "curves.png").stat().st_size > 1000


def test_stop_after_then_resume_equals_uninterrupted(tmp_path, shared_data) -> None:
    # The step schedule depends on config.epochs (lr / 10 in the last 10%): stopping after epoch 1 of
    # 2 must keep the 2-epoch schedule, so resuming finishes the same run.
    cfg = TrainConfig(dataset="mnist", arch="cnn_lenet_small", method="plain", epochs=2, batch_size=32, seed=3,
                      lr_schedule="step", eval_test=False)
    data = _data(shared_data)
    full = train(cfg, run_dir=tmp_path / "full", data=data, progress=False)
    first = train(cfg, run_dir=tmp_path / "cut", data=data, progress=False, stop_after=1)
    assert [r["epoch"] for r in first.history] == [1] and first.network is not None
    again = train(cfg, run_dir=tmp_path / "cut", data=data, progress=False, resume=True, stop_after=1)
    assert torch.equal(again.network.layers[-1].weight, first.network.layers[-1].weight)  # nothing retrained
    resumed = train(cfg, run_dir=tmp_path / "cut", data=data, progress=False, resume=True)
    assert [r["lr"] for r in resumed.history] == [r["lr"] for r in full.history] == [1e-3, 1e-4]
    for (name, a), b in zip(full.module.state_dict().items(), resumed.module.state_dict().values()):
        assert torch.equal(a, b), name


def test_resume_with_other_settings_is_refused(tmp_path, shared_data) -> None:
    from verify.errors import VerifyError

    cfg = TrainConfig(dataset="mnist", epochs=1, batch_size=64, seed=1, eval_test=False)
    data = _data(shared_data)
    train(cfg, run_dir=tmp_path, data=data, progress=False)
    other = TrainConfig(dataset="mnist", epochs=1, batch_size=64, seed=2, eval_test=False)
    with pytest.raises(VerifyError, match="seed"):
        train(other, run_dir=tmp_path, data=data, progress=False, resume=True)
