"""Cross-attention capture through diffusers attention processors.

`capture_cross_attention(unet, layers)` installs a recording processor only on the named
cross-attention layers (`attn2` of each transformer block; all others keep theirs) and restores the
originals on exit. The processor computes exactly what diffusers' `AttnProcessor` computes, and keeps
the head-averaged probabilities [batch, query pixels, tokens] per layer: what layout drawing and
appearance masks (Pick-and-Draw) and the toy world's word-specificity check read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import weakref
from collections.abc import Iterable, Iterator

import torch

from .errors import UserError

_MODULES: weakref.WeakKeyDictionary[torch.nn.Module, dict[str, torch.nn.Module]] = weakref.WeakKeyDictionary()


def _cross_attention_modules(unet: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Processor name -> its Attention module, found once per UNet: guidance opens a capture several
    times per step, and diffusers' `attn_processors` / `set_attn_processor` walk the whole module tree
    each time (about 6% of a toy-model forward)."""
    found = _MODULES.get(unet)
    if found is None:
        found = {f"{name}.processor": module for name, module in unet.named_modules()
                 if name.endswith("attn2") and hasattr(module, "processor")}
        _MODULES[unet] = found
    return found


def cross_attention_layers(unet: torch.nn.Module) -> list[str]:
    """Names of every cross-attention processor of a UNet (`...attn2.processor`)."""
    return list(_cross_attention_modules(unet))


def layer_resolution(unet: torch.nn.Module, name: str) -> int:
    """Downsampling factor of a layer relative to the latent (1, 2, 4, ...), read from its block name."""
    n_down = len(unet.config.block_out_channels)
    if name.startswith("mid_block"):
        return 2 ** (n_down - 1)
    block = int(name.split(".")[1])
    return 2**block if name.startswith("down_blocks") else 2 ** (n_down - 1 - block)


@dataclasses.dataclass
class Capture:
    """What one forward pass recorded, by layer name."""

    maps: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)  # [B, pixels, tokens], head-averaged
    features: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)  # [B, pixels, C] (see `feature`)


def _query_side(attn, hidden_states: torch.Tensor, temb) -> tuple[torch.Tensor, tuple | None]:
    """diffusers' AttnProcessor up to the query projection's input: spatial norm, [B, C, H, W] -> [B, HW, C]
    (its shape returned for the way back), group norm."""
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    shape = None
    if hidden_states.ndim == 4:
        shape = hidden_states.shape
        b, c, h, w = shape
        hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    return hidden_states, shape


def _mask(attn, hidden_states: torch.Tensor, encoder_hidden_states, attention_mask):
    batch_size, sequence_length, _ = hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
    return attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)


