"""Batched metric scoring vs a naive per-image loop on the same backbone (goal: >= 2x images/s).

The naive loop embeds each generated image and each of its subject's references one at a time (what
peer scripts do); the harness batches images and caches reference embeddings per subject.

    OMP_NUM_THREADS=1 python benchmarks/metrics_throughput.py [--backbone toy-dino] [--images 256]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from persobench.core.config import DatasetConfig
from persobench.datasets import datasets
from persobench.reports.metrics.backbones import get_backbone
from persobench.toyworld.training.common import EVAL_SEED_BASE, rendered_set


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--backbone", default="toy-dino")
    p.add_argument("--images", type=int, default=256)
    a = p.parse_args()
    bb = get_backbone(a.backbone)
    subjects = datasets.get("toybench")(DatasetConfig()).subjects[:4]
    refs = {s.name: s.images() for s in subjects}
    _, arr, _ = rendered_set(a.images, EVAL_SEED_BASE + 50_000)
    images = [Image.fromarray(x) for x in arr]
    owners = [subjects[i % len(subjects)].name for i in range(a.images)]
    device = torch.device("cpu")
    embed = getattr(bb.model, bb.image_fn)

    with torch.no_grad():
        t = time.perf_counter()
        naive = []
        for im, owner in zip(images, owners):
            g = F.normalize(embed(bb.transform(im)[None]), dim=-1)
            r = torch.cat([F.normalize(embed(bb.transform(x)[None]), dim=-1) for x in refs[owner]])
            naive.append(float((g @ r.T).mean()))
        t_naive = time.perf_counter() - t

        t = time.perf_counter()
        cache = {name: bb.embed_images(rs, device) for name, rs in refs.items()}
        gen = bb.embed_images(images, device, 64)
        batched = [float((gen[i] @ cache[o].T).mean()) for i, o in enumerate(owners)]
        t_batched = time.perf_counter() - t
    assert np.allclose(naive, batched, atol=1e-4), "batched and naive scores must agree"
    print(f"backbone={a.backbone} images={a.images} refs/subject={len(next(iter(refs.values())))} threads={torch.get_num_threads()}")
    print(f"naive    {a.images / t_naive:.1f} images/s")
    print(f"batched  {a.images / t_batched:.1f} images/s")
    print(f"speed-up {t_naive / t_batched:.1f}x  (goal >= 2x)")


if __name__ == "__main__":
    main()
