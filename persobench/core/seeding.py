"""Per-image seeds: a stable hash of (run seed, subject, prompt, image index).

The initial noise comes from a CPU generator seeded with it, so an image never depends on batch
size, iteration order, device or the number of processes.
"""

from __future__ import annotations

import hashlib

import torch


def image_seed(run_seed: int, subject: str, prompt: str, index: int) -> int:
    text = f"{run_seed}\x1f{subject}\x1f{prompt}\x1f{index}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & ((1 << 63) - 1)


def step_seed(seed: int) -> int:
    """The seed of an image's per-step noise generator (ancestral samplers, DDIM eta > 0), apart from its initial noise."""
    return seed ^ 0x5EED


def initial_noise(seeds: list[int], shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One latent per seed, each drawn alone from its own CPU generator, stacked."""
    out = [torch.randn(shape, generator=torch.Generator("cpu").manual_seed(s), dtype=torch.float32) for s in seeds]
    return torch.stack(out).to(dtype)
