"""The toy BLIP-Diffusion backend: the embedded subject encoder conditioning the toy text-to-image model.

Registered as backend `toy` of the `blip-diffusion` method (plugin.py). It was trained on one reference
per caption with the placeholders right before the class noun ("a red <q>x4 ball"), so its defaults
keep that layout (`query_position: before_class`) and the mean over all references
(`reference_mode: average`), the settings the README's toy numbers were measured with.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.components import ASSETS, SDComponents
from ..core.errors import UserError
from ..methods.blip_diffusion import PLACEHOLDER, BlipParams
from .models import load_subject_encoder
from .training.common import to_tensor


class ToyBlip:
    """The embedded subject encoder (or `encoder=<folder>`), with the base model's text encoder and UNet."""

    defaults = {"reference_mode": "average", "query_position": "before_class"}

    @staticmethod
    def locate(params: BlipParams, components: SDComponents) -> Path:
        """The encoder's folder, checked (present, trained for this text encoder's width) from its config alone."""
        folder = Path(params.encoder) if params.encoder else ASSETS / "blip"
        config = folder / "config.json"
        if not config.is_file():
            raise UserError(f"BLIP-Diffusion toy subject encoder not found at '{folder}'; train it with "
                            "`persobench toyworld train --stage blip` or pass method_params.blip-diffusion.encoder=<folder>")
        width = json.loads(config.read_text()).get("text_dim")
        if width != components.text_encoder.config.hidden_size:
            raise UserError(f"the subject encoder at '{folder}' was trained for another text encoder "
                            f"(width {width}, this model has {components.text_encoder.config.hidden_size})")
        return folder

    def __init__(self, params: BlipParams, components: SDComponents) -> None:
        folder = ToyBlip.locate(params, components)
        self.encoder, self.config = load_subject_encoder(folder)
        self.components, self.unet = components, components.unet
        self.num_queries = int(self.config["num_queries"])

    @torch.no_grad()
    def embed(self, images: list, class_noun: str) -> torch.Tensor:
        size = self.config["image_size"]
        x = to_tensor(np.stack([np.asarray(im.resize((size, size))) for im in images]))
        return self.encoder(x).mean(0)

    def text_model(self) -> tuple[Any, torch.nn.Module]:
        """Fresh copies per subject: the placeholder token is added to the base model's tokenizer."""
        c = self.components
        tokenizer = copy.deepcopy(c.tokenizer)
        tokenizer.add_tokens([PLACEHOLDER])
        inner = copy.deepcopy(c.text_encoder)
        inner.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        return tokenizer, inner
