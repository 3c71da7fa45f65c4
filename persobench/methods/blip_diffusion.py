"""BLIP-Diffusion-style zero-shot subject conditioning (Li et al., NeurIPS 2023), toy backend.

A subject encoder turns the reference image(s) into K subject embeddings that replace K placeholder
tokens in the prompt ("a <subject>x K ball in the snow") at the text encoder's token-embedding layer;
there is no per-subject training (`fit` only encodes and caches). The adapter exposes the subject's
token columns (placeholders + class noun) through `Fitted`, and CLIP-T keeps the original prompt.

Backends: `toy` (the project's encoder trained on the toy world: the toy DINO ViT, frozen, plus
learned queries cross-attending to its tokens, projected into the text encoder's input space; see
`datasets/toyworld/training/blip.py`). The `real` backend (Salesforce/blipdiffusion weights: Q-Former
+ ContextCLIPTextModel) is not implemented yet and says so.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..datasets.dreambench import Subject
from ..errors import UserError
from ..harness.models import ASSETS, SDComponents
from .base import Fitted, register_method
from .training import as_dict, resolve_params

PLACEHOLDER = "<subject>"


class SubjectEncoder(torch.nn.Module):
    """Image -> K subject embeddings: learned queries attend to a frozen ViT's tokens."""

    def __init__(self, backbone: torch.nn.Module, feature_dim: int, text_dim: int, num_queries: int = 4, heads: int = 4) -> None:
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)
        self.queries = torch.nn.Parameter(torch.randn(num_queries, feature_dim) * 0.02)
        self.attn = torch.nn.MultiheadAttention(feature_dim, heads, batch_first=True)
        self.norm = torch.nn.LayerNorm(feature_dim)
        self.proj = torch.nn.Linear(feature_dim, text_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            tokens = self.backbone.forward_features(images)  # [B, 1 + patches, C]
        q = self.queries.expand(len(images), -1, -1)
        out, _ = self.attn(q, tokens, tokens)
        return self.proj(self.norm(out + q))  # [B, K, text_dim]

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}


def load_subject_encoder(folder: Path) -> tuple[SubjectEncoder, dict]:
    import timm

    config_path = folder / "config.json"
    if not config_path.is_file():
        raise UserError(f"BLIP-Diffusion toy subject encoder not found at '{folder}'; train it with "
                        "`persobench toyworld train --stage blip` or pass method_params.blip-diffusion.encoder=<folder>")
    config = json.loads(config_path.read_text())
    backbone = timm.create_model(f"local-dir:{(folder / config['backbone']).resolve()}", pretrained=True)
    encoder = SubjectEncoder(backbone, config["feature_dim"], config["text_dim"], config["num_queries"])
    encoder.load_state_dict(load_file(folder / "subject_encoder.safetensors"), strict=False)
    return encoder.eval(), config


class SplicedTextEncoder(torch.nn.Module):
    """The text encoder with subject embeddings written over the placeholder tokens' embeddings."""

    def __init__(self, text_encoder: torch.nn.Module, placeholder_id: int, subject: torch.Tensor) -> None:
        super().__init__()
        self.inner, self.placeholder_id = text_encoder, placeholder_id
        self.register_buffer("subject", subject)  # [K, D]

    @property
    def config(self):
        return self.inner.config

    def forward(self, input_ids: torch.Tensor, attention_mask=None, **kwargs):
        def splice(module, args, output):
            mask = input_ids == self.placeholder_id
            counts = mask.sum(1)
            if bool((counts != 0).any()):
                out = output.clone()
                for b in range(len(input_ids)):
                    k = int(counts[b])
                    if k:
                        out[b, mask[b]] = self.subject[:k].to(out.dtype)
                return out
            return output

        handle = self.inner.get_input_embeddings().register_forward_hook(splice)
        try:
            return self.inner(input_ids, attention_mask=attention_mask, **kwargs)
        finally:
            handle.remove()


@dataclasses.dataclass
class BlipParams:
    backend: Literal["toy", "real"] = "toy"
    encoder: str | None = None  # toy: the subject encoder folder (default: the embedded one)
    num_references: int | None = None  # references averaged into the subject embeddings; None = all


PRESETS = {"toy": {"backend": "toy"}, "paper": {"backend": "real"}}


@register_method("blip-diffusion")
class BlipDiffusion:
    """BLIP-Diffusion-style zero-shot subject embeddings (no per-subject training)."""

    name = "blip-diffusion"

    def __init__(self, params: dict[str, Any], components: SDComponents) -> None:
        self.params = resolve_params(BlipParams, PRESETS, params, self.name)
        if self.params.backend == "real":
            raise UserError("blip-diffusion backend 'real' (Salesforce/blipdiffusion weights) is not implemented yet; "
                            "use method_params.blip-diffusion.backend=toy on the embedded model")
        self.components = components
        self._encoder: tuple[SubjectEncoder, dict] | None = None

    @staticmethod
    def fit_steps(params: dict[str, Any]) -> int:
        return 0

    def fit_signature(self) -> dict[str, Any]:
        return as_dict(self.params)

    def encoder(self) -> tuple[SubjectEncoder, dict]:
        if self._encoder is None:
            self._encoder = load_subject_encoder(Path(self.params.encoder) if self.params.encoder else ASSETS / "blip")
        return self._encoder

    def fit(self, subject: Subject, folder: Path, seed: int, progress=None) -> Fitted:
        c = self.components
        encoder, config = self.encoder()
        if config["text_dim"] != c.text_encoder.config.hidden_size:
            raise UserError(f"the subject encoder at '{self.params.encoder or ASSETS / 'blip'}' was trained for another text encoder "
                            f"(width {config['text_dim']}, this model has {c.text_encoder.config.hidden_size})")
        saved = folder / "subject_embeddings.safetensors"
        if saved.is_file():
            embeddings = load_file(saved)["subject"]
        else:
            from ..datasets.toyworld.training.common import to_tensor

            refs = subject.images()
            refs = refs if self.params.num_references is None else refs[: self.params.num_references]
            size = config["image_size"]
            x = to_tensor(np.stack([np.asarray(im.resize((size, size))) for im in refs]))
            with torch.no_grad():
                embeddings = encoder(x).mean(0)
            folder.mkdir(parents=True, exist_ok=True)
            save_file({"subject": embeddings.contiguous()}, saved)
        tokenizer = copy.deepcopy(c.tokenizer)
        tokenizer.add_tokens([PLACEHOLDER])
        inner = copy.deepcopy(c.text_encoder)
        inner.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        text_encoder = SplicedTextEncoder(inner, tokenizer.convert_tokens_to_ids(PLACEHOLDER), embeddings.to(c.device)).eval()
        identifier = " ".join([PLACEHOLDER] * len(embeddings))
        return Fitted(self.name, subject, c, c.unet, tokenizer, text_encoder, identifier=identifier)
