"""Pick-and-Draw (Lv, Xiao, Li, Huang; arXiv 2401.16762): training-free guidance of z_t.

At each guided step the hook runs the denoiser on z_t with gradients, reads cross-attention maps and
features through attention processors, and descends the sum of the enabled guidance terms' weighted
losses (`terms.py`; registered in order, each its own file):
    S = weight_app * UREMD(generated features in the subject mask, reference palette)    (appearance.py)
      + weight_lay * || smooth(generated subject maps) - smooth(template maps) ||_F       (layout.py)
      + any plugin term's weight * loss
with step size eta_t (linear over the guided range), `iterations` times. The template is the vanilla
model's own trajectory from the same initial noise with the prompt stripped of the identifier; the
palette comes from the inverted reference at the same step, computed once per subject and step and
reused by every prompt and seed. The code paper is not public: every choice is a config field
(`GuidanceConfig`, and each term's own section) and the defaults are our reconstruction.

Every scheduler persobench offers is served (tests/test_guidance_samplers.py):
- the template starts from the initial noise times `init_noise_sigma`, feeds the UNet through
  `scale_model_input`, and steps with the run's eta and its own per-image generators seeded like the
  main run's (`step_seeds`), so on DDPM, Euler ancestral and DDIM eta > 0 it is the vanilla trajectory;
  it has its own scheduler instance, so multistep state (DPM-Solver++, PNDM) is its own;
- the guided fraction counts the loop's iterations (`len(scheduler.timesteps)`, longer than
  `sampler.steps` on PNDM), and the palette has one latent per iteration (guidance/inversion.py);
- the gradient step is taken in z_t, the UNet's input space (Euler's latents are z_t / sqrt(alpha_bar)),
  so a step size means the same on every sampler.

The hook sees denoisers, conditionings and token columns only, never a method.
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Callable
from typing import Any

import torch

from ..core.attention import capture_cross_attention
from ..core.config import GuidanceConfig, guidance_terms
from ..core.errors import UserError
from ..core.sampling import Conditioning, StepContext, _step_kwargs
from . import guidances
from .masks import maps_2d
from .terms import GuidanceTerm


@dataclasses.dataclass
class Palette:
    """The inverted reference(s): latents per sampler step and their conditioning."""

    trajectory: list[torch.Tensor]  # [R, C, h, w] at each sampler step
    cond: Conditioning  # R copies of the inversion prompt; subject_positions = subject columns
    cache: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class GuidanceInputs:
    unet: torch.nn.Module  # the method's denoiser
    template_unet: torch.nn.Module  # the vanilla model
    make_scheduler: Callable[[], object]
    cond: Conditioning  # the guided prompts' conditioning
    template_cond: Conditioning  # vanilla prompts; subject_positions: class-word columns
    initial_latents: torch.Tensor  # the run's initial noise, before the scheduler's init_noise_sigma
    palette: Palette | None
    eta: float = 0.0  # the sampler's eta (DDIM eta > 0 is stochastic)
    step_seeds: list[int] | None = None  # seeds of the main run's per-image step generators
    own: dict[str, Any] = dataclasses.field(default_factory=dict)  # per term: what its `inputs_from` built
    # per image, the vanilla template's maps {loop step: {layer: [side, side]}} at the guided steps, recorded
    # once (`TemplateRecorder`) and reused by every method; None: the hook runs the template itself
    template: list[dict[int, dict[str, torch.Tensor]]] | None = None


class PickAndDraw:
    """The guidance hook; `finish()` raises if any guided step produced a non-finite score."""

    def __init__(self, cfg: GuidanceConfig, inputs: GuidanceInputs, num_steps: int) -> None:
        self.cfg, self.inp, self.num_steps = cfg, inputs, num_steps
        self.terms: list[GuidanceTerm] = [guidance_terms.get(name)(c, inputs, inputs.own.get(name))
                                          for name, c in cfg.terms().items() if c.enabled]
        if not self.terms:
            raise UserError(f"guidance pick-and-draw with every term ({', '.join(cfg.terms())}) disabled does nothing; "
                            "set guidance.name=none")
        kinds = {term.feature for term in self.terms} - {None}
        if len(kinds) > 1:
            raise UserError(f"guidance terms read different feature kinds {sorted(kinds)}; one guided forward captures one kind")
        # the layers whose template maps a term reads (layout drawing's); the template runs only when one does
        self.template_layers = list(dict.fromkeys(n for term in self.terms if term.template for n in term.layers))
        self.stored = inputs.template if self.template_layers else None
        self.template_scheduler = inputs.make_scheduler()
        self.template_scheduler.set_timesteps(num_steps, device=inputs.initial_latents.device)
        self.guided = guided_steps(cfg.steps, len(self.template_scheduler.timesteps))
        # the vanilla run's own start and step noise: init_noise_sigma (Euler), eta and per-image
        # generators seeded like the main run's (runner.generate), so ancestral samplers match too
        self.template_latents = inputs.initial_latents * self.template_scheduler.init_noise_sigma
        gens = None if inputs.step_seeds is None else [torch.Generator("cpu").manual_seed(s) for s in inputs.step_seeds]
        self.template_step_kwargs = _step_kwargs(self.template_scheduler, inputs.eta, gens)
        self.bad_steps: list[torch.Tensor] = []  # per guided step: any non-finite score (checked after sampling)
        self.current_step, self.cfg_scale = 0, 1.0
        self.pending_template: dict[int, dict[str, torch.Tensor]] = {}  # step -> template maps computed ahead

    def wrap_denoiser(self, unet: torch.nn.Module) -> Callable:
        """Where the template network is the sampled one (vanilla, TI, BLIP-Diffusion), run the
        template's next CFG forward in the main forward's batch (one 4B forward instead of two 2B)."""
        if unet is not self.inp.template_unet or not self.template_layers or self.stored is not None:
            return unet
        return _SharedTemplateDenoiser(self, unet)

    def _advance_template(self, pred: torch.Tensor, t: torch.Tensor) -> None:
        """One vanilla sampler step from the template's [uncond | cond] prediction (CFG as the loop: on above 1)."""
        u, c = pred.chunk(2)
        eps = u + self.cfg_scale * (c - u) if self.cfg_scale > 1.0 else c
        z = self.template_latents
        self.template_latents = self.template_scheduler.step(eps, t, z, **self.template_step_kwargs, return_dict=False)[0]

    def step_size(self, i: int) -> float:
        first, last = self.cfg.step_size
        n = len(self.guided)
        return first if n == 1 else first + (last - first) * (i - self.guided.start) / (n - 1)

    @torch.no_grad()
    def _template(self, step: int, t: torch.Tensor) -> dict[str, torch.Tensor]:
        """Template maps at this step: recorded before (`inputs.template`), or computed ahead when shared, or
        computed here, advancing the vanilla trajectory."""
        if self.stored is not None:
            if step not in self.guided:
                return {}
            device = self.inp.initial_latents.device
            return {name: torch.stack([image[step][name] for image in self.stored]).to(device) for name in self.template_layers}
        if step in self.pending_template:
            return self.pending_template.pop(step)
        inp, z = self.inp, self.template_latents
        tc = inp.template_cond
        x = self.template_scheduler.scale_model_input(torch.cat([z, z]), t)
        with capture_cross_attention(inp.template_unet, self.template_layers) as cap:
            pred = inp.template_unet(x, t, encoder_hidden_states=torch.cat([tc.uncond, tc.cond])).sample
        self._advance_template(pred, t)
        n = len(z)
        return {name: maps_2d(m[n:], tc.subject_positions) for name, m in cap.maps.items()}

    def prepare(self, step: int, t: torch.Tensor, template: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Each term's no-grad state for this guided step (the palette's features, the template's maps)."""
        return {term.name: term.prepare(step, t, template) for term in self.terms}

    def __call__(self, step: int, t: torch.Tensor, latents: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        self.current_step, self.cfg_scale = step, ctx.cfg_scale
        if step >= self.guided.stop:
            return latents
        # the template follows the vanilla trajectory from the first step, also before a later guided range
        template = self._template(step, t) if self.template_layers else {}
        if step not in self.guided or _discards_sample(ctx.scheduler):
            return latents
        states = self.prepare(step, t, template)
        eta = self.step_size(step)
        # descend in z_t, the space the UNet is fed: the scheduler's latents times its input scale
        # (1, except Euler's sigma-space latents x = z_t / sqrt(alpha_bar)), so eta means the same on
        # every sampler; the update is mapped back by the same factor
        scale = _input_scale(ctx.scheduler, t, latents)
        z0 = (latents.float() * scale) if scale is not None else latents.float()
        delta = torch.zeros_like(z0)
        for _ in range(self.cfg.iterations):
            with torch.enable_grad():
                z = (z0 + delta).requires_grad_(True)
                score, _ = self.score(z, t, states, latents.dtype)
                (grad,) = torch.autograd.grad(score.sum(), z)
            finite = torch.isfinite(score) & torch.isfinite(grad).flatten(1).all(1)
            self.bad_steps.append((~finite).any().view(1))
            delta = torch.where(finite[:, None, None, None], delta - eta * grad, delta)
        return (latents.float() + (delta / scale if scale is not None else delta)).to(latents.dtype)

    def score(self, z: torch.Tensor, t: torch.Tensor, states: dict[str, Any], dtype: torch.dtype):
        """(S, {term: loss}) per image for latents z (differentiable in z): one forward capturing every term's
        layers (and the features one of them reads), then the weighted sum in registration order; fp32."""
        inp = self.inp
        layers = list(dict.fromkeys(n for term in self.terms for n in term.layers))
        readers = [term for term in self.terms if term.feature is not None]
        with capture_cross_attention(inp.unet, layers, keep_grad=True, feature=readers[0].feature if readers else None,
                                     feature_layers=[n for term in readers for n in term.layers]) as cap:
            inp.unet(z.to(dtype), t, encoder_hidden_states=inp.cond.cond)
        score = torch.zeros(len(z), device=z.device)
        losses = {}
        for term in self.terms:
            losses[term.name] = loss = term.loss(cap, states[term.name])
            score = score + term.cfg.weight * loss
        return score, losses

    def finish(self) -> None:
        """Raise (one line, with the steps) if a guided step's score or gradient was not finite."""
        if not self.bad_steps:
            return
        flags = torch.cat(self.bad_steps).cpu().tolist()
        iters = self.cfg.iterations
        bad = sorted({self.guided.start + k // iters for k, f in enumerate(flags) if f})
        if bad:
            raise UserError(f"Pick-and-Draw produced NaN/inf at guided step(s) {bad}; lower guidance.step_size or the "
                            "loss weights (no image was written)")


class TemplateRecorder:
    """A hook for a pass that is the vanilla template itself (the base model, its text encoder, the class-noun
    prompts, the same noise): records the template maps Pick-and-Draw's terms read at the guided steps, per
    image, without changing a bit of the pass (`capture_cross_attention(observe=True)`), so every method's
    guided run reuses them instead of running the template again."""

    def __init__(self, layers: list[str], columns: list[list[int]], fractions: list[float]) -> None:
        self.layers, self.columns, self.fractions = layers, columns, fractions
        self.current_step, self.guided = 0, range(0)
        self.maps: list[dict[int, dict[str, torch.Tensor]]] = [{} for _ in columns]

    def __call__(self, step: int, t: torch.Tensor, latents: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        if step == 0:
            self.guided = guided_steps(self.fractions, len(ctx.scheduler.timesteps))
        self.current_step = step
        return latents

    def wrap_denoiser(self, unet: torch.nn.Module) -> Callable:
        def observed(sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor):
            if self.current_step not in self.guided:
                return unet(sample, timestep, encoder_hidden_states=encoder_hidden_states)
            with capture_cross_attention(unet, self.layers, observe=True) as cap:
                out = unet(sample, timestep, encoder_hidden_states=encoder_hidden_states)
            n = len(self.columns)  # CFG rows are [uncond | cond]: the template reads the cond rows
            for name, m in cap.maps.items():
                maps = maps_2d(m[len(m) - n:], self.columns).float().cpu()
                for b in range(n):
                    self.maps[b].setdefault(self.current_step, {})[name] = maps[b]
            return out

        return observed

    @property
    def steps_needed(self) -> int:
        """Loop iterations a pass must run to record every guided step (`denoise(until=...)`)."""
        return self.guided.stop

    def finish(self) -> None:
        return None


def template_bytes(maps: dict[int, dict[str, torch.Tensor]]) -> int:
    """Bytes one image's recorded template holds."""
    return sum(m.numel() * m.element_size() for step in maps.values() for m in step.values())


def _discards_sample(scheduler) -> bool:
    """Whether the scheduler's next step ignores the sample it is given, so an edit of z_t there would be
    lost (only the model output would carry it): then the iteration is not guided. PNDM (diffusers'
    `PNDMScheduler`) is the one such scheduler: its Runge-Kutta warm-up steps every sub-step from the
    sample kept at the step's first call (counter % 4 != 0), and with `skip_prk_steps` its second PLMS
    iteration (counter 1, the repeated first timestep) steps from the first one's sample."""
    counter, prk = getattr(scheduler, "counter", None), getattr(scheduler, "prk_timesteps", None)
    if counter is None or prk is None:
        return False
    if counter < len(prk) and not scheduler.config.skip_prk_steps:
        return counter % 4 != 0
    return counter == 1 and len(getattr(scheduler, "ets", [])) == 1


def guided_steps(fractions: list[float], loop_steps: int) -> range:
    """Loop iterations in the guided fraction; counted over the scheduler's timesteps, which PNDM
    makes longer than `sampler.steps` (its Runge-Kutta warm-up revisits timesteps)."""
    start, end = int(fractions[0] * loop_steps), math.ceil(fractions[1] * loop_steps)
    return range(start, max(start + 1, end))


def _input_scale(scheduler, t: torch.Tensor, latents: torch.Tensor) -> torch.Tensor | None:
    """The factor `scale_model_input` applies at t, or None where it is the identity."""
    one = torch.ones(1, device=latents.device, dtype=torch.float32)
    scale = scheduler.scale_model_input(one, t)
    return None if scale is one else scale.float()  # schedulers without input scaling return the input itself


class _SharedTemplateDenoiser:
    """The sampled UNet, plus the template's forward for the next guided step in the same batch.

    Rows: [main CFG rows | template uncond | template cond], each with its own timestep; the template
    maps of the next step are kept by the hook and its trajectory advanced, the main rows returned.
    """

    def __init__(self, guide: PickAndDraw, unet: torch.nn.Module) -> None:
        self.guide, self.unet = guide, unet

    def __call__(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor):
        g = self.guide
        nxt = g.current_step + 1
        if nxt >= g.guided.stop:  # wrap_denoiser only wraps when a term reads the template
            return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states)
        tc, z, n = g.inp.template_cond, g.template_latents, len(sample)
        t_next = g.template_scheduler.timesteps[nxt]
        x = torch.cat([sample, g.template_scheduler.scale_model_input(torch.cat([z, z]), t_next)])
        ts = torch.cat([torch.as_tensor(timestep, device=sample.device).expand(n), t_next.expand(2 * len(z))])
        with capture_cross_attention(self.unet, g.template_layers) as cap:
            pred = self.unet(x, ts, encoder_hidden_states=torch.cat([encoder_hidden_states, tc.uncond, tc.cond])).sample
        g.pending_template[nxt] = {name: maps_2d(m[n + len(z):], tc.subject_positions) for name, m in cap.maps.items()}
        g._advance_template(pred[n:], t_next)
        return types.SimpleNamespace(sample=pred[:n])


guidances.register("pick-and-draw", "Pick-and-Draw: appearance picking (UREMD) + layout drawing (template maps)")(PickAndDraw)
