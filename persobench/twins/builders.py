"""Random-weight twins of the real models, in the real on-disk layouts, built from the published configs.

A twin is what the harness would load for the real model, with seeded random weights: the same folder layout,
file names, config files and state-dict keys and shapes, so `--shape-check` can run every real code path (loading,
memory, attention shapes, token columns) without the real weights, and CI can do the same on a reduced twin.

    name            of (what it stands in for)                 loads through (unchanged)
    sd15            runwayml/stable-diffusion-v1-5 (diffusers)  model.source=<twin>: core/components.load_components
                                                                (harness/models.py before the move), or
                                                                StableDiffusionPipeline.from_pretrained(<twin>)
    dino-vits16     timm/vit_small_patch16_224.dino             metrics.dino_weights=<twin> with backbone dino-vits16
                                                                (timm.create_model(..., pretrained_cfg_overlay=file));
                                                                any width: backbone 'dino:<twin>' (timm local-dir)
    dino-vits8      timm/vit_small_patch8_224.dino              the same, backbone dino-vits8
    clip-vit-b32    timm/vit_base_patch32_clip_224.openai       metrics.clip_weights=<twin> with backbone clip-vit-b32
                    (open_clip ViT-B-32-quickgelu)              (open_clip.create_model(arch, pretrained=file));
                                                                any width: backbone 'clip:<twin>' (open_clip local-dir)
    blipdiffusion   Salesforce/blipdiffusion (diffusers)        method_params.blip-diffusion={backend: real,
                                                                weights: <twin>, qformer_tokenizer: <twin>/qformer_tokenizer}

API: `ensure_twin(name, cache_dir, width_divisor=1, seed=0, dtype="fp16") -> Path` returns a complete twin folder
under `cache_dir`, building it only if it is missing or incomplete (built in a hidden temporary folder beside it
and renamed into place, with a per-twin file lock; the marker lists every file and its size, so a folder whose
files do not match is rebuilt). `is_twin(path)` says whether a folder, or a file in one, is a twin;
`twin_info(path)` returns its marker. `parameter_counts(name, width_divisor)` counts parameters per component on the
meta device, allocating nothing.

Weights: the libraries' own initialisation under a seed derived from (seed, component), so a twin is the same
bytes on every build with the same library versions; the Q-Former (no maintained class) is filled from its key table
(normal(0, 0.02) weights, zero biases, unit norms). Saved as fp16 by default (`dtype="fp16"`): half the disk and
write time of fp32, and every loader the harness uses casts on load (diffusers / transformers with torch_dtype, timm /
open_clip / the Q-Former port by copying into their fp32 parameters); `dtype="fp32"` writes the bytes the published
fp32 files have. `width_divisor` (1 = the published size; REDUCED = 8, the CI size) divides every width and keeps
classes, block types, depths, vocabularies, sequence lengths and image sizes, so a reduced twin has the full model's
state-dict keys and folder layout.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core.atomic import pid_alive
from ..core.errors import UserError
from . import configs as C
from .tokenizers import write_bert_tokenizer, write_clip_tokenizer

logger = logging.getLogger(__name__)

MARKER = "persobench_twin.json"
FORMAT = 1
REDUCED = 8  # the CI width divisor: valid for every twin (1, 2, 4 and 8 are)
DTYPES = ("fp16", "fp32")


# --------------------------------------------------------------------------------------------------------------
# markers
# --------------------------------------------------------------------------------------------------------------
def twin_info(path: str | os.PathLike) -> dict | None:
    """The marker of the twin holding `path` (the twin folder, or a file or folder up to two levels inside it)."""
    p = Path(path).expanduser()
    candidates = [p] if p.is_dir() else []
    candidates += list(p.parents)[:2] if p.exists() else []
    for folder in candidates:
        marker = folder / MARKER
        if marker.is_file():
            try:
                info = json.loads(marker.read_text())
            except (OSError, ValueError):
                return None
            return info if isinstance(info, dict) and info.get("twin") is True else None
    return None


def is_twin(path: str | os.PathLike) -> bool:
    """True when `path` is a twin folder or lies inside one (so a fingerprint or a report can say "twin")."""
    return twin_info(path) is not None


def is_complete(folder: str | os.PathLike) -> bool:
    """A finished build: the marker is there and every file it lists exists with its recorded size."""
    folder = Path(folder)
    info = twin_info(folder) if (folder / MARKER).is_file() else None
    if info is None or info.get("format") != FORMAT or not isinstance(info.get("files"), dict) or not info["files"]:
        return False
    for rel, size in info["files"].items():
        f = folder / rel
        if not f.is_file() or f.stat().st_size != size:
            return False
    return True


def twin_dir_name(name: str, width_divisor: int = 1, seed: int = 0, dtype: str = "fp16") -> str:
    width = "" if width_divisor == 1 else f"-w{width_divisor}"
    return f"{name}{width}-seed{seed}-{dtype}"


# --------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------
def _component_seed(seed: int, component: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(component.encode())) % (2**63)


def _seeded(factory: Callable[[], Any], seed: int, component: str):
    """Build with the library's own init under a seed for (seed, component), leaving the caller's RNG untouched."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_component_seed(seed, component))
        return factory()


