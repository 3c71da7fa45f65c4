"""Embedding backbones for DreamBench's metrics, by name, with their preprocessing.

As in open_clip / timm, preprocessing travels with the model: each backbone builds its own
transform from the checkpoint's config. Real backbones load from local caches only (no download);
the embedded toy-world ones load from the package's assets through the same library calls.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from ...errors import UserError
from ...harness.models import ASSETS
from ...registry import Registry


@dataclasses.dataclass
class Backbone:
    """Normalised image (and, for CLIP, text) embeddings; `describe` is written next to every score."""

    name: str
    model: torch.nn.Module
    transform: Callable[[Image.Image], torch.Tensor]
    describe: dict
    tokenizer: Callable | None = None
    image_fn: str = "forward"

    @torch.no_grad()
    def embed_images(self, images: list[Image.Image], device: torch.device, batch_size: int = 64) -> torch.Tensor:
        out = []
        for i in range(0, len(images), batch_size):
            x = torch.stack([self.transform(im) for im in images[i : i + batch_size]]).to(device)
            out.append(F.normalize(getattr(self.model, self.image_fn)(x).float(), dim=-1))
        return torch.cat(out) if out else torch.empty(0)

    @torch.no_grad()
    def embed_texts(self, texts: list[str], device: torch.device) -> torch.Tensor:
        if self.tokenizer is None:
            raise UserError(f"backbone {self.name!r} has no text tower; CLIP-T needs a CLIP backbone")
        return F.normalize(self.model.encode_text(self.tokenizer(texts).to(device)).float(), dim=-1)


backbones: Registry[Callable[[], Backbone]] = Registry("backbone")


def _open_clip(name: str, model_name: str, pretrained: str | None) -> Backbone:
    import open_clip

    try:
        model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained, cache_dir=None)
    except Exception as e:  # open_clip raises many kinds for a missing local file
        raise UserError(f"CLIP backbone {name!r} could not be loaded offline ({type(e).__name__}); put its weights in the "
                        "local Hugging Face cache or choose metrics.clip_backbone=toy-clip") from None
    tokenizer = open_clip.get_tokenizer(model_name)
    return Backbone(name, model.eval(), preprocess, {"library": "open_clip", "model": model_name, "pretrained": pretrained,
                                                      "preprocess": str(preprocess).replace("\n", " ")}, tokenizer, "encode_image")


def _timm(name: str, model_name: str) -> Backbone:
    import timm

    try:
        model = timm.create_model(model_name, pretrained=True, num_classes=0)
    except Exception as e:
        raise UserError(f"DINO backbone {name!r} could not be loaded offline ({type(e).__name__}); put its weights in the "
                        "local Hugging Face cache or choose metrics.dino_backbone=toy-dino") from None
    config = timm.data.resolve_data_config({}, model=model)
    transform = timm.data.create_transform(**config)
    return Backbone(name, model.eval(), transform, {"library": "timm", "model": model_name, "data_config": str(config)})


@backbones.register("toy-clip", "the toy world's open_clip model (embedded)")
def _toy_clip() -> Backbone:
    return _open_clip("toy-clip", f"local-dir:{ASSETS / 'clip'}", None)


@backbones.register("toy-dino", "the toy world's timm ViT (embedded)")
def _toy_dino() -> Backbone:
    return _timm("toy-dino", f"local-dir:{ASSETS / 'dino'}")


@backbones.register("clip-vit-b32", "open_clip ViT-B-32 / openai (DreamBench's CLIP-I and CLIP-T)")
def _clip_b32() -> Backbone:
    return _open_clip("clip-vit-b32", "ViT-B-32", "openai")


@backbones.register("dino-vits16", "timm vit_small_patch16_224.dino (DreamBench's DINO)")
def _dino_s16() -> Backbone:
    return _timm("dino-vits16", "vit_small_patch16_224.dino")


def folder_backbone(kind: str, path: Path) -> Backbone:
    """A backbone from a local folder: 'clip' (open_clip local-dir) or 'dino' (timm local-dir)."""
    if not path.is_dir():
        raise UserError(f"backbone folder '{path}' does not exist")
    return _open_clip(str(path), f"local-dir:{path}", None) if kind == "clip" else _timm(str(path), f"local-dir:{path}")


@functools.lru_cache(maxsize=4)
def get_backbone(name: str) -> Backbone:
    """A registered name, or 'clip:/folder' / 'dino:/folder' for a local checkpoint."""
    for kind in ("clip", "dino"):
        if name.startswith(f"{kind}:"):
            return folder_backbone(kind, Path(name[len(kind) + 1 :]))
    return backbones.get(name)()
