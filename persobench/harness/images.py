"""Images to VAE latents with the diffusers training examples' transform."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def to_model_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """Centre crop to square, resize (bicubic), to [-1, 1] CHW."""
    w, h = image.size
    s = min(w, h)
    image = image.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1.0


@torch.no_grad()
def encode_images(components, images: list[Image.Image]) -> torch.Tensor:
    """Scaled VAE latent means (float32) at the model's native resolution."""
    c = components
    size = c.latent_shape[1] * c.vae_scale
    x = torch.stack([to_model_tensor(im, size) for im in images]).to(c.device, c.dtype)
    return (c.vae.encode(x).latent_dist.mean * c.vae.config.scaling_factor).float()
