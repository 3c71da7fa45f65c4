"""Sampling schedulers by name: diffusers classes built from the base model's scheduler config."""

from __future__ import annotations

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
)

from .registry import Registry

schedulers: Registry[type] = Registry("scheduler")
schedulers.register("ddim", "DDIM (Song et al. 2021); the default, deterministic at eta=0")(DDIMScheduler)
schedulers.register("ddpm", "DDPM ancestral sampling")(DDPMScheduler)
schedulers.register("pndm", "PNDM/PLMS, SD 1.x's shipped default")(PNDMScheduler)
schedulers.register("dpm++", "DPM-Solver++ multistep")(DPMSolverMultistepScheduler)
schedulers.register("euler", "Euler (Karras et al. 2022)")(EulerDiscreteScheduler)
schedulers.register("euler-a", "Euler ancestral")(EulerAncestralDiscreteScheduler)


def build_scheduler(name: str, base_config: dict):
    """A fresh scheduler of kind `name` from the model's training-noise config."""
    return schedulers.get(name).from_config(base_config)
