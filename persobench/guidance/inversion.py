"""Reference inversion, so reference features exist at every denoising step (Pick-and-Draw).

- `ddim`: DDIM inversion (Song et al. 2021; Dhariwal & Nichol 2021) of the VAE-encoded reference with
  the prompt "a photo of a {class}", conditional prediction only. The palette is this trajectory.
- `null_text`: null-text inversion (Mokady et al., CVPR 2023): starting from the DDIM-inverted z_T,
  optimise the unconditional embedding at each step k (Adam at lr * (1 - k/100), `iterations` inner
  steps, early stop at loss < 1e-5 + k * 2e-5, as the reference notebook) so that CFG steps retrace the
  DDIM inversion trajectory. The palette is the trajectory that first-order DDIM CFG steps with the
  optimised null embeddings follow at the sampler's own noise levels (z_T, then each step's result):
  what a CFG sampler that reconstructs the reference passes through. The palette pass reads the
  conditional branch only (a UNet forward treats batch rows independently, so a null embedding cannot
  change the conditional row's features), hence the null embeddings reach guidance through these
  latents: they differ from the plain DDIM palette by the CFG drift the optimisation corrects, i.e.
  null_text's palette is the one consistent with sampling at `sampler.cfg_scale`, ddim's the one
  consistent with CFG 1.

Every sampler persobench offers is served by the same inversion, run at that sampler's own noise
levels: alpha_bar at sampler step i is `alphas_cumprod[t_i]` (DDIM, DDPM, PNDM) or 1 / (1 + sigma_i^2)
from the scheduler's `sigmas` (Euler, Euler ancestral, DPM-Solver++: their timesteps can be floats and
their sigmas interpolated), and the clean end is the sampler's own end point (DDIM/PNDM's
`final_alpha_cumprod`, else alpha_bar = 1, sigma = 0). The trajectory has one entry per entry of
`scheduler.timesteps` (PNDM repeats timesteps, so its list is longer than `steps`), and each entry is
z_t in the space the UNet is fed, i.e. after `scale_model_input` (for Euler, whose latents live in
sigma space x = z_t / sqrt(alpha_bar), that is z_t itself). Inversion and the null-text optimisation
use the first-order DDIM update between these noise levels as a pure function, never the scheduler's
`step`: DPM-Solver++, PNDM and Euler keep per-run state (multistep history, step index) that repeated
calls inside an optimisation would corrupt, and ancestral samplers add noise.
`reconstruct` samples with the real scheduler (its own step, state and input scaling).

Reference code: null-text inversion's `next_step` / `ddim_loop`
(github.com/google/prompt-to-prompt, null_text_w_ptp.ipynb) starts from `final_alpha_cumprod` at
the clean end as done here; diffusers' `EulerDiscreteScheduler.scale_model_input` divides by
sqrt(sigma^2 + 1).
"""

from __future__ import annotations

import dataclasses

import torch

from ..core.sampling import Conditioning


@dataclasses.dataclass
class Inversion:
    trajectory: list[torch.Tensor]  # z fed to the UNet at sampler step i (timestep t_i), one per scheduler timestep
    reconstruction: torch.Tensor | None  # z_0 re-generated from z_T with the sampler (and null embeddings), when asked
    timesteps: torch.Tensor  # the sampler's timesteps the trajectory is indexed by
    null_embeddings: list[torch.Tensor] | None = None  # per sampler step


@dataclasses.dataclass
class Levels:
    """The distinct noise levels a sampler visits, highest first, and which one each step is at."""

    timesteps: list[torch.Tensor]  # model timestep per level
    alphas: list[torch.Tensor]  # alpha_bar per level (float64 scalars)
    final_alpha: torch.Tensor  # alpha_bar at the clean end
    level_of_step: list[int]  # sampler step i -> level index


