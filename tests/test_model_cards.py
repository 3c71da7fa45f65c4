"""Every shipped model loads and runs with the call its model card gives, verbatim, and no extra argument."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from persobench.core.components import ASSETS

REPO = Path(__file__).resolve().parent.parent
CARDS = sorted(ASSETS.glob("*/MODEL_CARD.md"))


def card_code(card: Path) -> str:
    """The python block under the card's '## Load' heading."""
    m = re.search(r"## Load\s+```python\n(.*?)```", card.read_text(), re.S)
    assert m, f"{card} has no '## Load' python block"
    return m.group(1)


def test_every_model_folder_has_a_card():
    folders = sorted(p.parent.name for p in CARDS)
    assert folders == ["blip", "clip", "dino", "oracle", "sd"]


@pytest.mark.parametrize("card", CARDS, ids=lambda p: p.parent.name)
def test_card_call_runs_verbatim(card, monkeypatch):
    monkeypatch.chdir(REPO)  # the cards' paths are relative to the repository root
    namespace: dict = {}
    exec(compile(card_code(card), str(card), "exec"), namespace)  # noqa: S102 - the card's own text, as a user pastes it
    outputs = [v for k, v in namespace.items() if not k.startswith("_") and isinstance(v, torch.Tensor | dict)]
    image = namespace.get("image")
    if image is not None:  # the pipeline's image is a real picture, not a constant or NaN
        arr = np.asarray(image, dtype=np.float32)
        assert arr.shape == (64, 64, 3) and arr.std() > 5
    else:
        assert outputs, "the card's block computes nothing"
    for v in outputs:
        if isinstance(v, torch.Tensor):
            assert torch.isfinite(v).all()
