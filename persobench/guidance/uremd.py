"""Unidirectional Relaxed Earth Mover's Distance (Pick-and-Draw's appearance loss).

The relaxed EMD of Kolkin et al. (2019) drops one marginal constraint of the transport problem, so
each feature simply moves to its nearest neighbour in the other set; "unidirectional" keeps one
direction. With cosine distance d(g, p) = 1 - cos(g, p):

    gen_to_ref:  mean over masked generated features g of  min_p d(g, p)     (default)
    ref_to_gen:  mean over palette features p of           min_g d(g, p)
    both:        max of the two (Kolkin et al.'s REMD)

Masks are weights in [0, 1] (hard masks are 0/1), so batches with different mask sizes stay one
tensor computation without host syncs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DIRECTIONS = ("gen_to_ref", "ref_to_gen", "both")


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[..., N, C] x [..., M, C] -> [..., N, M]."""
    return 1.0 - F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).transpose(-1, -2)


def uremd(gen: torch.Tensor, gen_mask: torch.Tensor, palette: torch.Tensor, palette_mask: torch.Tensor,
          direction: str = "gen_to_ref") -> torch.Tensor:
    """Per-image loss [B] for gen [B, N, C] (mask [B, N]) against palette [M, C] (mask [M])."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    d = cosine_distance(gen, palette.unsqueeze(0))  # [B, N, M]
    big = torch.finfo(d.dtype).max / 4
    pm, gm = palette_mask.to(d.dtype), gen_mask.to(d.dtype)
    out = []
    if direction in ("gen_to_ref", "both"):
        nearest = torch.where(pm[None, None, :] > 0, d, big).min(-1).values  # [B, N]
        out.append((nearest * gm).sum(-1) / gm.sum(-1).clamp_min(1e-8))
    if direction in ("ref_to_gen", "both"):
        nearest = torch.where(gm[:, :, None] > 0, d, big).min(1).values  # [B, M]
        out.append((nearest * pm[None]).sum(-1) / pm.sum().clamp_min(1e-8))
    loss = out[0] if len(out) == 1 else torch.maximum(out[0], out[1])
    empty = (gm.sum(-1) == 0) | (pm.sum() == 0)
    return torch.where(empty, torch.zeros_like(loss), loss)
