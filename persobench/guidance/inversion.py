"""Reference inversion, so reference features exist at every denoising step (Pick-and-Draw).

- `ddim`: DDIM inversion (Song et al. 2021; Dhariwal & Nichol 2021) of the VAE-encoded reference with
  the prompt "a photo of a {class}", conditional prediction only.
- `null_text`: null-text inversion (Mokady et al., CVPR 2023): starting from the DDIM-inverted z_T,
  optimise the unconditional embedding at each step (Adam, `iterations` inner steps, early stop at
  loss < 1e-5) so that CFG sampling retraces the DDIM inversion trajectory.

Both return the trajectory z_t at each sampling timestep (the latents the palette is read from),
indexed like the sampler's steps, plus the reconstruction from z_T.
"""

from __future__ import annotations

import dataclasses

import torch

from ..harness.sampling import Conditioning


@dataclasses.dataclass
class Inversion:
    trajectory: list[torch.Tensor]  # z at sampler step i (timestep t_i), i = 0 .. steps-1
    reconstruction: torch.Tensor  # z_0 re-generated from z_T with the sampler (and null embeddings)
    null_embeddings: list[torch.Tensor] | None = None


def _alpha(scheduler, t: torch.Tensor | int) -> torch.Tensor:
    t = int(t)
    return scheduler.alphas_cumprod[t] if t >= 0 else scheduler.final_alpha_cumprod


def _eps_x0(scheduler, pred: torch.Tensor, z: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(epsilon, x0) from the model output in its own parameterisation."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        eps = pred
        x0 = (z - (1 - a).sqrt() * eps) / a.sqrt()
    elif kind == "v_prediction":
        x0 = a.sqrt() * z - (1 - a).sqrt() * pred
        eps = a.sqrt() * pred + (1 - a).sqrt() * z
    else:
        x0 = pred
        eps = (z - a.sqrt() * x0) / (1 - a).sqrt()
    return eps, x0


@torch.no_grad()
def ddim_invert(unet, scheduler, z0: torch.Tensor, cond: torch.Tensor, steps: int) -> list[torch.Tensor]:
    """z at each sampler timestep, from the clean latent upwards; returned in sampling order."""
    scheduler.set_timesteps(steps, device=z0.device)
    timesteps = scheduler.timesteps.flip(0)  # ascending
    z, states = z0, []
    prev_t = -1
    for t in timesteps:
        a_prev, a_t = _alpha(scheduler, prev_t), _alpha(scheduler, t)
        pred = unet(z, prev_t if prev_t >= 0 else 0, encoder_hidden_states=cond).sample
        eps, x0 = _eps_x0(scheduler, pred, z, a_prev)
        z = a_t.sqrt() * x0 + (1 - a_t).sqrt() * eps
        states.append(z)
        prev_t = int(t)
    return states[::-1]


def _sample_step(unet, scheduler, z, t, cond, uncond, cfg_scale):
    pred = unet(torch.cat([z, z]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample
    u, c = pred.chunk(2)
    return scheduler.step(u + cfg_scale * (c - u), t, z, return_dict=False)[0]


@torch.no_grad()
def reconstruct(unet, scheduler, z_T: torch.Tensor, cond: Conditioning, cfg_scale: float, steps: int,
                nulls: list[torch.Tensor] | None = None) -> torch.Tensor:
    scheduler.set_timesteps(steps, device=z_T.device)
    z = z_T
    for i, t in enumerate(scheduler.timesteps):
        z = _sample_step(unet, scheduler, z, t, cond.cond, nulls[i] if nulls else cond.uncond, cfg_scale)
    return z


def invert(unet, scheduler, z0: torch.Tensor, cond: Conditioning, steps: int, cfg_scale: float, kind: str,
           iterations: int = 10, lr: float = 1e-2) -> Inversion:
    trajectory = ddim_invert(unet, scheduler, z0, cond.cond, steps)
    if kind == "ddim":
        return Inversion(trajectory, reconstruct(unet, scheduler, trajectory[0], cond, cfg_scale, steps))
    if kind != "null_text":
        raise ValueError(f"unknown inversion kind {kind!r}")
    scheduler.set_timesteps(steps, device=z0.device)
    targets = trajectory[1:] + [z0]  # where step i should land
    z, null, nulls = trajectory[0], cond.uncond.detach().clone(), []
    for i, t in enumerate(scheduler.timesteps):
        null = null.detach().requires_grad_(True)
        opt = torch.optim.Adam([null], lr=lr)
        with torch.no_grad():
            c_pred = unet(z, t, encoder_hidden_states=cond.cond).sample
        for _ in range(iterations):
            with torch.enable_grad():
                u_pred = unet(z, t, encoder_hidden_states=null).sample
                guided = u_pred + cfg_scale * (c_pred - u_pred)
                step = scheduler.step(guided, t, z, return_dict=False)[0]
                loss = torch.nn.functional.mse_loss(step, targets[i])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if loss.detach() < 1e-5:  # the early stop of the paper (a host sync, outside the sampling loop)
                break
        null = null.detach()
        nulls.append(null)
        with torch.no_grad():
            z = _sample_step(unet, scheduler, z, t, cond.cond, null, cfg_scale)
    return Inversion(trajectory, z, nulls)
