"""What every toy-world training stage shares: rendered data sets, batch indices, loss logs.

The loop itself (optimizer, schedule, EMA, resumable checkpoints) is `loop.py`.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from ..render import render
from ..world import Scene, sample_scene

TRAIN_SEED_BASE = 1_000_000  # training scenes: seeds from here on
EVAL_SEED_BASE = 9_000_000  # held-out scenes for `toyworld eval`


def scenes(n: int, base: int) -> list[Scene]:
    """n scenes, scene i drawn from its own RNG seeded base + i (independent of n)."""
    return [sample_scene(random.Random(base + i), seed=base + i) for i in range(n)]


def rendered_set(n: int, base: int, cache: Path | None = None, size: int = 64) -> tuple[list[Scene], np.ndarray, np.ndarray]:
    """(scenes, uint8 images NxHxWx3, bool masks NxHxW), cached as .npz when `cache` is given."""
    items = scenes(n, base)
    path = cache / f"render-{base}-{n}-{size}.npz" if cache else None
    if path and path.exists():
        data = np.load(path)
        return items, data["images"], data["masks"]
    images = np.empty((n, size, size, 3), np.uint8)
    masks = np.empty((n, size, size), bool)
    for i, scene in enumerate(items):
        r = render(scene, size)
        images[i], masks[i] = r.image, r.mask
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, images=images, masks=masks)
        os.replace(tmp, path)
    return items, images, masks


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [-1, 1] (the diffusers VAE convention)."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def atomic_torch_save(obj: object, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class LossLog:
    """Appends one JSON line per logged step to `<work>/<stage>.loss.jsonl`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, **fields: float) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(fields) + "\n")


def batch_indices(n_items: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Step `step`'s batch: indices drawn from (seed, step) alone, so a resumed run sees the same data."""
    return np.random.default_rng([seed, step]).integers(0, n_items, batch_size)


def progress(stage: str, step: int, total: int, loss: float, started: float, first_step: int) -> None:
    rate = (step + 1 - first_step) / max(1e-9, time.time() - started)
    eta = (total - step - 1) / max(rate, 1e-9)
    print(f"[{stage}] step {step + 1}/{total} loss {loss:.4f} {rate:.2f} it/s eta {eta / 60:.1f} min", flush=True)
