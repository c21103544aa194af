"""The model zoo against its cards: every model in models/ has a card with the command that made it,
loads as a Network, and has the clean test error (full test set) its card's table states.

The oracle is the card itself (written from train-mmr's log); the check recomputes the error with
a float64 forward pass of the loaded file, so a model replaced without its card fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from verify.data import load_dataset
from verify.formats import load_model

MODELS = Path(__file__).resolve().parents[1] / "models"
CARDS = (MODELS / "MODELS.md").read_text()
ROW = re.compile(r"^\| `(?P<name>[\w.]+\.mat)` \| (?P<data>[^|]+) \|(?:[^|]*\|){3} (?P<te>[\d.]+) % \|", re.M)
TABLE = {m["name"]: (m["data"].strip(), float(m["te"])) for m in ROW.finditer(CARDS)}


def test_every_model_has_a_row_and_a_card() -> None:
    files = sorted(p.name for p in MODELS.glob("*.mat"))
    assert files and sorted(TABLE) == files
    for name in files:
        card = CARDS.split(f"\n## {name}\n", 1)
        assert len(card) == 2, f"no card for {name}"
        body = card[1].split("\n## ", 1)[0]
        assert re.search(r"\| command \| `train-mmr [^`]*--out models/" + re.escape(name) + r"\b", body), name


@pytest.mark.parametrize("name", sorted(TABLE))
def test_card_test_error_matches_the_model(name: str, shared_data) -> None:
    data, te = TABLE[name]
    ds = load_dataset("fmnist" if data.startswith("F-MNIST") else "mnist", split="test", data_dir=shared_data)
    net = load_model(MODELS / name)
    pred = net.predict(ds.x.to(torch.float64))
    err = 100.0 * float((pred != ds.y).double().mean())
    # float64 here, float32 in training: a point or two may sit on a tie (0.02 %)
    assert err == pytest.approx(te, abs=0.02), f"{name}: card {te} %, model {err:.2f} %"
