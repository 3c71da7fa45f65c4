"""Per-image scores: DreamBench's DINO / CLIP-I / CLIP-T, and the toy world's oracle accuracies.

DreamBench protocol: DINO and CLIP-I are the mean cosine similarity between a generated image and
every real image of its subject (`metrics.pairing=all-pairs`, `metrics.reference_set=all`); CLIP-T is
the cosine between the image and the prompt text with the class noun in place of the identifier
(`metrics.clip_t_text=class`), reported raw by default (`metrics.clip_t_scale`: raw | x100 | w2.5 =
2.5 * max(cos, 0)). DreamBench++ instead pairs each image with the one reference it was given
(`pairing=one-to-one`) and reports 100 x cosine (`image_scale=x100`); `metrics.preset` sets them all.
Generated and reference images go through the same loader (`core/images.py::load_image`).
Reference embeddings are cached per (backbone weights fingerprint and preprocessing, subject,
reference set) in the run folder.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from ...core.atomic import atomic_path
from ...core.components import resolve_device
from ...core.config import MetricsConfig, stable_hash
from ...core.errors import UserError
from ...core.images import load_image
from ...datasets import Subject
from .backbones import Backbone, get_backbone
from .spec import Column, MetricSpec, metrics, register_metric

__all__ = ["Column", "MetricSpec", "ScoringContext", "metrics", "register_metric", "score_frame"]


@dataclasses.dataclass
class ScoringContext:
    store_root: Path
    subjects: dict[str, Subject]
    cfg: MetricsConfig
    device: torch.device
    images: list[Image.Image]  # aligned with the records frame's rows
    ground_truth: dict | None  # ToyBench's ground_truth.json, when the dataset has one
    _embedded: dict = dataclasses.field(default_factory=dict, repr=False)  # backbone cache key -> generated-image embeddings

    def image_embeddings(self, backbone: Backbone) -> torch.Tensor:
        """The generated images embedded by `backbone`, once per scoring pass: CLIP-I and CLIP-T read the same
        CLIP image embeddings (the image tower is most of a CLIP metric's cost)."""
        key = stable_hash(backbone.cache_key)
        if key not in self._embedded:
            backbone.model.to(self.device)
            self._embedded[key] = backbone.embed_images(self.images, self.device, self.cfg.batch_size)
        return self._embedded[key]

    def references(self, subject: str) -> list[Image.Image]:
        refs = self.subjects[subject].images()
        return refs[:1] if self.cfg.reference_set == "first" else refs

    def reference_embeddings(self, backbone: Backbone, subject: str) -> torch.Tensor:
        s = self.subjects[subject]
        key = stable_hash({"backbone": backbone.cache_key, "subject": s.content_hash, "set": self.cfg.reference_set})
        path = self.store_root / "cache" / "references" / f"{s.name}-{key}.pt"
        if path.is_file():
            return torch.load(path, weights_only=True).to(self.device)
        emb = backbone.embed_images(self.references(subject), self.device, self.cfg.batch_size)
        with atomic_path(path) as tmp:
            torch.save(emb.cpu(), tmp)
        return emb


def backbone_for(cfg: MetricsConfig, kind: str) -> Backbone:
    """metrics.dino_backbone / clip_backbone with its metrics.*_weights (null: the local HF cache)."""
    return get_backbone(getattr(cfg, f"{kind}_backbone"), getattr(cfg, f"{kind}_weights"))


def _pair(gen: torch.Tensor, refs: torch.Tensor, pairing: str) -> torch.Tensor:
    """all-pairs: mean cosine to every reference (DreamBooth, custom-diffusion); one-to-one: cosine to the
    reference the image was conditioned on, the subject's first image (each record's `reference`), as
    DreamBench++ pairs src_image/<id>/i_j with tgt_image/<id>/i_j."""
    return (gen @ refs.T).mean(1) if pairing == "all-pairs" else gen @ refs[0]


def scale_image_metric(cos: np.ndarray, scale: str) -> np.ndarray:
    return 100 * cos if scale == "x100" else cos


def _image_to_reference_similarity(ctx: ScoringContext, frame: pd.DataFrame, kind: str) -> np.ndarray:
    backbone = backbone_for(ctx.cfg, kind)
    gen = ctx.image_embeddings(backbone)
    out = np.empty(len(frame))
    for subject, rows in frame.groupby("subject").indices.items():
        refs = ctx.reference_embeddings(backbone, subject)
        out[rows] = _pair(gen[rows], refs, ctx.cfg.pairing).cpu().numpy()
    return scale_image_metric(out, ctx.cfg.image_scale)


@register_metric("dino", "DreamBench DINO: mean cosine to the subject's real images (metrics.dino_backbone)",
                 Column("dino", "DINO", tolerance=0.02, axis="subject"), backbones=("dino",))
def dino(ctx: ScoringContext, frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"dino": _image_to_reference_similarity(ctx, frame, "dino")})


