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
from ..core.config import GuidanceConfig, RunConfig, guidance_terms, stable_hash, to_dict
from ..core.fitted import Fitted
from ..core.images import encode_images
from ..core.sampling import Conditioning, encode_text
from ..core.schedulers import build_scheduler
from ..guidance import GuidanceInputs, Palette, guidances
from ..guidance.inversion import invert
from ..guidance.terms import token_columns

# Bump when guidance's algorithm changes what an image is for the same config, so a store never serves
# an image the code no longer makes (2: every sampler served, issue 12).
GUIDANCE_VERSION = 2


def guidance_signature(g: GuidanceConfig, name: str) -> dict[str, Any] | None:
    return None if name == "none" else {"name": name, **to_dict(g), "version": GUIDANCE_VERSION}


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
    n = getattr((g.palette_term() or ("", None))[1], "num_references", None)  # the term that reads it says how many
    refs = refs if n is None else refs[:n]
    prompt = g.inversion_prompt.replace("{class}", fitted.subject.class_noun)
    cond = fitted.encode([prompt] * len(refs), cfg.sampler.negative_prompt)
    cond.subject_positions = token_columns(fitted.tokenizer, [prompt] * len(refs), [fitted.subject.class_noun], "class", FIX)
    key = palette_key(cfg, c, fit_key, fitted.subject.content_hash, prompt, len(refs))
    path = cache_dir / f"{fitted.subject.name}-{key}.pt"
    if path.is_file():
        trajectory = [z.to(c.device, c.dtype) for z in torch.load(path, weights_only=True)]
    else:
        z0 = encode_images(c, refs).to(c.dtype)
        scheduler = build_scheduler(cfg.sampler.scheduler, c.scheduler_config)
        inv = invert(fitted.unet, scheduler, z0, cond, cfg.sampler.steps, cfg.sampler.cfg_scale, g.inversion,
                     g.null_text_iterations, g.null_text_lr)
        trajectory = inv.trajectory
        with atomic_path(path) as tmp:
            torch.save([z.detach().cpu() for z in trajectory], tmp)
    return Palette(trajectory, cond)


FIX = "change guidance.appearance.subject_token or the method's prompt form"


def check_guidance(name: str, cfg: RunConfig, fitted: Fitted, templates: list[str]) -> None:
    """Fail before any image is sampled: each enabled term's layers exist and every prompt names what it reads;
    the template prompts name the class."""
    if name == "none":
        return
    prompts = [fitted.prompt(t) for t in templates]
    for term_name, term_cfg in cfg.guidance.terms().items():
        if term_cfg.enabled:
            guidance_terms.get(term_name).check(term_cfg, fitted, prompts)
    token_columns(fitted.components.tokenizer, [fitted.clip_text(t) for t in templates], [fitted.subject.class_noun], "class", FIX)


def build_hooks(name: str, cfg: RunConfig, fitted: Fitted, prompts: list[str], templates: list[str], cond: Conditioning,
                initial_latents: torch.Tensor, palette: Palette | None, step_seeds: list[int] | None = None) -> list:
    """`step_seeds`: the seeds of the main run's per-image step generators, so the template's
    stochastic steps (DDPM, Euler ancestral, DDIM eta > 0) draw the vanilla run's noise. Each enabled term
    builds its own inputs from the `Fitted` (`inputs_from`); the template's conditioning is built here."""
    if name == "none":
        return []
    g, c = cfg.guidance, fitted.components
    own = {n: guidance_terms.get(n).inputs_from(tc, fitted, prompts) for n, tc in g.terms().items() if tc.enabled}
    template_prompts = [fitted.clip_text(t) for t in templates]
    with torch.no_grad():
        tcond = Conditioning(encode_text(c.tokenizer, c.text_encoder, template_prompts).to(c.dtype),
                             encode_text(c.tokenizer, c.text_encoder, [cfg.sampler.negative_prompt] * len(prompts)).to(c.dtype),
                             token_columns(c.tokenizer, template_prompts, [fitted.subject.class_noun], "class", FIX))
    inputs = GuidanceInputs(fitted.unet, c.unet, lambda: build_scheduler(cfg.sampler.scheduler, c.scheduler_config), cond,
                            tcond, initial_latents, palette, eta=cfg.sampler.eta, step_seeds=step_seeds, own=own)
    return [guidances.get(name)(g, inputs, cfg.sampler.steps)]
