"""Stages `clip`, `dino`, `oracle`: the toy world's evaluators, saved in their libraries' formats.

- clip: an open_clip model from a custom JSON config (ViT image tower, CLIP BPE text tower), trained
  contrastively on rendered image-caption pairs; loads with
  `open_clip.create_model_and_transforms("local-dir:<folder>")`.
- dino: a timm ViT trained instance-discriminatively: two renders of one instance (other pose,
  other context) are positives, every other image in the batch a negative (NT-Xent). That is the
  invariance DreamBench's DINO score relies on. Loads with `timm.create_model("local-dir:<folder>")`.
- oracle: a timm ResNet classifier with one head per ground-truth attribute (class, colours, pattern,
  context, accessory), reading them off any image.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..captions import caption
from ..render import render
from ..world import ACCESSORIES, CLASSES, COLOURS, CONTEXTS, PATTERNS, Scene, sample_scene
from .common import TRAIN_SEED_BASE, batch_indices, rendered_set, to_tensor
from .loop import LoopConfig, Stage, train

IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)

ORACLE_HEADS: dict[str, list[str]] = {
    "class": list(CLASSES),
    "primary": list(COLOURS),
    "secondary": list(COLOURS),
    "pattern": list(PATTERNS),
    "context": list(CONTEXTS),
    "accessory": list(ACCESSORIES),
}


def oracle_labels(scene: Scene) -> dict[str, int]:
    ident = scene.identity
    values = {"class": ident.cls, "primary": scene.shown_primary, "secondary": ident.secondary, "pattern": ident.pattern,
              "context": scene.context, "accessory": scene.accessory}
    return {k: ORACLE_HEADS[k].index(v) for k, v in values.items()}


def full_caption(scene: Scene) -> str:
    """The caption with every attribute, what CLIP retrieval is evaluated on."""
    ident = scene.identity
    pattern = "" if ident.pattern == "plain" else ident.pattern + " "
    text = f"a {scene.shown_primary} {pattern}{ident.cls}"
    if CONTEXTS[scene.context]:
        text += " " + CONTEXTS[scene.context]
    if scene.accessory != "none":
        text += " " + ACCESSORIES[scene.accessory]
    return text


@dataclasses.dataclass
class EvaluatorConfig(LoopConfig):
    steps: int = 3000
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.05
    n_images: int = 20000
    checkpoint_every: int = 250
    seed: int = 0  # model init; the data order uses seed + 1 (clip), + 2 (dino), + 3 (oracle), + 4 (blip)


def clip_model_cfg(tiny: bool = False) -> dict:
    width = 64 if tiny else 128
    return {
        "embed_dim": 64 if tiny else 128,
        "vision_cfg": {"image_size": 64, "layers": 2 if tiny else 4, "width": width, "head_width": 32, "patch_size": 8},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": width, "heads": 4, "layers": 2 if tiny else 3},
    }


def vit_args(tiny: bool = False) -> dict:
    return {"img_size": 64, "patch_size": 8, "embed_dim": 64 if tiny else 128, "depth": 2 if tiny else 4, "num_heads": 4}


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random flips and small shifts (the metrics see generated images, never exact renders)."""
    flip = torch.rand(len(x), generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    dx, dy = (int(v) for v in torch.randint(-4, 5, (2,), generator=gen))
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def _train_loop(stage: str, work: Path, cfg: EvaluatorConfig, modules: dict[str, torch.nn.Module], n_items: int,
                seed: int, loss_fn: Callable[[int, np.ndarray], torch.Tensor]) -> None:
    """The evaluator stages' (and blip's) use of the loop: batches of `n_items` drawn from (seed, step)."""
    train(Stage(stage, cfg, modules, lambda step: batch_indices(n_items, cfg.batch_size, seed, step), loss_fn), work)


def train_clip(out: Path, work: Path, cfg: EvaluatorConfig) -> Path:
    import open_clip

    torch.manual_seed(cfg.seed)
    scenes, images, _ = rendered_set(cfg.n_images, TRAIN_SEED_BASE, work / "cache")
    model_cfg = clip_model_cfg(cfg.tiny)
    model = open_clip.CLIP(**model_cfg)
    tokenizer = open_clip.SimpleTokenizer(context_length=model_cfg["text_cfg"]["context_length"])

    def loss_fn(step: int, idx: np.ndarray) -> torch.Tensor:
        rng = random.Random(step)
        texts = [full_caption(scenes[i]) if rng.random() < 0.6 else caption(scenes[i], rng, 0.0) for i in idx]
        x = _augment(to_tensor(images[idx]), torch.Generator().manual_seed(step))
        img, txt, scale = model(x, tokenizer(texts))
        logits = scale * img @ txt.T
        labels = torch.arange(len(idx))
        same = torch.tensor([[a == b for b in texts] for a in texts])  # duplicate captions are not negatives
        logits = logits.masked_fill(same & ~torch.eye(len(idx), dtype=torch.bool), -1e4)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2

    _train_loop("clip", work, cfg, {"model": model}, len(scenes), cfg.seed + 1, loss_fn)
    target = out / "clip"
    target.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, target / "open_clip_model.safetensors")
    preprocess = {"mean": list(IMAGE_MEAN), "std": list(IMAGE_STD), "interpolation": "bicubic", "resize_mode": "shortest"}
    (target / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess}, indent=2))
    return target