class RecordingProcessor:
    """diffusers' AttnProcessor arithmetic, plus recording of head-averaged attention probabilities
    and (optionally) a feature of the layer: `hidden` (the query-side hidden states entering the
    cross-attention), `query` (after to_q) or `attn_out` (the attention output, before the residual)."""

    def __init__(self, name: str, capture: Capture, keep_grad: bool = False, feature: str | None = None) -> None:
        self.name, self.capture, self.keep_grad, self.feature = name, capture, keep_grad, feature

    def _keep(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.keep_grad else t.detach()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        residual = hidden_states
        hidden_states, shape = _query_side(attn, hidden_states, temb)
        attention_mask = _mask(attn, hidden_states, encoder_hidden_states, attention_mask)
        if self.feature == "hidden":
            self.capture.features[self.name] = self._keep(hidden_states)
        query = attn.to_q(hidden_states)
        if self.feature == "query":
            self.capture.features[self.name] = self._keep(query)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key, value = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        query, key, value = attn.head_to_batch_dim(query), attn.head_to_batch_dim(key), attn.head_to_batch_dim(value)
        probs = attn.get_attention_scores(query, key, attention_mask)
        heads = attn.heads
        self.capture.maps[self.name] = self._keep(probs.view(-1, heads, *probs.shape[1:]).mean(1))
        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if self.feature == "attn_out":
            self.capture.features[self.name] = self._keep(hidden_states)
        if shape is not None:
            hidden_states = hidden_states.transpose(-1, -2).reshape(*shape)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


class ObservingProcessor:
    """Leaves a layer's output to its own processor (bit for bit: SDPA stays SDPA) and records, beside it and
    without gradients, the head-averaged probabilities that `RecordingProcessor` computes: for watching a
    pass whose images must not change (the vanilla template recorded from an unguided run)."""

    def __init__(self, name: str, capture: Capture, original) -> None:
        self.name, self.capture, self.original = name, capture, original

    @torch.no_grad()
    def _probs(self, attn, hidden_states, encoder_hidden_states, attention_mask, temb) -> torch.Tensor:
        hidden_states, _ = _query_side(attn, hidden_states, temb)
        attention_mask = _mask(attn, hidden_states, encoder_hidden_states, attention_mask)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        query, key = attn.head_to_batch_dim(query), attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        probs = attn.get_attention_scores(query, key, attention_mask)
        return probs.view(-1, attn.heads, *probs.shape[1:]).mean(1)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        self.capture.maps[self.name] = self._probs(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)


def select_layers(unet: torch.nn.Module, specs: Iterable[str]) -> list[str]:
    """Layer names from names or groups: all, up, down, mid, up-mid (the decoder's cross-attention
    layers at its two middle resolutions: all up levels but the finest), res:N (downsampling factor N)."""
    available = cross_attention_layers(unet)
    up = [n for n in available if n.startswith("up_blocks")]
    up_levels = sorted({layer_resolution(unet, n) for n in up}, reverse=True)
    groups = {
        "all": available,
        "up": up,
        "down": [n for n in available if n.startswith("down_blocks")],
        "mid": [n for n in available if n.startswith("mid_block")],
        "up-mid": [n for n in up if layer_resolution(unet, n) in up_levels[:2]],
    }
    chosen: list[str] = []
    for spec in specs:
        if spec in groups:
            names = groups[spec]
        elif spec.startswith("res:") and spec[4:].isdigit():
            names = [n for n in available if layer_resolution(unet, n) == int(spec[4:])]
        elif spec in available:
            names = [spec]
        else:
            raise UserError(f"unknown cross-attention layer or group {spec!r}; groups: {', '.join(groups)}, res:N; "
                            f"layers: {', '.join(available)}")
        chosen += [n for n in names if n not in chosen]
    if not chosen:
        raise UserError(f"layer selection {list(specs)} matches no cross-attention layer of this UNet")
    return chosen


@contextlib.contextmanager
def capture_cross_attention(unet: torch.nn.Module, layers: Iterable[str] | None = None, keep_grad: bool = False,
                            feature: str | None = None, feature_layers: Iterable[str] = (), observe: bool = False) -> Iterator[Capture]:
    """Record the named cross-attention layers (default: all) while the context is open; `feature`
    is also recorded on `feature_layers`. `observe`: maps only, the layers' outputs left to their own
    processors, so the forward is bit-identical to an unobserved one (`ObservingProcessor`)."""
    available = cross_attention_layers(unet)
    chosen = list(layers) if layers is not None else available
    feature_layers = list(feature_layers)
    unknown = [n for n in chosen + feature_layers if n not in available]
    if unknown:
        raise UserError(f"unknown cross-attention layer(s) {unknown}; this UNet has: {', '.join(available)}")
    modules = _cross_attention_modules(unet)
    capture = Capture()
    original = {}
    for name in dict.fromkeys(chosen + feature_layers):
        original[name] = modules[name].processor
        modules[name].processor = (ObservingProcessor(name, capture, original[name]) if observe else
                                   RecordingProcessor(name, capture, keep_grad, feature if name in feature_layers else None))
    try:
        yield capture
    finally:
        for name, processor in original.items():
            modules[name].processor = processor
