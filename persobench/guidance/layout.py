"""Pick-and-Draw's layout loss: smoothed cross-attention maps against the vanilla model's template.

Maps are Gaussian-smoothed (kernel `k`, sigma), normalised to sum 1, and compared with the Frobenius
norm of their difference; the loss is the mean over layers (and images).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian_kernel(size: int, sigma: float, device=None, dtype=torch.float32) -> torch.Tensor:
    ax = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(ax**2) / (2 * sigma**2))
    k = torch.outer(g, g)
    return k / k.sum()


def smooth(maps: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """[B, H, W] -> Gaussian-smoothed [B, H, W] (torch's reflect padding, which is scipy.ndimage's 'mirror' mode)."""
    k = gaussian_kernel(size, sigma, maps.device, maps.dtype)[None, None]
    pad = size // 2
    x = F.pad(maps[:, None], (pad, pad, pad, pad), mode="reflect") if pad else maps[:, None]
    return F.conv2d(x, k)[:, 0]


def normalised(maps: torch.Tensor) -> torch.Tensor:
    return maps / maps.flatten(1).sum(-1).clamp_min(1e-12)[:, None, None]


def layout_loss(generated: list[torch.Tensor], template: list[torch.Tensor], size: int, sigma: float) -> torch.Tensor:
    """Per-image loss [B]: mean over layers of ||N(S(gen)) - N(S(tpl))||_F, maps given as [B, H, W]."""
    per_layer = [
        (normalised(smooth(g, size, sigma)) - normalised(smooth(t, size, sigma))).flatten(1).norm(dim=-1)
        for g, t in zip(generated, template)
    ]
    return torch.stack(per_layer).mean(0)