class _PairSet:
    """Two renders of each of n instances: other pose, other context (the positives)."""

    def __init__(self, n: int, base: int, cache: Path) -> None:
        path = cache / f"pairs-{base}-{n}.npz"
        if path.exists():
            data = np.load(path)
            self.a, self.b = data["a"], data["b"]
            return
        a = np.empty((n, 64, 64, 3), np.uint8)
        b = np.empty_like(a)
        for i in range(n):
            rng = random.Random(base + i)
            first = sample_scene(rng, seed=base + i)
            second = sample_scene(rng, identity=first.identity)
            a[i], b[i] = render(first).image, render(second).image
        cache.mkdir(parents=True, exist_ok=True)
        np.savez(path, a=a, b=b)
        self.a, self.b = a, b


def train_dino(out: Path, work: Path, cfg: EvaluatorConfig) -> Path:
    import timm

    torch.manual_seed(cfg.seed)
    pairs = _PairSet(cfg.n_images // 2, TRAIN_SEED_BASE + 500_000, work / "cache")
    args = vit_args(cfg.tiny)
    model = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0, **args)
    head = torch.nn.Sequential(torch.nn.Linear(args["embed_dim"], 256), torch.nn.GELU(), torch.nn.Linear(256, 128))

    def loss_fn(step: int, idx: np.ndarray) -> torch.Tensor:
        gen = torch.Generator().manual_seed(step)
        x = torch.cat([_augment(to_tensor(pairs.a[idx]), gen), _augment(to_tensor(pairs.b[idx]), gen)])
        z = F.normalize(head(model(x)), dim=-1)
        sim = (z @ z.T / 0.1).masked_fill(torch.eye(len(z), dtype=torch.bool), -1e4)
        n = len(idx)
        return F.cross_entropy(sim, torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]))

    _train_loop("dino", work, cfg, {"model": model, "head": head}, len(pairs.a), cfg.seed + 2, loss_fn)
    return _save_timm(model, out / "dino", args, num_classes=0)


def _save_timm(model: torch.nn.Module, target: Path, args: dict, num_classes: int, extra: dict | None = None) -> Path:
    from timm.models import save_for_hf

    model.pretrained_cfg = dict(model.pretrained_cfg, mean=IMAGE_MEAN, std=IMAGE_STD, input_size=(3, 64, 64),
                                crop_pct=1.0, interpolation="bicubic", num_classes=num_classes)
    target.mkdir(parents=True, exist_ok=True)
    save_for_hf(model, str(target), model_args=args, safe_serialization=True, model_config=extra)
    return target


def train_oracle(out: Path, work: Path, cfg: EvaluatorConfig) -> Path:
    import timm

    torch.manual_seed(cfg.seed)
    scenes, images, _ = rendered_set(cfg.n_images, TRAIN_SEED_BASE, work / "cache")
    labels = {k: torch.tensor([oracle_labels(s)[k] for s in scenes]) for k in ORACLE_HEADS}
    sizes = [len(v) for v in ORACLE_HEADS.values()]
    # a CNN: a from-scratch ViT of this size read colours but only 65% of classes after 1,500 steps
    arch, args = ("resnet10t", {}) if not cfg.tiny else ("resnet10t", {"channels": (8, 16, 16, 16)})
    model = timm.create_model(arch, pretrained=False, num_classes=sum(sizes), **args)

    def loss_fn(step: int, idx: np.ndarray) -> torch.Tensor:
        logits = model(_augment(to_tensor(images[idx]), torch.Generator().manual_seed(step))).split(sizes, dim=1)
        t = torch.as_tensor(idx)
        return sum(F.cross_entropy(lg, labels[k][t]) for lg, k in zip(logits, ORACLE_HEADS))

    _train_loop("oracle", work, cfg, {"model": model}, len(scenes), cfg.seed + 3, loss_fn)
    return _save_timm(model, out / "oracle", args, num_classes=sum(sizes), extra={"heads": ORACLE_HEADS})  # arch from the model
