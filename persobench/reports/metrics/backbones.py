"""Embedding backbones for DreamBench's metrics, by name, with their preprocessing.

Real backbones (dino-vits16, dino-vits8, clip-vit-b32) are the published architectures with the
published evaluation preprocessing written out here (`Recipe`), not a library's default for the
checkpoint: timm's data config for vit_small_patch16_224.dino says crop_pct 0.9 (Resize 248), while
every DreamBench evaluation resizes to 256 (see presets.py for the sources). They load from local
weights only, never a download: the local Hugging Face cache, or an explicit file or folder
(`metrics.dino_weights` / `metrics.clip_weights`), through the same code either way.

Toy and folder backbones (toy-dino, toy-clip, dino:/folder, clip:/folder) keep the preprocessing of
their own checkpoint config, as open_clip / timm `local-dir:` builds it.

Every backbone carries a fingerprint of its weight bytes; the in-process cache and the reference
embeddings stored in the run folder key on it, so replacing the weights behind a name or folder is
never answered from a cache.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from ...core.errors import UserError
from ...core.registry import Registry
from ...core.sources import TWIN_MARKER, TWIN_PREFIX, twin_folder

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
OPENAI_MEAN, OPENAI_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
logger = logging.getLogger(__name__)
# The loaders below catch broadly on purpose: timm and open_clip raise many kinds for a wrong, corrupt or incomplete
# checkpoint (RuntimeError for a state-dict mismatch, KeyError, ValueError, OSError, safetensors and pickle errors), and
# each means "these weights cannot be used". The original is logged at DEBUG and chained (`persobench --debug` shows it).


@dataclasses.dataclass
class Backbone:
    """Normalised image (and, for CLIP, text) embeddings; `describe` is written next to every score."""

    name: str
    model: torch.nn.Module
    transform: Callable[[Image.Image], torch.Tensor]
    describe: dict
    tokenizer: Callable | None = None
    image_fn: str = "forward"

    @property
    def cache_key(self) -> dict:
        """What an embedding depends on: weights fingerprint, architecture, preprocessing; not where the files are."""
        return {k: v for k, v in self.describe.items() if k != "weights"}

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


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A published evaluation preprocessing: shorter side to `resize` (bicubic), centre crop, [0, 1], normalise.

    Written with torchvision's transforms, as the reference scripts are (custom-diffusion
    `customconcept101/evaluate.py`, DreamBench++ `metrics/dino_score.py`, OpenAI CLIP's `_transform`).
    """

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        from torchvision import transforms as T

        return T.Compose([T.Resize(self.resize, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(self.crop), T.ToTensor(),
                          T.Normalize(self.mean, self.std)])


DINO_RECIPE = Recipe(256, 224, IMAGENET_MEAN, IMAGENET_STD)  # custom-diffusion DINOImageDataset; DreamBench++ DinoScore
OPENAI_CLIP_RECIPE = Recipe(224, 224, OPENAI_MEAN, OPENAI_STD)  # OpenAI clip `_transform(224)`; custom-diffusion CLIPImageDataset


@dataclasses.dataclass(frozen=True)
class RealSpec:
    """A published checkpoint: the library's architecture name, where the HF cache holds it, and its recipe."""

    kind: str  # "dino" | "clip": names the config field for its weights
    library: str  # "timm" | "open_clip"
    arch: str
    hf_repo: str
    hf_files: tuple[str, ...]
    recipe: Recipe

    def locate(self, name: str, weights: Path | None) -> Path:
        return _weights_file(name, self, weights) if weights is not None else _from_hf_cache(name, self)

    def load(self, name: str, path: Path, fingerprint: str) -> Backbone:
        describe = {"library": self.library, "model": self.arch, "preprocess": repr(self.recipe), "weights": str(path),
                    "weights_sha256": fingerprint}
        loader = _timm_file if self.library == "timm" else _open_clip_file
        model, tokenizer, image_fn = loader(name, self, path)
        return Backbone(name, model.eval().requires_grad_(False), self.recipe.transform(), describe, tokenizer, image_fn)


@dataclasses.dataclass(frozen=True)
class FolderSpec:
    """An open_clip / timm `local-dir:` folder (config + weights) with the preprocessing its config gives."""

    kind: str  # "clip" | "dino"
    folder: Path

    def locate(self, name: str, weights: Path | None) -> Path:
        if weights is not None:
            raise UserError(f"backbone {name!r} is a folder with its own weights; set metrics.{self.kind}_weights=null")
        if not self.folder.is_dir():
            raise UserError(f"backbone folder '{self.folder}' does not exist")
        return self.folder

    def load(self, name: str, path: Path, fingerprint: str) -> Backbone:
        return _open_clip_dir(name, path, fingerprint) if self.kind == "clip" else _timm_dir(name, path, fingerprint)


backbones: Registry[RealSpec | FolderSpec] = Registry("backbone")
backbones.register("dino-vits16", "DINO ViT-S/16 (timm vit_small_patch16_224.dino), DreamBench's DINO recipe")(
    RealSpec("dino", "timm", "vit_small_patch16_224.dino", "timm/vit_small_patch16_224.dino", ("model.safetensors", "pytorch_model.bin"),
             DINO_RECIPE))
backbones.register("dino-vits8", "DINO ViT-S/8 (timm vit_small_patch8_224.dino), DreamBench++'s DINO")(
    RealSpec("dino", "timm", "vit_small_patch8_224.dino", "timm/vit_small_patch8_224.dino", ("model.safetensors", "pytorch_model.bin"),
             DINO_RECIPE))
backbones.register("clip-vit-b32", "OpenAI CLIP ViT-B/32 with QuickGELU (open_clip ViT-B-32-quickgelu), OpenAI preprocessing")(
    RealSpec("clip", "open_clip", "ViT-B-32-quickgelu", "timm/vit_base_patch32_clip_224.openai",
             ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"), OPENAI_CLIP_RECIPE))


def _from_hf_cache(name: str, spec: RealSpec) -> Path:
    """The checkpoint's file in the local Hugging Face cache, looked up without any network access."""
    from huggingface_hub import constants, try_to_load_from_cache

    for filename in spec.hf_files:
        hit = try_to_load_from_cache(spec.hf_repo, filename, cache_dir=constants.HF_HUB_CACHE)
        if isinstance(hit, str):
            return Path(hit)
    raise UserError(f"backbone {name!r}: no weights for {spec.hf_repo} in the local Hugging Face cache ({constants.HF_HUB_CACHE}); "
                    f"download them once (huggingface-cli download {spec.hf_repo}) or set metrics.{spec.kind}_weights=<local file/folder>")


def _weights_file(name: str, spec: RealSpec, weights: Path) -> Path:
    """A weights file, or the one in a folder (an HF snapshot folder, or a folder holding a single checkpoint)."""
    weights = weights.expanduser()
    if weights.is_file():
        return weights
    if weights.is_dir():
        named = [weights / f for f in spec.hf_files if (weights / f).is_file()]
        found = named or sorted(p for p in weights.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
        if len(found) == 1 or named:
            return found[0]
        raise UserError(f"metrics.{spec.kind}_weights: folder '{weights}' holds {len(found)} weight files; name the file itself")
    raise UserError(f"metrics.{spec.kind}_weights: '{weights}' does not exist; point it at a local weights file or folder")


def _timm_file(name: str, spec: RealSpec, path: Path):
    """timm's own loader on a local file (`pretrained_cfg_overlay=dict(file=...)`): strict, with its checkpoint filters."""
    import timm

    try:
        model = timm.create_model(spec.arch, pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": str(path)})
    except Exception as e:  # broad on purpose (see the top): timm raises many kinds for a wrong or corrupt file
        logger.debug("timm could not load %s as %s", path, spec.arch, exc_info=True)
        raise UserError(f"backbone {name!r} could not load '{path}' ({type(e).__name__}); metrics.{spec.kind}_weights must hold "
                        f"{spec.arch} weights") from e
    if getattr(model, "global_pool", "token") != "token":
        raise UserError(f"backbone {name!r}: {spec.arch} must pool the CLS token")
    return model, None, "forward"  # forward = the CLS token after the final norm, as DINO's own model(x)


def _open_clip_file(name: str, spec: RealSpec, path: Path):
    """open_clip's built-in architecture with `pretrained=<file>` (strict load, no tag, so no download)."""
    import open_clip

    try:
        model = open_clip.create_model(spec.arch, pretrained=str(path), require_pretrained=True)
    except Exception as e:  # broad on purpose (see the top): open_clip raises many kinds for a wrong or corrupt file
        logger.debug("open_clip could not load %s as %s", path, spec.arch, exc_info=True)
        raise UserError(f"backbone {name!r} could not load '{path}' ({type(e).__name__}); metrics.{spec.kind}_weights must hold "
                        f"open_clip {spec.arch} weights") from e
    return model, open_clip.get_tokenizer(spec.arch), "encode_image"


def _open_clip_dir(name: str, folder: Path, fingerprint: str) -> Backbone:
    import open_clip

    try:
        model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}", cache_dir=None)
    except Exception as e:  # broad on purpose (see the top): open_clip raises many kinds for a broken folder
        logger.debug("open_clip could not load the folder %s", folder, exc_info=True)
        raise UserError(f"CLIP backbone {name!r} could not be loaded from '{folder}' ({type(e).__name__}); it needs "
                        "open_clip_config.json and its weights") from e
    describe = {"library": "open_clip", "model": "local-dir", "preprocess": str(preprocess).replace("\n", " "), "weights": str(folder),
                "weights_sha256": fingerprint}
    return Backbone(name, model.eval().requires_grad_(False), preprocess, describe, open_clip.get_tokenizer(f"local-dir:{folder}"),
                    "encode_image")


def _timm_dir(name: str, folder: Path, fingerprint: str) -> Backbone:
    import timm

    try:
        model = timm.create_model(f"local-dir:{folder}", pretrained=True, num_classes=0)
    except Exception as e:  # broad on purpose (see the top): timm raises many kinds for a broken folder
        logger.debug("timm could not load the folder %s", folder, exc_info=True)
        raise UserError(f"DINO backbone {name!r} could not be loaded from '{folder}' ({type(e).__name__}); it needs config.json "
                        "and its weights") from e
    config = timm.data.resolve_data_config({}, model=model)
    transform = timm.data.create_transform(**config)
    describe = {"library": "timm", "model": "local-dir", "data_config": str(config), "preprocess": str(transform).replace("\n", " "),
                "weights": str(folder), "weights_sha256": fingerprint}
    return Backbone(name, model.eval().requires_grad_(False), transform, describe)


def weights_fingerprint(path: Path) -> str:
    """SHA-256 of the weight bytes (every file of a folder, with its name): what a cached embedding depends on. Weights
    of a random-weight twin (persobench/twins) also hash its marker and fingerprint as 'twin-...': never a real model's."""
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    twin = twin_folder(path)
    if twin is not None and twin / TWIN_MARKER not in files:
        files.append(twin / TWIN_MARKER)
    h = hashlib.sha256()
    for p in files:
        st = p.stat()
        h.update(p.name.encode() + b"\0" + _file_digest(str(p.resolve()), st.st_size, st.st_mtime_ns, st.st_ino))
    return ("" if twin is None else TWIN_PREFIX) + h.hexdigest()[:16]


@functools.lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime_ns: int, inode: int) -> bytes:
    """A file's SHA-256, read once per version of the file: every metric and the protocol file ask for the
    backbone's fingerprint, and a CLIP checkpoint is hundreds of MB. A replaced file has a new mtime or inode."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").digest()


def _spec(name: str) -> RealSpec | FolderSpec:
    for kind in ("clip", "dino"):
        if name.startswith(f"{kind}:"):
            return FolderSpec(kind, Path(name[len(kind) + 1 :]).expanduser())
    return backbones.get(name)


def locate_weights(name: str, weights: str | Path | None = None) -> Path:
    """Where a backbone's weights are, without loading them: a run can check this before it samples anything."""
    return _spec(name).locate(name, Path(weights) if weights is not None else None)


def get_backbone(name: str, weights: str | Path | None = None) -> Backbone:
    """A registered name (real ones from `weights` or the local HF cache), or 'clip:/folder' / 'dino:/folder'.

    The weights are fingerprinted on every call, so the in-process cache below never returns a model
    whose files have since been replaced.
    """
    path = locate_weights(name, weights)
    return _load(name, str(path), weights_fingerprint(path))


@functools.lru_cache(maxsize=4)
def _load(name: str, path: str, fingerprint: str) -> Backbone:
    return _spec(name).load(name, Path(path), fingerprint)
