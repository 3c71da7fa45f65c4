"""BLIP-Diffusion's subject encoder (the `qformer` folder of Salesforce/blipdiffusion), in plain torch.

diffusers' `BlipDiffusionPipeline` is deprecated and does not run on transformers 5 (its Q-Former
calls removed helpers, expects tuple outputs, and transformers' BLIP-2 vision attention now keeps
one `qkv.bias` where the checkpoint has `q_bias` / `v_bias`). This module re-implements the
arithmetic with module names that keep the checkpoint's state-dict keys exactly, so the published
weights load unchanged and no transformers upgrade can break it:

    visual_encoder.*   BLIP-2 vision transformer (EVA ViT-g in the real model), post-layernorm output
    embeddings.*       BERT word/position embeddings + LayerNorm over [query tokens; subject text]
    query_tokens       the learned queries [1, Q, H]
    encoder.layer.N.*  BERT layers: self-attention over queries + text, cross-attention of the queries
                       to the image tokens, separate feed-forwards for queries and text
    proj_layer.*       residual MLP projecting the Q query outputs (the subject embeddings)

`QFormer.from_folder` reads `config.json` (a transformers `Blip2Config` dict) and the weights.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import UserError

# transformers' Blip2VisionConfig / Blip2QFormerConfig / Blip2Config defaults (a saved config may omit them)
VISION_DEFAULTS = {"hidden_size": 1408, "intermediate_size": 6144, "num_hidden_layers": 39, "num_attention_heads": 16,
                   "image_size": 224, "patch_size": 14, "hidden_act": "gelu", "layer_norm_eps": 1e-6, "qkv_bias": True}
QFORMER_DEFAULTS = {"vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                    "intermediate_size": 3072, "hidden_act": "gelu", "max_position_embeddings": 512, "layer_norm_eps": 1e-12,
                    "pad_token_id": 0, "cross_attention_frequency": 2, "encoder_hidden_size": 1408}
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "model.safetensors", "diffusion_pytorch_model.bin", "pytorch_model.bin")


def _act(name: str):
    return {"gelu": F.gelu, "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x), "relu": F.relu}[name]


class VisionAttention(nn.Module):
    def __init__(self, dim: int, heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.v_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.projection = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        bias = None if self.q_bias is None else torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        q, k, v = F.linear(x, self.qkv.weight, bias).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.projection(out.transpose(1, 2).reshape(b, n, d))


class VisionMlp(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str) -> None:
        super().__init__()
        self.fc1, self.fc2, self.act = nn.Linear(dim, hidden), nn.Linear(hidden, dim), _act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class VisionLayer(nn.Module):
    def __init__(self, cfg: dict) -> None:
        super().__init__()
        d, eps = cfg["hidden_size"], cfg.get("layer_norm_eps", 1e-6)
        self.self_attn = VisionAttention(d, cfg["num_attention_heads"], cfg.get("qkv_bias", True))
        self.layer_norm1, self.layer_norm2 = nn.LayerNorm(d, eps=eps), nn.LayerNorm(d, eps=eps)
        self.mlp = VisionMlp(d, cfg["intermediate_size"], cfg.get("hidden_act", "gelu"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class VisionEmbeddings(nn.Module):
    def __init__(self, cfg: dict) -> None:
        super().__init__()
        d, p = cfg["hidden_size"], cfg["patch_size"]
        self.class_embedding = nn.Parameter(torch.zeros(1, 1, d))
        self.patch_embedding = nn.Conv2d(3, d, kernel_size=p, stride=p, bias=False)
        self.position_embedding = nn.Parameter(torch.zeros(1, (cfg["image_size"] // p) ** 2 + 1, d))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(pixels.to(self.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_embedding.expand(len(pixels), -1, -1).to(patches.dtype), patches], dim=1)
        return x + self.position_embedding[:, : x.shape[1]].to(x.dtype)


class VisionEncoderLayers(nn.Module):
    def __init__(self, cfg: dict) -> None:
        super().__init__()
        self.layers = nn.ModuleList(VisionLayer(cfg) for _ in range(cfg["num_hidden_layers"]))


class VisionEncoder(nn.Module):
    """Image [B, 3, S, S] (normalised) -> tokens [B, 1 + patches, D], post-layernormed."""

    def __init__(self, cfg: dict) -> None:
        super().__init__()
        d, eps = cfg["hidden_size"], cfg.get("layer_norm_eps", 1e-6)
        self.embeddings = VisionEmbeddings(cfg)
        self.pre_layernorm = nn.LayerNorm(d, eps=eps)
        self.encoder = VisionEncoderLayers(cfg)
        self.post_layernorm = nn.LayerNorm(d, eps=eps)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.pre_layernorm(self.embeddings(pixels))
        for layer in self.encoder.layers:
            x = layer(x)
        return self.post_layernorm(x)


class TextEmbeddings(nn.Module):
    def __init__(self, cfg: dict) -> None:
        super().__init__()
        d = cfg["hidden_size"]
        self.word_embeddings = nn.Embedding(cfg["vocab_size"], d, padding_idx=cfg.get("pad_token_id", 0))
        self.position_embeddings = nn.Embedding(cfg["max_position_embeddings"], d)
        self.LayerNorm = nn.LayerNorm(d, eps=cfg.get("layer_norm_eps", 1e-12))

    def forward(self, input_ids: torch.Tensor, query_tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        text = self.word_embeddings(input_ids) + self.position_embeddings(positions)[None]
        x = torch.cat([query_tokens.expand(len(input_ids), -1, -1).to(text.dtype), text], dim=1)
        return self.LayerNorm(x)


class MultiHeadAttention(nn.Module):
    def __init__(self, d: int, heads: int, kv_dim: int) -> None:
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(kv_dim, d), nn.Linear(kv_dim, d)

    def forward(self, x: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, n, d = x.shape
        h = self.heads

        def split(t):
            return t.view(b, -1, h, d // h).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(kv)), split(self.value(kv))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // h)
        if mask is not None:
            scores = scores + mask
        return (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d)


class SelfOutput(nn.Module):
    def __init__(self, d: int, eps: float) -> None:
        super().__init__()
        self.dense, self.LayerNorm = nn.Linear(d, d), nn.LayerNorm(d, eps=eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class QFormerAttention(nn.Module):
    def __init__(self, cfg: dict, cross: bool = False) -> None:
        super().__init__()
        d = cfg["hidden_size"]
        self.attention = MultiHeadAttention(d, cfg["num_attention_heads"], cfg["encoder_hidden_size"] if cross else d)
        self.output = SelfOutput(d, cfg.get("layer_norm_eps", 1e-12))

    def forward(self, x: torch.Tensor, kv: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.output(self.attention(x, x if kv is None else kv, mask), x)


class Intermediate(nn.Module):
    def __init__(self, cfg: dict) -> None:
        super().__init__()
        self.dense, self.act = nn.Linear(cfg["hidden_size"], cfg["intermediate_size"]), _act(cfg.get("hidden_act", "gelu"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class Output(nn.Module):
    def __init__(self, cfg: dict) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg["intermediate_size"], cfg["hidden_size"])
        self.LayerNorm = nn.LayerNorm(cfg["hidden_size"], eps=cfg.get("layer_norm_eps", 1e-12))

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class QFormerLayer(nn.Module):
    def __init__(self, cfg: dict, index: int) -> None:
        super().__init__()
        self.attention = QFormerAttention(cfg)
        self.has_cross_attention = index % cfg.get("cross_attention_frequency", 2) == 0
        if self.has_cross_attention:
            self.crossattention = QFormerAttention(cfg, cross=True)
        self.intermediate, self.output = Intermediate(cfg), Output(cfg)
        self.intermediate_query, self.output_query = Intermediate(cfg), Output(cfg)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, image: torch.Tensor, num_queries: int) -> torch.Tensor:
        x = self.attention(x, mask=mask)
        queries, text = x[:, :num_queries], x[:, num_queries:]
        if self.has_cross_attention:
            queries = self.crossattention(queries, kv=image)
        queries = self.output_query(self.intermediate_query(queries), queries)
        if text.shape[1]:
            text = self.output(self.intermediate(text), text)
        return torch.cat([queries, text], dim=1)


class QFormerLayers(nn.Module):
    def __init__(self, cfg: dict) -> None:
        super().__init__()
        self.layer = nn.ModuleList(QFormerLayer(cfg, i) for i in range(cfg["num_hidden_layers"]))


class ProjLayer(nn.Module):
    """LayerNorm -> dense1 -> QuickGELU -> dense2, plus the input (BLIP-Diffusion's projection)."""

    def __init__(self, d: int, eps: float = 1e-12) -> None:
        super().__init__()
        self.dense1, self.dense2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.LayerNorm = nn.LayerNorm(d, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense2(_act("quick_gelu")(self.dense1(self.LayerNorm(x)))) + x


class QFormer(nn.Module):
    """(image, subject-category token ids) -> subject embeddings [B, Q, H] for the text encoder."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        qcfg = {**QFORMER_DEFAULTS, **config.get("qformer_config", {})}
        vcfg = {**VISION_DEFAULTS, **config.get("vision_config", {})}
        self.config = {**config, "qformer_config": qcfg, "vision_config": vcfg, "num_query_tokens": config.get("num_query_tokens", 32)}
        self.embeddings = TextEmbeddings(qcfg)
        self.visual_encoder = VisionEncoder(vcfg)
        self.query_tokens = nn.Parameter(torch.zeros(1, self.config["num_query_tokens"], qcfg["hidden_size"]))
        self.proj_layer = ProjLayer(qcfg["hidden_size"])
        self.encoder = QFormerLayers(qcfg)

    def forward(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        q = self.query_tokens.shape[1]
        x = self.embeddings(input_ids, self.query_tokens)
        keep = torch.cat([attention_mask.new_ones(len(input_ids), q), attention_mask], dim=1)
        mask = (1.0 - keep[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        image = self.visual_encoder(pixels).to(x.dtype)
        for layer in self.encoder.layer:
            x = layer(x, mask, image, q)
        return self.proj_layer(x[:, :q])

    @classmethod
    def from_folder(cls, folder: Path) -> QFormer:
        """Load a `qformer` folder: config.json + weights with the checkpoint's keys (either the
        published `q_bias`/`v_bias` layout or transformers 5's fused `qkv.bias`)."""
        config_path = folder / "config.json"
        weights = next((folder / n for n in WEIGHT_FILES if (folder / n).is_file()), None)
        if not config_path.is_file() or weights is None:
            raise UserError(f"no BLIP-Diffusion Q-Former at '{folder}' (need config.json and {WEIGHT_FILES[0]}); "
                            "pass method_params.blip-diffusion.weights=<Salesforce/blipdiffusion folder or hub id>")
        model = cls(json.loads(config_path.read_text()))
        if weights.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(weights)
        else:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_checkpoint(state, str(folder))
        return model.eval().requires_grad_(False)

    def load_checkpoint(self, state: dict[str, torch.Tensor], where: str = "checkpoint") -> None:
        state = {k: v for k, v in state.items() if not k.endswith("position_ids")}  # buffers, recomputed here
        for key in [k for k in state if k.endswith("self_attn.qkv.bias")]:  # transformers 5 layout -> the published one
            bias, prefix = state.pop(key), key[: -len("qkv.bias")]
            d = bias.shape[0] // 3
            state[prefix + "q_bias"], state[prefix + "v_bias"] = bias[:d], bias[2 * d :]
        missing, unexpected = self.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise UserError(f"the Q-Former weights at '{where}' do not match its config.json (missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]}); is it a Salesforce/blipdiffusion `qformer` folder?")