def _torch_dtype(dtype: str):
    import torch

    return {"fp16": torch.float16, "fp32": torch.float32}[dtype]


def _save_state(state: dict, path: Path, dtype: str) -> None:
    """One safetensors file (metadata format=pt, as diffusers / transformers write it); floats cast to `dtype`."""
    from safetensors.torch import save_file

    target = _torch_dtype(dtype)
    out = {k: (v.to(target) if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(path), metadata={"format": "pt"})


def _write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _on_meta(factory: Callable[[], Any]):
    import torch

    with torch.device("meta"):
        return factory()


# --------------------------------------------------------------------------------------------------------------
# component factories (the library classes, from the published configs)
# --------------------------------------------------------------------------------------------------------------
def _unet(d: int):
    from diffusers import UNet2DConditionModel

    return lambda: UNet2DConditionModel.from_config(C.reduce_unet(C.SD15_UNET, d))


def _vae(d: int):
    from diffusers import AutoencoderKL

    return lambda: AutoencoderKL.from_config(C.reduce_vae(C.SD15_VAE, d))


def _text_encoder(d: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    return lambda: CLIPTextModel(CLIPTextConfig.from_dict(C.reduce_clip_text(C.SD15_TEXT_ENCODER, d)))


def _dino(name: str, d: int):
    import timm

    spec = C.DINO[name]
    args = C.reduce_vit_args(spec["model_args"], d)
    return lambda: timm.create_model(f"{spec['architecture']}.{spec['tag']}", pretrained=False, num_classes=0, **args)


def _clip(d: int):
    import open_clip

    return lambda: open_clip.CLIP(**C.reduce_open_clip(C.CLIP_B32_QUICKGELU, d))


# --------------------------------------------------------------------------------------------------------------
# builders: each writes the layout into `root` (a fresh folder) and returns the marker's extra fields
# --------------------------------------------------------------------------------------------------------------
def _save_diffusers(root: Path, sub: str, factory, config: dict, seed: int, component: str, dtype: str) -> int:
    model = _seeded(factory, seed, component)
    n = _count(model)
    _save_state(model.state_dict(), root / sub / "diffusion_pytorch_model.safetensors", dtype)
    _write_json(root / sub / "config.json", config)
    return n


def _save_clip_text(root: Path, sub: str, d: int, seed: int, component: str, dtype: str, architecture: str) -> int:
    model = _seeded(_text_encoder(d), seed, component)
    n = _count(model)
    _save_state(model.state_dict(), root / sub / "model.safetensors", dtype)
    _write_json(root / sub / "config.json", {**C.reduce_clip_text(C.SD15_TEXT_ENCODER, d), "architectures": [architecture]})
    return n


def _build_sd15(root: Path, d: int, seed: int, dtype: str) -> dict:
    write_clip_tokenizer(root / "tokenizer")
    params = {"text_encoder": _save_clip_text(root, "text_encoder", d, seed, "sd15/text_encoder", dtype, "CLIPTextModel")}
    params["vae"] = _save_diffusers(root, "vae", _vae(d), C.reduce_vae(C.SD15_VAE, d), seed, "sd15/vae", dtype)
    params["unet"] = _save_diffusers(root, "unet", _unet(d), C.reduce_unet(C.SD15_UNET, d), seed, "sd15/unet", dtype)
    _write_json(root / "scheduler" / "scheduler_config.json", C.SD15_SCHEDULER)
    _write_json(root / "model_index.json", C.SD15_MODEL_INDEX)
    return {"parameters": params}


def _build_dino(name: str):
    def build(root: Path, d: int, seed: int, dtype: str) -> dict:
        from timm.models import save_for_hf

        model = _seeded(_dino(name, d), seed, name)
        n = _count(model)
        if dtype == "fp16":
            model = model.half()
        args = C.reduce_vit_args(C.DINO[name]["model_args"], d) if d > 1 else None  # a reduced one says its widths
        save_for_hf(model, str(root), model_args=args, safe_serialization=True)  # model.safetensors + config.json
        return {"parameters": {"model": n}}

    return build


def _build_clip(root: Path, d: int, seed: int, dtype: str) -> dict:
    model = _seeded(_clip(d), seed, "clip-vit-b32")
    n = _count(model)
    from safetensors.torch import save_file

    target = _torch_dtype(dtype)
    save_file({k: v.to(target).contiguous() for k, v in model.state_dict().items()}, str(root / "open_clip_model.safetensors"))
    config = {"model_cfg": C.reduce_open_clip(C.CLIP_B32_QUICKGELU, d), "preprocess_cfg": C.CLIP_PREPROCESS}
    _write_json(root / "open_clip_config.json", config)
    return {"parameters": {"model": n}}


def _build_blip(root: Path, d: int, seed: int, dtype: str) -> dict:
    import diffusers
    import torch
    from diffusers import PNDMScheduler

    from .qformer import parameter_count, random_state

    config = C.blip2_config(d)
    generator = torch.Generator().manual_seed(_component_seed(seed, "blipdiffusion/qformer"))
    _save_state(random_state(config, generator, _torch_dtype(dtype)), root / "qformer" / "model.safetensors", dtype)
    _write_json(root / "qformer" / "config.json", config)
    params = {"qformer": parameter_count(config)}
    params["text_encoder"] = _save_clip_text(root, "text_encoder", d, seed, "blipdiffusion/text_encoder", dtype, "ContextCLIPTextModel")
    params["vae"] = _save_diffusers(root, "vae", _vae(d), C.reduce_vae(C.SD15_VAE, d), seed, "blipdiffusion/vae", dtype)
    params["unet"] = _save_diffusers(root, "unet", _unet(d), C.reduce_unet(C.SD15_UNET, d), seed, "blipdiffusion/unet", dtype)
    write_clip_tokenizer(root / "tokenizer")
    PNDMScheduler(**C.BLIP_SCHEDULER_ARGS).save_config(str(root / "scheduler"))
    _write_json(root / "image_processor" / "preprocessor_config.json", C.BLIP_IMAGE_PROCESSOR)
    _write_json(root / "model_index.json", {**C.BLIP_MODEL_INDEX, "_diffusers_version": diffusers.__version__})
    write_bert_tokenizer(root / "qformer_tokenizer")
    return {"parameters": params,
            "notes": ["qformer_tokenizer/ is not part of the published layout: a synthetic bert-base-uncased-shaped WordPiece "
                      "vocabulary (real size and special-token ids, not its word ids) for method_params.blip-diffusion.qformer_tokenizer",
                      "qformer/model.safetensors keeps the published q_bias / v_bias vision keys (transformers < 5 layout)"]}


def _count_sd15(d: int) -> dict[str, int]:
    return {"unet": _count(_on_meta(_unet(d))), "vae": _count(_on_meta(_vae(d))), "text_encoder": _count(_on_meta(_text_encoder(d)))}


def _count_blip(d: int) -> dict[str, int]:
    from .qformer import parameter_count

    return {"qformer": parameter_count(C.blip2_config(d)), **_count_sd15(d)}


@dataclasses.dataclass(frozen=True)
class TwinSpec:
    name: str
    of: str
    layout: str
    build: Callable[[Path, int, int, str], dict]
    count: Callable[[int], dict[str, int]]


TWINS: dict[str, TwinSpec] = {
    "sd15": TwinSpec("sd15", C.SD15_ID, "diffusers StableDiffusionPipeline folder", _build_sd15, _count_sd15),
    "dino-vits16": TwinSpec("dino-vits16", C.DINO["dino-vits16"]["id"], "timm hub folder (config.json, model.safetensors)",
                            _build_dino("dino-vits16"), lambda d: {"model": _count(_on_meta(_dino("dino-vits16", d)))}),
    "dino-vits8": TwinSpec("dino-vits8", C.DINO["dino-vits8"]["id"], "timm hub folder (config.json, model.safetensors)",
                           _build_dino("dino-vits8"), lambda d: {"model": _count(_on_meta(_dino("dino-vits8", d)))}),
    "clip-vit-b32": TwinSpec("clip-vit-b32", C.CLIP_ID, "open_clip hub folder (open_clip_config.json, open_clip_model.safetensors)",
                             _build_clip, lambda d: {"model": _count(_on_meta(_clip(d)))}),
    "blipdiffusion": TwinSpec("blipdiffusion", C.BLIP_ID, "diffusers BlipDiffusionPipeline folder", _build_blip, _count_blip),
}


def _spec(name: str) -> TwinSpec:
    if name not in TWINS:
        raise UserError(f"no twin named {name!r}; known: {', '.join(TWINS)}")
    return TWINS[name]


def _validate(name: str, width_divisor: int, dtype: str) -> TwinSpec:
    spec = _spec(name)
    if dtype not in DTYPES:
        raise UserError(f"twin dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if not isinstance(width_divisor, int) or width_divisor < 1:
        raise UserError(f"twin width_divisor must be a positive integer, got {width_divisor!r}")
    try:
        _check_widths(name, width_divisor)
    except ValueError as e:
        raise UserError(f"twin {name!r}: {e}; use 1, 2, 4 or {REDUCED}") from e
    return spec


def _check_widths(name: str, d: int) -> None:
    """Raise ValueError when `d` does not divide the twin's widths into valid ones (configs only, no model built)."""
    if name in ("sd15", "blipdiffusion"):
        C.reduce_unet(C.SD15_UNET, d), C.reduce_vae(C.SD15_VAE, d), C.reduce_clip_text(C.SD15_TEXT_ENCODER, d)
    if name == "blipdiffusion":
        C.blip2_config(d)
    if name in C.DINO:
        C.reduce_vit_args(C.DINO[name]["model_args"], d)
    if name == "clip-vit-b32":
        C.reduce_open_clip(C.CLIP_B32_QUICKGELU, d)


def parameter_counts(name: str, width_divisor: int = 1) -> dict[str, int]:
    """Parameters per component of the (reduced) architecture, built on the meta device: nothing is allocated."""
    return _spec(name).count(width_divisor)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("torch", "diffusers", "transformers", "timm", "open_clip_torch", "safetensors"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


# --------------------------------------------------------------------------------------------------------------
# building and caching
# --------------------------------------------------------------------------------------------------------------
def _remove_dead_partials(final: Path) -> None:
    """Temporary folders of builds whose process is gone (killed mid-build) are removed."""
    for partial in final.parent.glob(f".{final.name}.partial-*"):
        try:
            pid = int(partial.name.split(".partial-", 1)[1].split("-", 1)[0])
        except ValueError:
            continue
        if pid != os.getpid() and not pid_alive(pid):
            logger.info("removing the unfinished twin build %s", partial)
            shutil.rmtree(partial, ignore_errors=True)


@contextlib.contextmanager
def _lock(final: Path):
    """One build per twin folder at a time (POSIX advisory lock; elsewhere concurrent builds race harmlessly)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: the rename below still keeps a finished folder whole
        yield
        return
    with open(final.parent / f".{final.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_twin(name: str, out: str | os.PathLike, *, width_divisor: int = 1, seed: int = 0, dtype: str = "fp16") -> Path:
    """Build the twin into the folder `out` (replacing an incomplete one there); complete or absent, never half-written."""
    spec = _validate(name, width_divisor, dtype)
    final = Path(out).expanduser().resolve()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-{os.getpid()}-", dir=final.parent))
    try:
        extra = spec.build(tmp, width_divisor, seed, dtype)
        files = {p.relative_to(tmp).as_posix(): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
        marker = {"twin": True, "of": spec.of, "name": name, "seed": seed, "width_divisor": width_divisor, "dtype": dtype,
                  "layout": spec.layout, "format": FORMAT, "builder": "persobench.twins", "versions": _versions(), **extra,
                  "files": files}
        _write_json(tmp / MARKER, marker)  # last: a folder without it is never taken for a twin
        if final.exists():
            stale = final.with_name(f".{final.name}.stale-{os.getpid()}")
            os.rename(final, stale)
            shutil.rmtree(stale, ignore_errors=True)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("built the %s twin (width_divisor %d, seed %d, %s) at %s", name, width_divisor, seed, dtype, final)
    return final


def ensure_twin(name: str, cache_dir: str | os.PathLike, *, width_divisor: int = 1, seed: int = 0, dtype: str = "fp16") -> Path:
    """The twin's folder under `cache_dir`, built only if it is missing or incomplete."""
    _validate(name, width_divisor, dtype)
    cache = Path(cache_dir).expanduser().resolve()
    cache.mkdir(parents=True, exist_ok=True)
    final = cache / twin_dir_name(name, width_divisor, seed, dtype)
    if is_complete(final):
        return final
    with _lock(final):
        if is_complete(final):  # built by another process while this one waited
            return final
        _remove_dead_partials(final)
        if final.exists():
            logger.warning("the twin folder %s is incomplete; rebuilding it", final)
        return build_twin(name, final, width_divisor=width_divisor, seed=seed, dtype=dtype)
