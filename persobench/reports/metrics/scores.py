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

Subject-region identity (`dino-subject`, `clip-i-subject`; columns `dino_subject`, `clip_i_subject`, shown beside
DINO / CLIP-I): the same similarity with each image's background replaced by a neutral fill (`subject_only`), so
a score gained by copying the references' background is visible as the gap between the two columns. The
references' masks are the dataset's (`masks/<subject>/<image stem>.png` beside the subject folders,
`reference_mask_path`; ToyBench's are
the renderer's); a generated image's is the class token's cross-attention map that sampling recorded with it
(`<run>/masks/<the image's path under images/>`, its record's `mask`; harness/runner.py::SubjectMaskRecorder), thresholded at
`ATTENTION_MASK_THRESHOLD`. An image without a recorded map (sampled before maps were recorded) scores NaN, and
the scoring says how many. Not trade-off axes: a diagnostic beside the paper's metric, not a metric papers report.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
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

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class ScoringContext:
    store_root: Path
    subjects: dict[str, Subject]
    cfg: MetricsConfig
    device: torch.device
    images: list[Image.Image]  # aligned with the records frame's rows
    ground_truth: dict | None  # ToyBench's ground_truth.json, when the dataset has one
    _embedded: dict = dataclasses.field(default_factory=dict, repr=False)  # backbone cache key -> generated-image embeddings
    _said: set = dataclasses.field(default_factory=set, repr=False)  # notices given once per scoring pass

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


# --- subject-region identity ----------------------------------------------------------------------------------

MASKS_FOLDER = "masks"  # reference masks: <dataset root>/masks/<subject folder>/<image stem>.png (no subject folder changes)
# The background fill: ImageNet's mean pixel, which DINO's normalisation maps to within 0.01 of 0 and OpenAI CLIP's
# to within 0.02, so the fill carries (almost) no signal of its own into either backbone.
NEUTRAL_FILL = (124, 116, 104)
# A generated image's mask: its recorded map (the class token's attention, log-scaled to [0, 1], see
# harness/runner.py::SubjectMaskRecorder) upsampled bilinearly to the image and kept where >= this. Chosen on
# ToyBench's 100 references, whose true masks are known, noised to the middle step of DDIM 20 and read by the
# recorder (tests/test_metric_audit.py): mean IoU 0.72 (worst 0.47) at 0.4, the mask's area 1.02x the subject's;
# 0.3 over-covers (IoU 0.68, 1.25x), 0.5 under-covers (0.71, 0.86x); DDIM 50's middle step gives the same (0.72).
ATTENTION_MASK_THRESHOLD = 0.4
SUBJECT_RECIPE = 1  # bump when subject_only or the thresholds change, so cached reference embeddings are not reused


def reference_mask_path(image: Path) -> Path:
    """Where a reference image's subject mask lives: `masks/<subject folder>/<image stem>.png` beside the subject
    folders (grey, >= 128 = subject, in the image's orientation as `load_image` shows it). Beside, not inside: a
    subject folder keeps holding its photos only, as DreamBench's do, so nothing that lists one changes."""
    return image.parent.parent / MASKS_FOLDER / image.parent.name / f"{image.stem}.png"


def missing_reference_masks(subject: Subject, reference_set: str = "all") -> list[Path]:
    """The reference images the metric would read whose mask is missing."""
    paths = subject.image_paths[:1] if reference_set == "first" else subject.image_paths
    return [p for p in paths if not reference_mask_path(p).is_file()]


def reference_masks_error(names: list[str], dataset: str, lacking: list[str]) -> str:
    shown = ", ".join(lacking[:5]) + (f" and {len(lacking) - 5} more" if len(lacking) > 5 else "")
    return (f"metric(s) {names} need reference masks: a {MASKS_FOLDER}/<subject>/<image stem>.png (grey, white = subject) "
            f"beside the subject folders for each reference image; ToyBench has them, dataset '{dataset}' lacks them for "
            f"subject(s) {shown}; add the masks, use dataset.name=toybench, or remove them from metrics.names")


def load_mask(path: Path, size: tuple[int, int], threshold: float) -> np.ndarray:
    """A grey mask file as a boolean array of `size` (W, H): upsampled bilinearly, kept where >= threshold x 255."""
    grey = Image.open(path).convert("L")
    if grey.size != size:
        grey = grey.resize(size, Image.BILINEAR)
    return np.asarray(grey, dtype=np.float32) >= threshold * 255


def subject_only(image: Image.Image, mask: np.ndarray) -> Image.Image:
    """The image with everything outside `mask` replaced by the neutral fill (same size, same framing: the
    subject's position and scale are kept, only the background goes)."""
    arr = np.asarray(image.convert("RGB"))
    return Image.fromarray(np.where(mask[..., None], arr, np.asarray(NEUTRAL_FILL, np.uint8)).astype(np.uint8))


def _subject_reference_embeddings(ctx: ScoringContext, backbone: Backbone, subject: str) -> torch.Tensor:
    s = ctx.subjects[subject]
    missing = missing_reference_masks(s, ctx.cfg.reference_set)
    if missing:  # the run's preflight refuses this before any work; scoring directly (the API, a test) lands here
        raise UserError(f"subject '{subject}' has no reference mask '{missing[0]}': dino-subject / clip-i-subject need a "
                        f"{MASKS_FOLDER}/<subject>/<image stem>.png (grey, white = subject) for each reference image")
    paths = s.image_paths[:1] if ctx.cfg.reference_set == "first" else s.image_paths
    masks = hashlib.sha256(b"".join(reference_mask_path(p).read_bytes() for p in paths)).hexdigest()[:16]
    key = stable_hash({"backbone": backbone.cache_key, "subject": s.content_hash, "set": ctx.cfg.reference_set,
                       "masks": masks, "recipe": SUBJECT_RECIPE})
    path = ctx.store_root / "cache" / "references" / f"{s.name}-subject-{key}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True).to(ctx.device)
    cut = [subject_only(im, load_mask(reference_mask_path(p), im.size, 0.5)) for im, p in zip(ctx.references(subject), paths)]
    emb = backbone.embed_images(cut, ctx.device, ctx.cfg.batch_size)
    with atomic_path(path) as tmp:
        torch.save(emb.cpu(), tmp)
    return emb


def generated_masks(ctx: ScoringContext, frame: pd.DataFrame) -> list[np.ndarray | None]:
    """Each row's subject mask from its recorded attention map, None where the record has none (an image sampled
    before maps were recorded) or the map selects nothing (all black: a prompt without a subject token)."""
    column = frame["mask"] if "mask" in frame else pd.Series([None] * len(frame))
    out: list[np.ndarray | None] = []
    for image, rel in zip(ctx.images, column):
        path = ctx.store_root / rel if isinstance(rel, str) and rel else None
        mask = load_mask(path, image.size, ATTENTION_MASK_THRESHOLD) if path is not None and path.is_file() else None
        out.append(mask if mask is not None and mask.any() else None)
    missing = sum(m is None for m in out)
    if missing and "masks" not in ctx._said:
        ctx._said.add("masks")
        logger.warning("subject-region metrics: %d of %d image(s) have no recorded subject mask (sampled before masks were "
                       "recorded, or no class token in the prompt): their dino_subject / clip_i_subject are NaN", missing, len(out))
    return out


def _subject_region_similarity(ctx: ScoringContext, frame: pd.DataFrame, kind: str) -> np.ndarray:
    backbone = backbone_for(ctx.cfg, kind)
    key = ("subject", stable_hash(backbone.cache_key))
    if key not in ctx._embedded:
        masks = generated_masks(ctx, frame)
        have = [i for i, m in enumerate(masks) if m is not None]
        backbone.model.to(ctx.device)
        cut = [subject_only(ctx.images[i], masks[i]) for i in have]
        ctx._embedded[key] = (have, backbone.embed_images(cut, ctx.device, ctx.cfg.batch_size) if cut else None)
    have, gen = ctx._embedded[key]
    out = np.full(len(frame), np.nan)
    where = {row: k for k, row in enumerate(have)}
    for subject, rows in frame.groupby("subject").indices.items():
        mine = [r for r in rows if r in where]
        if mine:
            refs = _subject_reference_embeddings(ctx, backbone, subject)
            out[mine] = _pair(gen[[where[r] for r in mine]], refs, ctx.cfg.pairing).cpu().numpy()
    return scale_image_metric(out, ctx.cfg.image_scale)


@register_metric("dino-subject", "DINO on the subject's region only: background replaced by a neutral fill in the image "
                 "(its class-token attention mask) and the references (their masks)",
                 Column("dino_subject", "DINO (subject)", tolerance=0.02, beside="dino"), backbones=("dino",),
                 needs_reference_masks=True)
def dino_subject(ctx: ScoringContext, frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"dino_subject": _subject_region_similarity(ctx, frame, "dino")})


@register_metric("clip-i-subject", "CLIP-I on the subject's region only (the recipe of dino-subject)",
                 Column("clip_i_subject", "CLIP-I (subject)", tolerance=0.02, beside="clip_i"), backbones=("clip",),
                 needs_reference_masks=True)
def clip_i_subject(ctx: ScoringContext, frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"clip_i_subject": _subject_region_similarity(ctx, frame, "clip")})


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
