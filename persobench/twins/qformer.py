"""BLIP-Diffusion's Q-Former checkpoint (the `qformer` folder of Salesforce/blipdiffusion) as a key -> shape table.

The keys are the published checkpoint's: diffusers' `Blip2QFormerModel` (pipelines/blip_diffusion/modeling_blip2.py)
as saved with the transformers of 2023, whose BLIP-2 vision attention held separate `q_bias` / `v_bias` (transformers
5 fuses them into one `qkv.bias`), plus the persistent `embeddings.position_ids` buffer. Writing the table out
keeps the twin independent of that deprecated class (its constructor also fetches a BERT tokenizer); the tests check
it against the class itself.

    embeddings.{word_embeddings, position_embeddings, LayerNorm}, embeddings.position_ids
    query_tokens                                     [1, Q, H]
    visual_encoder.embeddings.{class_embedding, patch_embedding (no bias), position_embedding}
    visual_encoder.{pre_layernorm, post_layernorm}
    visual_encoder.encoder.layers.N.{self_attn.{qkv (no bias), q_bias, v_bias, projection}, layer_norm1, mlp.{fc1, fc2}, layer_norm2}
    encoder.layer.N.attention.{attention.{query, key, value}, output.{dense, LayerNorm}}
    encoder.layer.N.crossattention.*   (every cross_attention_frequency-th layer; keys / values from the vision width)
    encoder.layer.N.{intermediate, output, intermediate_query, output_query}
    proj_layer.{dense1, dense2, LayerNorm}           H -> 4H -> H
"""

from __future__ import annotations

import torch

# init kinds: "normal" (std 0.02, as BERT / BLIP-2 initialise), "zeros", "ones", "position_ids" (int64 arange)
Shape = tuple[int, ...]


def _linear(table: dict, prefix: str, out_dim: int, in_dim: int, bias: bool = True) -> None:
    table[f"{prefix}.weight"] = ((out_dim, in_dim), "normal")
    if bias:
        table[f"{prefix}.bias"] = ((out_dim,), "zeros")


def _norm(table: dict, prefix: str, dim: int) -> None:
    table[f"{prefix}.weight"] = ((dim,), "ones")
    table[f"{prefix}.bias"] = ((dim,), "zeros")


def qformer_table(config: dict) -> dict[str, tuple[Shape, str]]:
    """{key: (shape, init kind)} for a Q-Former `config.json` (see configs.blip2_config)."""
    v, q = config["vision_config"], config["qformer_config"]
    d, h = v["hidden_size"], q["hidden_size"]
    t: dict[str, tuple[Shape, str]] = {}
    t["embeddings.word_embeddings.weight"] = ((q["vocab_size"], h), "normal")
    t["embeddings.position_embeddings.weight"] = ((q["max_position_embeddings"], h), "normal")
    _norm(t, "embeddings.LayerNorm", h)
    t["embeddings.position_ids"] = ((1, q["max_position_embeddings"]), "position_ids")
    t["query_tokens"] = ((1, config["num_query_tokens"], h), "normal")
    p = v["patch_size"]
    t["visual_encoder.embeddings.class_embedding"] = ((1, 1, d), "normal")
    t["visual_encoder.embeddings.patch_embedding.weight"] = ((d, 3, p, p), "normal")
    t["visual_encoder.embeddings.position_embedding"] = ((1, (v["image_size"] // p) ** 2 + 1, d), "normal")
    _norm(t, "visual_encoder.pre_layernorm", d)
    for i in range(v["num_hidden_layers"]):
        pre = f"visual_encoder.encoder.layers.{i}"
        _linear(t, f"{pre}.self_attn.qkv", 3 * d, d, bias=False)
        if v.get("qkv_bias", True):
            t[f"{pre}.self_attn.q_bias"] = ((d,), "zeros")
            t[f"{pre}.self_attn.v_bias"] = ((d,), "zeros")
        _linear(t, f"{pre}.self_attn.projection", d, d)
        _norm(t, f"{pre}.layer_norm1", d)
        _linear(t, f"{pre}.mlp.fc1", v["intermediate_size"], d)
        _linear(t, f"{pre}.mlp.fc2", d, v["intermediate_size"])
        _norm(t, f"{pre}.layer_norm2", d)
    _norm(t, "visual_encoder.post_layernorm", d)
    for i in range(q["num_hidden_layers"]):
        pre = f"encoder.layer.{i}"
        blocks = [("attention", h)]
        if i % q.get("cross_attention_frequency", 2) == 0:
            blocks.append(("crossattention", q.get("encoder_hidden_size", d)))
        for name, kv_dim in blocks:
            _linear(t, f"{pre}.{name}.attention.query", h, h)
            _linear(t, f"{pre}.{name}.attention.key", h, kv_dim)
            _linear(t, f"{pre}.{name}.attention.value", h, kv_dim)
            _linear(t, f"{pre}.{name}.output.dense", h, h)
            _norm(t, f"{pre}.{name}.output.LayerNorm", h)
        for suffix in ("", "_query"):
            _linear(t, f"{pre}.intermediate{suffix}.dense", q["intermediate_size"], h)
            _linear(t, f"{pre}.output{suffix}.dense", h, q["intermediate_size"])
            _norm(t, f"{pre}.output{suffix}.LayerNorm", h)
    _linear(t, "proj_layer.dense1", 4 * h, h)
    _linear(t, "proj_layer.dense2", h, 4 * h)
    _norm(t, "proj_layer.LayerNorm", h)
    return t


def parameter_count(config: dict) -> int:
    """Trainable parameters (the position_ids buffer excluded); allocates nothing."""
    total = 0
    for shape, kind in qformer_table(config).values():
        if kind != "position_ids":
            n = 1
            for s in shape:
                n *= s
            total += n
    return total


def random_state(config: dict, generator: torch.Generator, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Seeded random weights for every key, filled in sorted key order (independent of dict order)."""
    table = qformer_table(config)
    state = {}
    for key in sorted(table):
        shape, kind = table[key]
        if kind == "position_ids":
            state[key] = torch.arange(shape[-1], dtype=torch.int64).expand(shape).contiguous()
        elif kind == "normal":
            state[key] = (torch.randn(shape, generator=generator) * 0.02).to(dtype)
        elif kind == "ones":
            state[key] = torch.ones(shape, dtype=dtype)
        else:
            state[key] = torch.zeros(shape, dtype=dtype)
    return state