@register_metric("clip-i", "DreamBench CLIP-I: the same with the CLIP image tower (metrics.clip_backbone)",
                 Column("clip_i", "CLIP-I", tolerance=0.02, axis="subject"), backbones=("clip",))
def clip_i(ctx: ScoringContext, frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"clip_i": _image_to_reference_similarity(ctx, frame, "clip")})


def scale_clip_t(cos: np.ndarray, scale: str) -> np.ndarray:
    if scale == "raw":
        return cos
    if scale == "x100":
        return 100 * cos
    if scale == "w2.5":
        return 2.5 * np.maximum(cos, 0)
    raise UserError(f"metrics.clip_t_scale must be raw, x100 or w2.5, got {scale!r}")


@register_metric("clip-t", "DreamBench CLIP-T: image-text cosine (metrics.clip_t_text, metrics.clip_t_scale)",
                 Column("clip_t", "CLIP-T", tolerance=0.01, axis="text"), backbones=("clip",))
def clip_t(ctx: ScoringContext, frame: pd.DataFrame) -> pd.DataFrame:
    backbone = backbone_for(ctx.cfg, "clip")
    img = ctx.image_embeddings(backbone)
    column = "clip_text" if ctx.cfg.clip_t_text == "class" else "prompt"
    texts = frame[column].tolist()
    txt = torch.cat([backbone.embed_texts(texts[i : i + 256], ctx.device) for i in range(0, len(texts), 256)])
    cos = (img * txt).sum(-1).cpu().numpy()
    return pd.DataFrame({"clip_t": scale_clip_t(cos, ctx.cfg.clip_t_scale)})


def protocol(cfg: MetricsConfig) -> dict:
    """Every scoring choice that moves a number (the preset's name and every resolved field), with each
    backbone's preprocessing and weights fingerprint, for the file written next to the scores."""
    kinds = backbone_kinds(cfg)
    described = {getattr(cfg, f"{k}_backbone"): backbone_for(cfg, k).describe for k in kinds}
    return {"metrics": dataclasses.asdict(cfg), "preset_overrides": preset_overrides(cfg), "backbones": described}


def backbone_kinds(cfg: MetricsConfig) -> list[str]:
    """The `metrics.<kind>_backbone` fields the configured metrics embed with (their specs' `backbones`)."""
    return sorted({k for n in cfg.names for k in metrics.get(n).backbones})


def preset_overrides(cfg: MetricsConfig) -> dict:
    """The fields where the run departs from its named preset ({} without one): a table that says
    'dreambench' while a backbone was swapped must say so next to its numbers."""
    if cfg.preset is None:
        return {}
    from ...core.config import preset_fields

    return {k: getattr(cfg, k) for k, v in preset_fields(cfg.preset).items() if getattr(cfg, k) != v}


def score_frame(frame: pd.DataFrame, store_root: Path, subjects: dict[str, Subject], cfg: MetricsConfig,
                ground_truth_path: Path | None) -> pd.DataFrame:
    """The records frame with one column per metric value."""
    for name in cfg.names:
        metrics.get(name)  # unknown names fail before any work
    gt = json.loads(ground_truth_path.read_text()) if ground_truth_path and ground_truth_path.is_file() else None
    ctx = ScoringContext(store_root, subjects, cfg, resolve_device(cfg.device),
                         [load_image(store_root / p) for p in frame["image"]], gt)
    parts = [frame.reset_index(drop=True)]
    for name in cfg.names:
        parts.append(metrics.get(name)(ctx, frame.reset_index(drop=True)))
    return pd.concat(parts, axis=1)
