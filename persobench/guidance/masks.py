"""Cross-attention maps to subject masks and 2-D maps, shared by the guidance terms."""

from __future__ import annotations

import math

import torch


def subject_mask(maps: torch.Tensor, columns: list[list[int]], tau: float, soft: bool) -> torch.Tensor:
    """[B, pixels, tokens] -> [B, pixels] weights: subject-token attention, min-max normalised, > tau."""
    sel = torch.stack([maps[b][:, cols].sum(-1) for b, cols in enumerate(columns)])
    lo, hi = sel.min(-1, keepdim=True).values, sel.max(-1, keepdim=True).values
    norm = (sel - lo) / (hi - lo).clamp_min(1e-8)
    return norm * (norm > tau) if soft else (norm > tau).to(norm.dtype)


def maps_2d(maps: torch.Tensor, columns: list[list[int]]) -> torch.Tensor:
    """[B, pixels, tokens] -> [B, side, side]: the summed attention of each image's columns."""
    sel = torch.stack([maps[b][:, cols].sum(-1) for b, cols in enumerate(columns)])
    side = int(math.isqrt(sel.shape[-1]))
    return sel.view(len(columns), side, side)
