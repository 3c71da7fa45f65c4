"""Images in and out of the models: the one loader for subject, reference and generated images (`load_image`),
and images to VAE latents with the diffusers training examples' transform (`encode_images`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import UserError

# HEIC / AVIF count as images so that one Pillow cannot read is reported, not silently ignored
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".heic", ".heif", ".avif")
MIN_SIDE = 16
# 2: EXIF orientation applied, transparency composited on white. (16-bit / float grey, decoded since, were
# refused before, so no cached subject decodes differently: the version stays.)
LOADER_VERSION = 2


class BadImage(Exception):
    """Why one file cannot be used as an image (the message is the reason alone; the caller names the file)."""


def load_image(path: Path) -> Image.Image:
    """An image as a viewer shows it, in 8-bit RGB: the one loader for subject, reference and generated images,
    so both sides of every similarity are read the same way. A file that cannot be used is a `UserError`
    naming it and why.

    - EXIF orientation is applied (phone photos are often stored sideways with an Orientation tag).
    - Transparency is composited on white (DreamBench++'s `load_image` does both, white background
      included); a plain `convert("RGB")` would instead expose whatever colour the transparent pixels hide.
    - Every bit depth is scaled to 8 bits, never clipped: 16-bit grey ("I;16*", and "I", Pillow's mode for
      16-bit PNG / TIFF grey) is divided by 257 (65535 -> 255); float images ("F") are read as 0..1
      (0..255 or 0..65535 when their values run past 1 or 255). 16-bit RGB PNGs Pillow already reduces.
    - CMYK (Adobe's inverted JPEGs included), palette, 1-bit, grey and the rest: Pillow's conversion.
      Embedded ICC profiles are not applied (as before: applying them would change how every cached
      subject decodes).
    """
    try:
        return decode_image(path)
    except BadImage as e:
        raise UserError(f"image '{path}': {e}; replace or remove the file") from None


def decode_image(path: Path) -> Image.Image:
    """`load_image` without the error wording: raises `BadImage(reason)`."""
    try:
        if path.stat().st_size == 0:
            raise BadImage("empty file, 0 bytes")
        with Image.open(path) as im:
            im.load()
            upright = ImageOps.exif_transpose(im)
            rgb = _on_white(upright) if _has_alpha(upright) else _to_rgb(upright)
    except BadImage:
        raise
    except Image.DecompressionBombError:
        raise BadImage("larger than Pillow's decompression-bomb limit; downscale it") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        hint = " (HEIC/AVIF: convert to JPEG or PNG)" if path.suffix.lower() in (".heic", ".heif", ".avif") else ""
        raise BadImage(f"cannot be read: {type(e).__name__}, not an image Pillow can decode{hint}") from None
    if min(rgb.size) < MIN_SIDE:
        raise BadImage(f"{rgb.size[0]}x{rgb.size[1]} px, at least {MIN_SIDE} px a side needed")
    return rgb


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode.startswith("I") or im.mode == "F":  # 16-bit, 32-bit int or float grey
        return Image.fromarray(_grey_to_8bit(im)).convert("RGB")
    try:
        return im.convert("RGB")
    except ValueError:
        raise BadImage(f"colour mode {im.mode} has no conversion to RGB, save it as 8-bit RGB") from None


def _grey_to_8bit(im: Image.Image) -> np.ndarray:
    arr = np.asarray(im).astype(np.float64)
    if not np.isfinite(arr).all():
        raise BadImage(f"{im.mode} image with NaN or infinite pixels")
    if im.mode == "F":
        top = arr.max(initial=0.0)
        scale = 255.0 if top <= 1.0 else 1.0 if top <= 255.0 else 255.0 / 65535.0
    else:  # I;16, I;16B, I;16L, I (Pillow reads 16-bit grey PNG / TIFF as I;16 or I)
        scale = 255.0 / 65535.0
    return np.clip(np.round(arr * scale), 0, 255).astype(np.uint8)


def _has_alpha(im: Image.Image) -> bool:
    """An alpha channel (RGBA, LA, PA, ...) or a transparent palette index / colour key (`transparency`)."""
    return "A" in im.getbands() or "transparency" in im.info


def _on_white(im: Image.Image) -> Image.Image:
    if im.mode.startswith("I") or im.mode == "F":  # high-bit grey with a colour key: scale first (convert would clip)
        key = im.info.get("transparency")
        grey = Image.fromarray(_grey_to_8bit(im))
        alpha = Image.fromarray(np.where(np.asarray(im) == key, 0, 255).astype(np.uint8)) if key is not None else None
        rgba = grey.convert("RGBA")
        if alpha is not None:
            rgba.putalpha(alpha)
    else:
        rgba = im.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")


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
