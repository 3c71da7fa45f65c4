"""What the fine-tuning methods share: hyperparameter presets, reference latents, the diffusion loss.

Presets are data: "paper" holds values from the original papers / diffusers training examples for
real SD 1.5, "toy" the values tuned on the embedded toy world. Explicit `method_params` override the
preset's fields; an unknown field is an error naming the allowed ones.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..core.benchmark import Subject
from ..core.components import SDComponents
from ..core.config import from_dict
from ..core.errors import UserError
from ..core.images import encode_images
from ..core.schedulers import build_scheduler

T = typing.TypeVar("T")


def resolve_params(cls: type[T], presets: dict[str, dict[str, Any]], params: dict[str, Any], method: str) -> T:
    """Preset (params['preset'], default 'toy') <- explicit params, validated like the run config."""
    params = dict(params)
    preset = params.pop("preset", "toy")
    if preset not in presets:
        raise UserError(f"method_params.{method}.preset must be one of {sorted(presets)}, got {preset!r}")
    data = {**presets[preset], **params}
    return from_dict(cls, data, f"method_params.{method}")


def as_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


@torch.no_grad()
def reference_latents(components: SDComponents, subject: Subject, num_references: int | None) -> torch.Tensor:
    """VAE latent means (scaled) of the subject's references and their mirror images: [2N, C, h, w]."""
    images = subject_references(subject, num_references)
    return encode_images(components, images + [im.transpose(Image.FLIP_LEFT_RIGHT) for im in images])


def script_pixels(image: Image.Image, size: int, center_crop: bool = False) -> torch.Tensor:
    """diffusers' textual_inversion.py image transform, to [-1, 1] CHW.

    The script (`TextualInversionDataset`) centre-crops only with --center_crop (default off) and otherwise
    resizes the whole image, bicubic, to `resolution` x `resolution`: a non-square reference is squashed,
    not cropped (the harness's `to_model_tensor`, used elsewhere, crops)."""
    image = image.convert("RGB")
    if center_crop:
        w, h = image.size
        s = min(w, h)
        image = image.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    image = image.resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)


class ReferencePosterior:
    """The VAE posterior of each reference and of its mirror image, sampled like the training scripts.

    The scripts encode every batch afresh and train on `latent_dist.sample() * scaling_factor` of an image
    that `RandomHorizontalFlip(p=flip_p)` may have mirrored. The transform is deterministic up to the flip,
    so encoding the 2N (image, mirror) pairs once and drawing mean + std * eps per item is the same
    distribution, with every draw from the fit's seeded generator (fits stay reproducible)."""

    @torch.no_grad()
    def __init__(self, components: SDComponents, images: list[Image.Image], center_crop: bool = False) -> None:
        c = components
        size = c.latent_shape[1] * c.vae_scale
        both = images + [im.transpose(Image.FLIP_LEFT_RIGHT) for im in images]
        x = torch.stack([script_pixels(im, size, center_crop) for im in both]).to(c.device, c.dtype)
        dist = c.vae.encode(x).latent_dist
        scale = c.vae.config.scaling_factor
        self.mean, self.std = (dist.mean * scale).float(), (dist.std * scale).float()
        self.count = len(images)

    def sample(self, batch_size: int, flip_p: float, gen: torch.Generator) -> torch.Tensor:
        """A batch: references drawn uniformly, each mirrored with probability flip_p, one posterior draw each."""
        idx = batch_indices(self.count, batch_size, gen)
        flipped = torch.rand(batch_size, generator=gen) < flip_p
        rows = idx + self.count * flipped.long()
        eps = torch.randn(self.mean[rows].shape, generator=gen).to(self.mean.device)
        return self.mean[rows] + self.std[rows] * eps


def subject_references(subject: Subject, num_references: int | None) -> list[Image.Image]:
    """The subject's first `num_references` images (None: all)."""
    images = subject.images()
    if num_references is not None:
        if num_references <= 0:
            raise UserError(f"num_references must be positive or null (all), got {num_references}")
        images = images[:num_references]
    return images


class DiffusionLoss:
    """Noise-prediction loss in the model's own parameterisation (epsilon or v)."""

    def __init__(self, components: SDComponents) -> None:
        self.scheduler = build_scheduler("ddpm", components.scheduler_config)
        self.prediction = self.scheduler.config.prediction_type
        if self.prediction not in ("epsilon", "v_prediction"):
            raise UserError(f"base model's prediction_type {self.prediction!r} is not supported for fitting (epsilon, v_prediction)")

    def __call__(self, unet: torch.nn.Module, latents: torch.Tensor, embeds: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        noise = torch.randn(latents.shape, generator=gen).to(latents.device)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (len(latents),), generator=gen).to(latents.device)
        noisy = self.scheduler.add_noise(latents, noise, t)
        target = noise if self.prediction == "epsilon" else self.scheduler.get_velocity(latents, noise, t)
        pred = unet(noisy.to(unet.dtype), t, encoder_hidden_states=embeds.to(unet.dtype)).sample
        return F.mse_loss(pred.float(), target.float())


def batch_indices(n: int, batch_size: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(0, n, (batch_size,), generator=gen)


class FitBar:
    """A fitting progress bar showing the running loss; silent without a rich Progress."""

    def __init__(self, progress, description: str, total: int) -> None:
        self.progress, self.description = progress, description
        self.task = progress.add_task(description, total=total) if progress is not None else None
        self.ema: float | None = None

    def step(self, loss: torch.Tensor) -> None:
        if self.task is None:
            return
        value = float(loss.detach())  # a host sync per fitting step is fine; sampling never does this
        self.ema = value if self.ema is None else 0.9 * self.ema + 0.1 * value
        self.progress.update(self.task, advance=1, description=f"{self.description} loss {self.ema:.4f}")

    def close(self) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