def step_alphas(scheduler) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha_bar at each sampler step, alpha_bar at the clean end), after `set_timesteps`.

    Schedulers with a `sigmas` table (Euler, Euler ancestral, DPM-Solver++) define their noise levels
    by it, one sigma per timestep plus the final one, sigma^2 = (1 - alpha_bar) / alpha_bar; the
    others index `alphas_cumprod` by the (integer) timestep and end at `final_alpha_cumprod` when they
    have one (DDIM, PNDM), else at alpha_bar = 1 (DDPM's `self.one`).
    """
    ts = scheduler.timesteps
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None and len(sigmas) == len(ts) + 1:
        alphas = 1.0 / (1.0 + sigmas.double().cpu() ** 2)
        return alphas[:-1], alphas[-1]
    table = scheduler.alphas_cumprod.double().cpu()
    final = getattr(scheduler, "final_alpha_cumprod", None)
    final = torch.tensor(1.0, dtype=torch.float64) if final is None else torch.as_tensor(final).double().cpu()
    return table[ts.cpu().long()], final


def noise_levels(scheduler) -> Levels:
    alphas, final = step_alphas(scheduler)
    levels, level_of_step, seen = Levels([], [], final, []), [], {}
    for t, a in zip(scheduler.timesteps, alphas):
        key = float(t)
        if key not in seen:
            seen[key] = len(levels.timesteps)
            levels.timesteps.append(t)
            levels.alphas.append(a)
        level_of_step.append(seen[key])
    levels.level_of_step = level_of_step
    return levels


def _eps_x0(kind: str, pred: torch.Tensor, z: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(epsilon, x0) from the model output in its own parameterisation, z = sqrt(a) x0 + sqrt(1-a) eps."""
    a = a.to(z.dtype)
    if kind == "epsilon":
        eps = pred
        x0 = (z - (1 - a).sqrt() * eps) / a.sqrt()
    elif kind == "v_prediction":
        x0 = a.sqrt() * z - (1 - a).sqrt() * pred
        eps = a.sqrt() * pred + (1 - a).sqrt() * z
    else:
        x0 = pred
        eps = (z - a.sqrt() * x0) / (1 - a).sqrt().clamp_min(1e-6)
    return eps, x0


def ddim_move(kind: str, pred: torch.Tensor, z: torch.Tensor, a_from: torch.Tensor, a_to: torch.Tensor) -> torch.Tensor:
    """The deterministic DDIM update of z from noise level a_from to a_to (either direction)."""
    eps, x0 = _eps_x0(kind, pred, z, a_from)
    a_to = a_to.to(z.dtype)
    return a_to.sqrt() * x0 + (1 - a_to).sqrt() * eps


@torch.no_grad()
def ddim_invert_levels(unet, kind: str, levels: Levels, z0: torch.Tensor, cond: torch.Tensor) -> list[torch.Tensor]:
    """z at each level, highest noise first, from the clean latent upwards."""
    z, states = z0, []
    t_prev, a_prev = torch.zeros_like(levels.timesteps[-1]), levels.final_alpha
    for t, a in zip(reversed(levels.timesteps), reversed(levels.alphas)):
        pred = unet(z, t_prev, encoder_hidden_states=cond).sample
        z = ddim_move(kind, pred, z, a_prev, a)
        states.append(z)
        t_prev, a_prev = t, a
    return states[::-1]


def _cfg(unet, z, t, cond, uncond, cfg_scale):
    if cfg_scale <= 1.0:  # as the sampling loop: no CFG, conditional prediction only
        return unet(z, t, encoder_hidden_states=cond).sample
    pred = unet(torch.cat([z, z]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample
    u, c = pred.chunk(2)
    return u + cfg_scale * (c - u)


def _input_scale(scheduler, t, like: torch.Tensor) -> torch.Tensor:
    """The factor `scale_model_input` applies at t (1 except Euler's 1/sqrt(sigma^2+1))."""
    return scheduler.scale_model_input(torch.ones(1, device=like.device, dtype=torch.float32), t).to(like.dtype)


@torch.no_grad()
def reconstruct(unet, scheduler, z_T: torch.Tensor, cond: Conditioning, cfg_scale: float, steps: int,
                nulls: list[torch.Tensor] | None = None, model_inputs: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Sample from the inverted z_T with the real scheduler; z_T is a UNet input (model-input space),
    so it is divided by the step-0 input scale to enter the scheduler's latent space. Appends the
    UNet's input at each step to `model_inputs` when given."""
    scheduler.set_timesteps(steps, device=z_T.device)
    x = z_T / _input_scale(scheduler, scheduler.timesteps[0], z_T)
    for i, t in enumerate(scheduler.timesteps):
        model_in = scheduler.scale_model_input(x, t)
        if model_inputs is not None:
            model_inputs.append(model_in)
        pred = _cfg(unet, model_in, t, cond.cond, nulls[i] if nulls else cond.uncond, cfg_scale)
        x = scheduler.step(pred, t, x, return_dict=False)[0]
    return x


def _optimise_null(unet, kind, z, t, a, a_next, cond, null, target, cfg_scale, iterations, lr, k: int = 0) -> torch.Tensor:
    """Step k (0 = the noisiest) of Mokady et al.: the null embedding whose CFG DDIM step from z lands on target.

    The reference `null_optimization` (google/prompt-to-prompt, null_text_w_ptp.ipynb) decays the rate as
    lr * (1 - k / 100) and stops early once the loss is below 1e-5 + k * 2e-5; both are followed here."""
    null = null.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([null], lr=lr * (1.0 - k / 100.0))
    with torch.no_grad():
        c_pred = unet(z, t, encoder_hidden_states=cond).sample
    for _ in range(iterations):
        with torch.enable_grad():
            u_pred = unet(z, t, encoder_hidden_states=null).sample
            step = ddim_move(kind, u_pred + cfg_scale * (c_pred - u_pred), z, a, a_next)
            loss = torch.nn.functional.mse_loss(step, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if loss.detach() < 1e-5 + k * 2e-5:  # the reference's early stop (a host sync, outside the sampling loop)
            break
    return null.detach()


def null_text_levels(unet, kind: str, levels: Levels, states: list[torch.Tensor], z0: torch.Tensor, cond: Conditioning,
                     cfg_scale: float, iterations: int, lr: float) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(the CFG trajectory with optimised nulls, highest noise first; the null per level)."""
    targets = states[1:] + [z0]  # where the step from level k should land
    next_alphas = levels.alphas[1:] + [levels.final_alpha]
    z, null, path, nulls = states[0], cond.uncond, [], []
    for k, t in enumerate(levels.timesteps):
        path.append(z)
        null = _optimise_null(unet, kind, z, t, levels.alphas[k], next_alphas[k], cond.cond, null, targets[k], cfg_scale,
                              iterations, lr, k)
        nulls.append(null)
        with torch.no_grad():
            z = ddim_move(kind, _cfg(unet, z, t, cond.cond, null, cfg_scale), z, levels.alphas[k], next_alphas[k])
    return path, nulls


def invert(unet, scheduler, z0: torch.Tensor, cond: Conditioning, steps: int, cfg_scale: float, kind: str,
           iterations: int = 10, lr: float = 1e-2, with_reconstruction: bool = False) -> Inversion:
    """The palette trajectory. The check-only CFG sampling pass from its z_T (`Inversion.reconstruction`, and
    its global-RNG draws on ancestral samplers) runs only with `with_reconstruction=True`, which the tests
    that measure reconstruction set; the palette never reads it."""
    if kind not in ("ddim", "null_text"):
        raise ValueError(f"unknown inversion kind {kind!r}")
    scheduler.set_timesteps(steps, device=z0.device)
    timesteps = scheduler.timesteps.clone()
    levels = noise_levels(scheduler)
    pred_kind = scheduler.config.prediction_type
    states = ddim_invert_levels(unet, pred_kind, levels, z0, cond.cond)
    nulls = None
    if kind == "null_text":
        states, level_nulls = null_text_levels(unet, pred_kind, levels, states, z0, cond, cfg_scale, iterations, lr)
        nulls = [level_nulls[k] for k in levels.level_of_step]
    trajectory = [states[k] for k in levels.level_of_step]
    rec = reconstruct(unet, scheduler, trajectory[0], cond, cfg_scale, steps, nulls) if with_reconstruction else None
    return Inversion(trajectory, rec, timesteps, nulls)
