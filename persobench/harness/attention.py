"""Cross-attention capture through diffusers attention processors.

`capture_cross_attention(unet, layers)` installs a recording processor only on the named
cross-attention layers (`attn2` of each transformer block; all others keep theirs) and restores the
originals on exit. The processor computes exactly what diffusers' `AttnProcessor` computes, and keeps
the head-averaged probabilities [batch, query pixels, tokens] per layer: what layout drawing and
appearance masks (Pick-and-Draw) and the toy world's word-specificity check read.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch

from ..errors import UserError


def cross_attention_layers(unet: torch.nn.Module) -> list[str]:
    """Names of every cross-attention processor of a UNet (`...attn2.processor`)."""
    return [name for name in unet.attn_processors if name.endswith("attn2.processor")]


def layer_resolution(unet: torch.nn.Module, name: str) -> int:
    """Downsampling factor of a layer relative to the latent (1, 2, 4, ...), read from its block name."""
    n_down = len(unet.config.block_out_channels)
    if name.startswith("mid_block"):
        return 2 ** (n_down - 1)
    block = int(name.split(".")[1])
    return 2**block if name.startswith("down_blocks") else 2 ** (n_down - 1 - block)


class RecordingProcessor:
    """diffusers' AttnProcessor arithmetic, plus recording of head-averaged attention probabilities."""

    def __init__(self, name: str, store: dict[str, torch.Tensor], keep_grad: bool = False) -> None:
        self.name, self.store, self.keep_grad = name, store, keep_grad

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key, value = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        query, key, value = attn.head_to_batch_dim(query), attn.head_to_batch_dim(key), attn.head_to_batch_dim(value)
        probs = attn.get_attention_scores(query, key, attention_mask)
        heads = attn.heads
        averaged = probs.view(-1, heads, *probs.shape[1:]).mean(1)
        self.store[self.name] = averaged if self.keep_grad else averaged.detach()
        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


@contextlib.contextmanager
def capture_cross_attention(unet: torch.nn.Module, layers: Iterable[str] | None = None,
                            keep_grad: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Record the named cross-attention layers (default: all) while the context is open."""
    available = cross_attention_layers(unet)
    chosen = list(layers) if layers is not None else available
    unknown = [n for n in chosen if n not in available]
    if unknown:
        raise UserError(f"unknown cross-attention layer(s) {unknown}; this UNet has: {', '.join(available)}")
    original = dict(unet.attn_processors)
    store: dict[str, torch.Tensor] = {}
    patched = dict(original)
    for name in chosen:
        patched[name] = RecordingProcessor(name, store, keep_grad)
    unet.set_attn_processor(patched)
    try:
        yield store
    finally:
        unet.set_attn_processor(original)
