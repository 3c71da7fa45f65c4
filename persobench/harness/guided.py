"""Glue between a fitted method and a guidance term: plain tensors in, a sampling hook out.

Each guidance term builds its own inputs from the `Fitted` (`inputs_from`: its token columns); this glue
encodes the vanilla template prompts with the base model, records and stores the vanilla template
(`TemplateStore`), and inverts the reference image(s) into a palette (cached on disk per fit, reference,
prompt, negative prompt, scheduler, steps, CFG scale, dtype and inversion settings; `palette_key`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..core.atomic import atomic_path
from ..core.attention import select_layers
from ..core.config import GuidanceConfig, RunConfig, guidance_terms, signature_dict, stable_hash
from ..core.fitted import Fitted
from ..core.images import encode_images
from ..core.sampling import Conditioning, denoise, encode_text
from ..core.schedulers import build_scheduler
from ..core.seeding import initial_noise, step_seed
from ..guidance import GuidanceInputs, Palette, guidances
from ..guidance.inversion import invert
from ..guidance.pick_and_draw import TemplateRecorder, guided_steps
from ..guidance.terms import token_columns
from .store import file_lock

# Bump when guidance's algorithm changes what an image is for the same config, so a store never serves
# an image the code no longer makes (2: every sampler served, issue 12; 3: the vanilla template recorded once
# from a plain pass and reused by every method, issue 17).
GUIDANCE_VERSION = 3


def guidance_signature(g: GuidanceConfig, name: str) -> dict[str, Any] | None:
    return None if name == "none" else {"name": name, **signature_dict(g), "version": GUIDANCE_VERSION}


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
    if not path.is_file():  # processes sharing a subject wait for one inversion instead of each redoing it (not re-entrant)
        with file_lock(cache_dir / f".{path.stem}.lock"):
            if not path.is_file():
                z0 = encode_images(c, refs).to(c.dtype)
                scheduler = build_scheduler(cfg.sampler.scheduler, c.scheduler_config)
                inv = invert(fitted.unet, scheduler, z0, cond, cfg.sampler.steps, cfg.sampler.cfg_scale, g.inversion,
                             g.null_text_iterations, g.null_text_lr)
                with atomic_path(path) as tmp:
                    torch.save([z.detach().cpu() for z in inv.trajectory], tmp)
    trajectory = [z.to(c.device, c.dtype) for z in torch.load(path, weights_only=True)]
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
                initial_latents: torch.Tensor, palette: Palette | None, step_seeds: list[int] | None = None,
                template: list | None = None) -> list:
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
                            tcond, initial_latents, palette, eta=cfg.sampler.eta, step_seeds=step_seeds, own=own, template=template)
    return [guidances.get(name)(g, inputs, cfg.sampler.steps)]


# --- the vanilla template, recorded once per (base model, prompt, seed, sampler) and reused (issue 17) -------

# Bump when what a stored template holds changes, so a store never serves one the code no longer makes.
TEMPLATE_VERSION = 1


def template_layers(cfg: RunConfig, unet: torch.nn.Module) -> list[str]:
    """The layers whose template maps the enabled terms read ([] when none reads the template)."""
    if cfg.guidance.name == "none":
        return []
    chosen = [select_layers(unet, tc.layers) for n, tc in cfg.guidance.terms().items() if tc.enabled and guidance_terms.get(n).template]
    return list(dict.fromkeys(name for layers in chosen for name in layers))


def template_key(cfg: RunConfig, components, resolution: int, prompt: str, seed: int, layers: list[str]) -> str:
    """Everything the template of one image depends on, and nothing about the method: the base model, the
    class-noun prompt, the image's seed (its noise and step noise), the sampler and the guided range."""
    s = cfg.sampler
    return stable_hash({"model": components.fingerprint, "dtype": str(components.dtype), "prompt": prompt, "seed": seed,
                        "negative_prompt": s.negative_prompt, "scheduler": s.scheduler, "steps": s.steps, "cfg": s.cfg_scale,
                        "eta": s.eta, "resolution": resolution, "layers": layers, "guided": cfg.guidance.steps,
                        "version": TEMPLATE_VERSION}, 20)


class TemplateStore:
    """Recorded templates in the run store (`cache/templates/<key>.pt`, one file per image, written atomically),
    so every method, process and resumed run reuses them. On SD 1.5 at 512 px, with layout drawing on all 16
    cross-attention layers and half of 50 steps guided, one image's template is 26,944 floats per step x 25
    steps = 2.7 MB (fp32), far under 50 MB (`benchmarks/guidance_overhead.py` prints the toy model's)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def has(self, keys: list[str]) -> bool:
        """Whether every image's template is stored (without loading them)."""
        return all((self.root / f"{k}.pt").is_file() for k in keys)

    def get(self, keys: list[str]) -> list | None:
        """Every image's template, or None when any is missing (the batch then records them all)."""
        if not self.has(keys):
            return None
        return [torch.load(self.root / f"{k}.pt", weights_only=True) for k in keys]

    def put(self, keys: list[str], maps: list[dict]) -> None:
        for key, image_maps in zip(keys, maps):
            path = self.root / f"{key}.pt"
            if not path.is_file():
                with atomic_path(path) as tmp:
                    torch.save(image_maps, tmp)


def template_recorder(cfg: RunConfig, fitted: Fitted, prompts: list[str], templates: list[str]) -> TemplateRecorder | None:
    """A recorder for a plain pass that is the template itself (the base UNet and text encoder sampling the
    class-noun prompts: vanilla SD), or None when this pass is not, or no enabled term reads the template."""
    c = fitted.components
    layers = template_layers(cfg, c.unet)
    clip_texts = [fitted.clip_text(t) for t in templates]
    if not layers or fitted.unet is not c.unet or fitted.text_encoder is not c.text_encoder or fitted.tokenizer is not c.tokenizer \
            or prompts != clip_texts:
        return None
    return TemplateRecorder(layers, token_columns(c.tokenizer, clip_texts, [fitted.subject.class_noun], "class", FIX), cfg.guidance.steps)


def record_template(cfg: RunConfig, fitted: Fitted, templates: list[str], seeds: list[int], shape: tuple[int, ...]) -> list:
    """The batch's template maps from a plain pass of the base model on the class-noun prompts, run only as far
    as the last guided step: exactly the pass vanilla SD's own unguided batch is, so whoever records a
    template (vanilla's plain pass, or the first guided method to need it) records the same bits."""
    c = fitted.components
    clip_texts = [fitted.clip_text(t) for t in templates]
    layers = template_layers(cfg, c.unet)
    recorder = TemplateRecorder(layers, token_columns(c.tokenizer, clip_texts, [fitted.subject.class_noun], "class", FIX),
                                cfg.guidance.steps)
    with torch.no_grad():
        cond = Conditioning(encode_text(c.tokenizer, c.text_encoder, clip_texts).to(c.dtype),
                            encode_text(c.tokenizer, c.text_encoder, [cfg.sampler.negative_prompt] * len(clip_texts)).to(c.dtype))
    latents = initial_noise(seeds, shape).to(c.device, c.dtype)
    gens = [torch.Generator("cpu").manual_seed(step_seed(s)) for s in seeds]
    scheduler = build_scheduler(cfg.sampler.scheduler, c.scheduler_config)
    scheduler.set_timesteps(cfg.sampler.steps)
    stop = guided_steps(cfg.guidance.steps, len(scheduler.timesteps)).stop
    denoise(c.unet, scheduler, latents, cond, cfg.sampler.steps, cfg.sampler.cfg_scale, cfg.sampler.eta, [recorder], gens, until=stop)
    return recorder.maps
