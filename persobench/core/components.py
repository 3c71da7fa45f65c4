"""Loading a Stable-Diffusion-family base model from the embedded toy world, a folder or a hub id.

Components load one by one with their own classes' `from_pretrained` (explicit over magic), so
methods can swap or wrap any of them. Hub ids resolve from the local Hugging Face cache only unless
`model.local_files_only=false`: a missing model fails at once with what to pass, never a download.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch

from .config import ModelConfig
from .errors import UserError
from .sources import ASSETS, EMBEDDED, TWIN_PREFIX, resolve_source, twin_folder  # noqa: F401  (re-exported)

logger = logging.getLogger(__name__)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclasses.dataclass
class SDComponents:
    """A base model's parts, on one device and dtype; `fingerprint` keys every cached artefact."""

    vae: Any  # diffusers AutoencoderKL
    unet: Any  # diffusers UNet2DConditionModel
    text_encoder: Any  # transformers CLIPTextModel
    tokenizer: Any  # transformers CLIPTokenizer
    scheduler_config: dict
    path: Path
    fingerprint: str
    device: torch.device
    dtype: torch.dtype

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        s = self.unet.config.sample_size
        return (self.unet.config.in_channels, s, s)

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("model.device=cuda but no CUDA device is visible; use model.device=cpu or auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("model.device=mps but MPS is not available; use model.device=cpu or auto")
    return torch.device(name)


def fingerprint(path: Path) -> str:
    """Hash of configs, file sizes, and the content of weight files under 256 MB (model cards excluded); a random-weight
    twin's (persobench/twins) starts with 'twin-' and hashes its marker too, so it is never a real model's."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = f.relative_to(path).as_posix()
        if rel.startswith(".") or "/." in rel or rel == "TRAINED_STEPS" or f.suffix == ".md":  # docs never change a model
            continue
        size = f.stat().st_size
        h.update(f"{rel}:{size}\n".encode())
        if f.suffix == ".json" or size < 256 * 2**20:
            h.update(f.read_bytes())
    return (TWIN_PREFIX if twin_folder(path) is not None else "") + h.hexdigest()[:16]


@functools.lru_cache(maxsize=4)
def _load(path: str, device: str, dtype_name: str) -> SDComponents:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.utils import logging as diffusers_logging
    from transformers import CLIPTextModel, CLIPTokenizer
    from transformers.utils import logging as transformers_logging

    p, dtype, dev = Path(path), DTYPES[dtype_name], torch.device(device)
    logger.info("loading the base model from %s (%s, %s)", p, device, dtype_name)
    diffusers_logging.disable_progress_bar()  # our own bars report the work; theirs would interleave
    transformers_logging.disable_progress_bar()
    try:
        vae = AutoencoderKL.from_pretrained(p, subfolder="vae", torch_dtype=dtype)
        unet = UNet2DConditionModel.from_pretrained(p, subfolder="unet", torch_dtype=dtype)
        text_encoder = CLIPTextModel.from_pretrained(p, subfolder="text_encoder", torch_dtype=dtype)
        tokenizer = CLIPTokenizer.from_pretrained(p, subfolder="tokenizer")
        sched = json.loads((p / "scheduler" / "scheduler_config.json").read_text())
    except (OSError, ValueError, json.JSONDecodeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"model folder '{p}' could not be loaded ({first}); re-save it or pass another model.source") from None
    for module in (vae, unet, text_encoder):
        module.to(dev).eval().requires_grad_(False)
    return SDComponents(vae, unet, text_encoder, tokenizer, sched, p, fingerprint(p), dev, dtype)


def load_components(cfg: ModelConfig) -> SDComponents:
    """Load (once per process) the base model named by `cfg`."""
    device = resolve_device(cfg.device)
    if device.type == "cpu" and cfg.dtype == "fp16":
        raise UserError("model.dtype=fp16 is not supported on the CPU; use model.dtype=fp32 or bf16")
    path = resolve_source(cfg.source, cfg.local_files_only)
    return _load(str(path.resolve()), str(device), cfg.dtype)
