"""The harness-owned denoising loop: scheduler step, classifier-free guidance, per-step hooks.

Methods supply a denoiser and conditioning, never a loop of their own (k-diffusion style); guidance
plugs in as a hook `(step, t, latents, ctx) -> latents` that may edit z_t before the noise
prediction. With no hook the loop reproduces `StableDiffusionPipeline.__call__` exactly (tested).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image


@dataclasses.dataclass
class Conditioning:
    """Text conditioning for a batch; `uncond` is the negative prompt's, used by CFG."""

    cond: torch.Tensor  # [B, L, D]
    uncond: torch.Tensor  # [B, L, D]
    subject_positions: list[list[int]] = dataclasses.field(default_factory=list)  # token columns of the subject


@dataclasses.dataclass
class StepContext:
    """What a hook may read at one denoising step."""

    unet: torch.nn.Module
    scheduler: Any
    conditioning: Conditioning
    cfg_scale: float
    num_steps: int


class Hook(Protocol):
    """Edits z_t before the step's noise prediction. A hook may also define `wrap_denoiser(unet)`
    returning a callable with the UNet's signature, used for the step's main forward (Pick-and-Draw
    puts its template rows in that batch)."""

    def __call__(self, step: int, t: torch.Tensor, latents: torch.Tensor, ctx: StepContext) -> torch.Tensor: ...


def _step_kwargs(scheduler: Any, eta: float, generators: list[torch.Generator] | None) -> dict[str, Any]:
    params = set(inspect.signature(scheduler.step).parameters)
    kwargs: dict[str, Any] = {}
    if "eta" in params:
        kwargs["eta"] = eta
    if "generator" in params and generators is not None:
        kwargs["generator"] = generators
    return kwargs


def denoise(
    unet: torch.nn.Module,
    scheduler: Any,
    latents: torch.Tensor,
    conditioning: Conditioning,
    num_steps: int,
    cfg_scale: float,
    eta: float = 0.0,
    hooks: Sequence[Hook] = (),
    step_generators: list[torch.Generator] | None = None,
    until: int | None = None,
) -> torch.Tensor:
    """Run the sampler from initial noise `latents` to clean latents.

    `step_generators` (one per image) feed stochastic schedulers, so even ancestral sampling is
    per-image deterministic. As in diffusers, CFG is on when cfg_scale > 1, uncond first in the batch.
    `until`: stop after that many loop iterations and return the latents reached (not decodable images).
    """
    device = latents.device
    scheduler.set_timesteps(num_steps, device=device)
    latents = latents * scheduler.init_noise_sigma
    do_cfg = cfg_scale > 1.0
    embeds = torch.cat([conditioning.uncond, conditioning.cond]) if do_cfg else conditioning.cond
    ctx = StepContext(unet, scheduler, conditioning, cfg_scale, num_steps)
    extra = _step_kwargs(scheduler, eta, step_generators)
    model = unet
    for hook in hooks:
        wrap = getattr(hook, "wrap_denoiser", None)
        model = wrap(model) if wrap is not None else model
    for i, t in enumerate(scheduler.timesteps):
        if until is not None and i >= until:  # a pass that only needs its first steps (the vanilla template's)
            break
        for hook in hooks:
            latents = hook(i, t, latents, ctx)
        model_in = torch.cat([latents] * 2) if do_cfg else latents
        model_in = scheduler.scale_model_input(model_in, t)
        with torch.no_grad():
            pred = model(model_in, t, encoder_hidden_states=embeds).sample
        if do_cfg:
            uncond, cond = pred.chunk(2)
            pred = uncond + cfg_scale * (cond - uncond)
        latents = scheduler.step(pred, t, latents, **extra, return_dict=False)[0]
    return latents


@torch.no_grad()
def decode(vae: torch.nn.Module, latents: torch.Tensor) -> list[Image.Image]:
    """Latents -> PIL images, with the same arithmetic as diffusers' VaeImageProcessor."""
    images = vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]
    images = (images / 2 + 0.5).clamp(0, 1)
    arr = images.cpu().permute(0, 2, 3, 1).float().numpy()
    return [Image.fromarray(a) for a in (arr * 255).round().astype(np.uint8)]


def encode_text(tokenizer: Any, text_encoder: torch.nn.Module, prompts: list[str]) -> torch.Tensor:
    """Token embeddings as `StableDiffusionPipeline.encode_prompt` computes them (no clip skip).

    Differentiable (Textual Inversion trains through it); callers that only sample wrap it in no_grad.
    """
    ids = tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    device = next(text_encoder.parameters()).device
    return text_encoder(ids.to(device), attention_mask=None)[0]


def token_positions(tokenizer: Any, prompt: str, words: Sequence[str]) -> list[int]:
    """Token columns (BOS = 0) of every token belonging to any of `words` in `prompt`."""
    ids = tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids
    wanted = set()
    for w in words:
        wanted.update(tokenizer(w, add_special_tokens=False).input_ids)
    return [i for i, tok in enumerate(ids) if tok in wanted]


@torch.no_grad()
def sample_base(components: Any, prompts: list[str], seeds: list[int], steps: int, cfg_scale: float,
                scheduler: str = "ddim") -> torch.Tensor:
    """Plain text-to-image latents from a base model (class images, evaluation, benchmarks)."""
    from .schedulers import build_scheduler
    from .seeding import initial_noise

    c = components
    cond = Conditioning(encode_text(c.tokenizer, c.text_encoder, prompts), encode_text(c.tokenizer, c.text_encoder, [""] * len(prompts)))
    noise = initial_noise(seeds, c.latent_shape).to(c.device, c.dtype)
    return denoise(c.unet, build_scheduler(scheduler, c.scheduler_config), noise, cond, steps, cfg_scale)
