"""train-mmr: bad input gives one line on stderr and exit code 2; --help teaches."""

from __future__ import annotations

import pytest

from training.cli import main
from tests.cli_util import run_captured


def _run_train(argv: list[str], capsys) -> tuple[int, str, str]:
    return run_captured(argv, capsys, main)


BAD = [
    (["--nn-type", "resnet9000"], "unknown architecture"),
    (["--dataset", "imagenet"], "unknown dataset"),
    (["--method", "magic"], "unknown method"),
    (["--lmbd", "-0.5", "--method", "mmr"], "lmbd"),
    (["--eps", "-0.1", "--method", "at"], "eps"),
    (["--p", "3"], "norm"),
    (["--ae-frac", "1.5", "--method", "at"], "ae_frac"),
    (["--device", "tpu"], "unknown device"),
    (["--device", "cuda:99"], "cuda:99"),
    (["--stop-after", "0"], "--stop-after"),
]


@pytest.mark.parametrize("args,needle", BAD)
def test_bad_input_one_line_exit_2(tmp_path, capsys, args: list[str], needle: str) -> None:
    code, _, err = _run_train([*args, "--out", str(tmp_path / "m.mat")], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]
    assert not (tmp_path / "m.mat").exists()


def test_missing_out_is_a_usage_error(capsys) -> None:
    code, _, err = _run_train([], capsys)
    assert code == 2 and "--out" in err


def test_help_has_examples(capsys) -> None:
    code, out, _ = _run_train(["--help"], capsys)
    assert code == 0
    assert "Examples:" in out and "--nn-type" in out and "--resume" in out
    # the defaults that used to surprise are stated: one torch thread, and what the ramp length means
    flat = " ".join(out.split())
    assert "[default: 1;" in flat.split("--threads INTEGER", 1)[1].split(" --resume", 1)[0]
    assert "1: ramp over the first epoch" in flat


def test_threads_default_is_one(tmp_path, capsys, shared_data) -> None:
    import torch

    torch.set_num_threads(2)
    seen: list[int] = []
    import training.trainer as trainer

    real = trainer.train

    def spy(*a, **k):  # records the thread count the command set, then trains for real
        seen.append(torch.get_num_threads())
        return real(*a, **k)

    trainer.train = spy
    try:
        code, _, err = _run_train(["--dataset", "mnist", "--data-dir", str(shared_data), "--epochs", "1",
                                   "--train-subset", "32", "--batch-size", "32", "--quiet", "--out", str(tmp_path / "t.mat"),
                                   "--run-dir", str(tmp_path / "run")], capsys)
    finally:
        trainer.train = real
    assert code == 0, err
    assert seen == [1]


def test_trains_and_writes_a_loadable_model(tmp_path, capsys, shared_data) -> None:
    """Two batches of plain training end in a .mat file that verify.formats reads back."""
    formats = pytest.importorskip("verify.formats")
    out = tmp_path / "tiny.mat"
    code, stdout, _ = _run_train(["--dataset", "mnist", "--data-dir", str(shared_data), "--epochs", "1",
                            "--train-subset", "64", "--batch-size", "32", "--quiet", "--out", str(out),
                            "--run-dir", str(tmp_path / "run")], capsys)
    assert code == 0 and "wrote" in stdout
    net = formats.load_model(out)
    assert net.n_classes == 10 and net.num_relus() == 4804
