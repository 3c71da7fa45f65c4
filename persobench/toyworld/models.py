"""The toy world's own model definitions that are not a library's class: the BLIP-Diffusion-style subject
encoder (its training: training/blip.py; its use: blip_backend.py). The oracle is a timm classifier
whose heads are listed in its config (evaluate.load_oracle)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..core.errors import UserError


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
