"""Glue between a fitted method and a guidance term: plain tensors in, a sampling hook out.

This is the only place that reads a `Fitted` on guidance's behalf: it finds the subject's token
columns, encodes the vanilla template prompts with the base model, and inverts the reference image(s)
into a palette (cached on disk per fit, reference, prompt, negative prompt, scheduler, steps, CFG scale,
dtype and inversion settings; `palette_key`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..core.atomic import atomic_path
from ..core.config import GuidanceConfig, RunConfig, stable_hash, to_dict
from ..core.errors import UserError
from ..core.images import encode_images
from ..core.sampling import Conditioning, encode_text, token_positions
from ..core.schedulers import build_scheduler
from ..guidance import GuidanceInputs, Palette, guidances
from ..guidance.inversion import invert
from ..methods import Fitted

# Bump when guidance's algorithm changes what an image is for the same config, so a store never serves
# an image the code no longer makes (2: every sampler served, issue 12).
GUIDANCE_VERSION = 2


def guidance_signature(g: GuidanceConfig, name: str) -> dict[str, Any] | None:
    return None if name == "none" else {"name": name, **to_dict(g), "version": GUIDANCE_VERSION}


def _columns(tokenizer, prompts: list[str], words: list[str], what: str) -> list[list[int]]:
    cols = [token_positions(tokenizer, p, words) for p in prompts]
    missing = [p for p, c in zip(prompts, cols) if not c]
    if missing:
        raise UserError(f"guidance needs the subject in every prompt, but {missing[0]!r} has no {what} token ({' / '.join(words)}); "
                        "change guidance.appearance.subject_token or the method's prompt form")
    return cols


def _subject_words(fitted: Fitted, which: str) -> list[str]:
    words = {"class": [fitted.subject.class_noun], "identifier": [fitted.identifier] if fitted.identifier else [],
             "both": [w for w in (fitted.identifier, fitted.subject.class_noun) if w]}[which]
    if not words:
        raise UserError(f"guidance.appearance.subject_token={which} but method {fitted.method} has no identifier; use 'class'")
    return words


# Bump when the inversion's algorithm changes, so a store never serves a palette the code no longer makes
# (2: per-scheduler noise levels, null_text palette = the CFG trajectory with the optimised nulls;
# 3: null-text's decaying rate and step-dependent early stop, as the reference notebook).
INVERSION_VERSION = 3


def palette_key(cfg: RunConfig, components, fit_key: str, subject_hash: str, prompt: str, refs: int) -> str:
    """Everything that changes the inverted trajectory. Not eta or step seeds: the inversion is the
    deterministic ODE one whatever the sampler's noise; the scheduler fixes the timesteps and noise levels."""
    g, s = cfg.guidance, cfg.sampler
    return stable_hash({"fit": fit_key, "subject": subject_hash, "prompt": prompt, "refs": refs,
                        "negative_prompt": s.negative_prompt, "scheduler": s.scheduler, "steps": s.steps,
                        "cfg": s.cfg_scale, "kind": g.inversion, "iters": g.null_text_iterations, "lr": g.null_text_lr,
                        "model": components.fingerprint, "dtype": str(components.dtype), "model_dtype": cfg.model.dtype,
                        "version": INVERSION_VERSION})


def reference_palette(fitted: Fitted, cfg: RunConfig, fit_key: str, cache_dir: Path) -> Palette:
    g, c = cfg.guidance, fitted.components
    refs = fitted.subject.images()
    refs = refs if g.appearance.num_references is None else refs[: g.appearance.num_references]
    prompt = g.inversion_prompt.replace("{class}", fitted.subject.class_noun)
    cond = fitted.encode([prompt] * len(refs), cfg.sampler.negative_prompt)
    cond.subject_positions = _columns(fitted.tokenizer, [prompt] * len(refs), [fitted.subject.class_noun], "class")
    key = palette_key(cfg, c, fit_key, fitted.subject.content_hash, prompt, len(refs))
    path = cache_dir / f"{fitted.subject.name}-{key}.pt"
    if path.is_file():
        trajectory = [z.to(c.device, c.dtype) for z in torch.load(path, weights_only=True)]
    else:
        z0 = encode_images(c, refs).to(c.dtype)
        scheduler = build_scheduler(cfg.sampler.scheduler, c.scheduler_config)
        inv = invert(fitted.unet, scheduler, z0, cond, cfg.sampler.steps, cfg.sampler.cfg_scale, g.inversion,
                     g.null_text_iterations, g.null_text_lr, with_reconstruction=False)
        trajectory = inv.trajectory
        with atomic_path(path) as tmp:
            torch.save([z.detach().cpu() for z in trajectory], tmp)
    return Palette(trajectory, cond)


def check_guidance(name: str, cfg: RunConfig, fitted: Fitted, templates: list[str]) -> None:
    """Fail before any image is sampled: layer names exist, every prompt names the subject."""
    if name == "none":
        return
    from ..core.attention import select_layers

    g = cfg.guidance
    if g.appearance.enabled:
        select_layers(fitted.unet, g.appearance.layers)
    if g.layout.enabled:
        select_layers(fitted.unet, g.layout.layers)
    prompts = [fitted.prompt(t) for t in templates]
    _columns(fitted.tokenizer, prompts, _subject_words(fitted, g.appearance.subject_token), "subject")
    _columns(fitted.components.tokenizer, [fitted.clip_text(t) for t in templates], [fitted.subject.class_noun], "class")


def build_hooks(name: str, cfg: RunConfig, fitted: Fitted, prompts: list[str], templates: list[str], cond: Conditioning,
                initial_latents: torch.Tensor, palette: Palette | None, step_seeds: list[int] | None = None) -> list:
    """`step_seeds`: the seeds of the main run's per-image step generators, so the template's
    stochastic steps (DDPM, Euler ancestral, DDIM eta > 0) draw the vanilla run's noise."""
    if name == "none":
        return []
    g, c = cfg.guidance, fitted.components
    appearance_cols = _columns(fitted.tokenizer, prompts, _subject_words(fitted, g.appearance.subject_token), "subject")
    layout_words = [fitted.subject.class_noun]
    if not all(token_positions(fitted.tokenizer, p, layout_words) for p in prompts):
        layout_words = _subject_words(fitted, "identifier")
    layout_cols = _columns(fitted.tokenizer, prompts, layout_words, "class")
    template_prompts = [fitted.clip_text(t) for t in templates]
    with torch.no_grad():
        tcond = Conditioning(encode_text(c.tokenizer, c.text_encoder, template_prompts).to(c.dtype),
                             encode_text(c.tokenizer, c.text_encoder, [cfg.sampler.negative_prompt] * len(prompts)).to(c.dtype),
                             _columns(c.tokenizer, template_prompts, [fitted.subject.class_noun], "class"))
    guided_cond = Conditioning(cond.cond, cond.uncond, appearance_cols)
    inputs = GuidanceInputs(fitted.unet, c.unet, lambda: build_scheduler(cfg.sampler.scheduler, c.scheduler_config), guided_cond,
                            layout_cols, tcond, initial_latents, palette, eta=cfg.sampler.eta, step_seeds=step_seeds)
    return [guidances.get(name)(g, inputs, cfg.sampler.steps)]
