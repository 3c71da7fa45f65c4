"""DreamBooth (Ruiz et al., CVPR 2023) with LoRA, following diffusers' train_dreambooth_lora example.

Instance prompt "a {identifier} {class}" with a rare identifier token; LoRA on the UNet attention
projections (and optionally the text encoder, injected with `peft.inject_adapter_in_model`, since
transformers 5 refuses `add_adapter` there); optional prior preservation with class images generated
by the base model and cached. As the script: AdamW (betas 0.9 / 0.999, weight decay 1e-2, eps 1e-8),
gradients clipped to norm `max_grad_norm` (1.0) before every step, and the weights saved as its
`save_model_hook` does: `convert_state_dict_to_diffusers(get_peft_model_state_dict(...))` through
`save_lora_weights`, plus each adapter's `LoraConfig` as `unet_lora_adapter_metadata` /
`text_encoder_lora_adapter_metadata` (what diffusers' newer LoRA scripts write via
`training_utils._collate_lora_metadata`), so `pipe.load_lora_weights(folder, weight_name=...)` rebuilds the
adapter at its trained scale alpha / rank even where alpha != rank. The base UNet is never modified: the
adapter lives on a copy, and guidance can still use the base model as its template.

Deviations from the script, by design: references are encoded once (VAE posterior mean, plus their mirror
images as extra references; the script draws `latent_dist.sample()` of a resized, randomly cropped image,
without flips); batches draw references with replacement (the script shuffles epochs); constant lr without
warmup (the script's default "constant" ignores its warmup too).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from diffusers.loaders import StableDiffusionLoraLoaderMixin  # StableDiffusionPipeline's LoRA IO, without the pipeline module
from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_peft, convert_unet_state_dict_to_peft
from peft import LoraConfig, inject_adapter_in_model
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from rich.progress import Progress

from ..core.atomic import atomic_path
from ..core.benchmark import Subject
from ..core.components import SDComponents
from ..core.errors import UserError
from ..core.sampling import encode_text, sample_base
from ..core.seeding import image_seed
from .base import Fitted, register_method
from .training import DiffusionLoss, FitBar, as_dict, batch_indices, reference_latents, resolve_params

WEIGHT_NAME = "pytorch_lora_weights.safetensors"


@dataclasses.dataclass
class LoraParams:
    steps: int
    lr: float
    batch_size: int
    rank: int = 4
    alpha: float | None = None  # None = rank (scale 1), as diffusers' example
    targets: list[str] = dataclasses.field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    identifier: str = "sks"
    train_text_encoder: bool = False
    text_encoder_targets: list[str] = dataclasses.field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj"])
    prior_preservation: bool = False
    num_class_images: int = 100
    prior_loss_weight: float = 1.0
    class_steps: int = 30  # sampler steps for generating class images
    num_references: int | None = None
    max_grad_norm: float | None = 1.0  # train_dreambooth_lora.py --max_grad_norm (default 1.0); None: no clipping


PRESETS = {
    # diffusers train_dreambooth_lora example (SD 1.5): lr 1e-4, 500 steps, rank 4, batch 1; prior preservation 200 images
    "paper": {"steps": 500, "lr": 1e-4, "batch_size": 1, "rank": 4, "prior_preservation": True, "num_class_images": 200},
    # tuned on the embedded toy world (see README)
    "toy": {"steps": 300, "lr": 1e-3, "batch_size": 8, "rank": 8},
}


@register_method("dreambooth-lora")
class DreamBoothLora:
    """DreamBooth with LoRA adapters on the UNet (and optionally the text encoder)."""

    name = "dreambooth-lora"
    fit_step_seconds = 0.35  # one fit step on one A100-class GPU, SD 1.5 fp16 512 px (dry-run estimate)

    def __init__(self, params: dict[str, Any], components: SDComponents) -> None:
        self.params = p = resolve_params(LoraParams, PRESETS, params, self.name)
        if p.rank <= 0:
            raise UserError(f"method_params.dreambooth-lora.rank must be a positive integer, got {p.rank}")
        if p.steps <= 0 or p.lr <= 0 or p.batch_size <= 0:
            raise UserError("method_params.dreambooth-lora: steps, lr and batch_size must be positive")
        if p.max_grad_norm is not None and p.max_grad_norm <= 0:
            raise UserError(f"method_params.dreambooth-lora.max_grad_norm must be positive or null (no clipping), got {p.max_grad_norm}")
        if not p.identifier.strip() or len(p.identifier.split()) != 1:
            raise UserError(f"method_params.dreambooth-lora.identifier must be one word, got {p.identifier!r}")
        self.components = components

    @staticmethod
    def fit_steps(params: dict[str, Any]) -> int:
        return resolve_params(LoraParams, PRESETS, params, "dreambooth-lora").steps

    def fit_signature(self) -> dict[str, Any]:
        return as_dict(self.params)

    def _adapted(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        c, p = self.components, self.params
        unet = copy.deepcopy(c.unet).float()
        unet.add_adapter(LoraConfig(r=p.rank, lora_alpha=p.alpha or p.rank, init_lora_weights="gaussian", target_modules=p.targets))
        text_encoder = c.text_encoder
        if p.train_text_encoder:
            text_encoder = copy.deepcopy(c.text_encoder).float()
            config = LoraConfig(r=p.rank, lora_alpha=p.alpha or p.rank, init_lora_weights="gaussian", target_modules=p.text_encoder_targets)
            inject_adapter_in_model(config, text_encoder)
        return unet, text_encoder

    def fit(self, subject: Subject, folder: Path, seed: int, progress: Progress | None = None) -> Fitted:
        c, p = self.components, self.params
        saved = folder / WEIGHT_NAME
        torch.manual_seed(seed)  # LoRA's gaussian init draws from the global generator
        unet, text_encoder = self._adapted()
        if saved.is_file():
            load_lora(saved, unet, text_encoder if p.train_text_encoder else None, c)
        else:
            self._train(subject, unet, text_encoder, folder, seed, progress)
            save_lora(folder, unet, text_encoder if p.train_text_encoder else None)
        for module in (unet, text_encoder):
            if next(module.parameters()).dtype != c.dtype:
                module.to(c.dtype)
            module.eval().requires_grad_(False)
        return Fitted(self.name, subject, c, unet, c.tokenizer, text_encoder, identifier=p.identifier)

    def _class_latents(self, subject: Subject, folder: Path, seed: int) -> torch.Tensor:
        """Prior-preservation images: the base model's own 'a {class}' samples, cached as latents."""
        c, p = self.components, self.params
        cache = folder.parent / f"class-{subject.class_noun.replace(' ', '_')}-{p.num_class_images}-{p.class_steps}-{seed}.pt"
        if cache.is_file():
            return torch.load(cache, weights_only=True)
        prompt = f"a {subject.class_noun}"
        out = []
        for start in range(0, p.num_class_images, 16):
            n = min(16, p.num_class_images - start)
            seeds = [image_seed(seed, "__class__", prompt, start + i) for i in range(n)]
            lat = sample_base(c, [prompt] * n, seeds, p.class_steps, 5.0)
            out.append(lat.float())
        latents = torch.cat(out)
        with atomic_path(cache) as tmp:
            torch.save(latents, tmp)
        return latents

    def _train(self, subject: Subject, unet, text_encoder, folder: Path, seed: int, progress: Progress | None) -> None:
        c, p = self.components, self.params
        latents = reference_latents(c, subject, p.num_references)
        class_latents = self._class_latents(subject, folder, seed) if p.prior_preservation else None
        params = [q for q in unet.parameters() if q.requires_grad]
        if p.train_text_encoder:
            params += [q for n, q in text_encoder.named_parameters() if "lora_" in n and q.requires_grad]
        # train_dreambooth_lora.py's defaults: --adam_beta1 0.9, --adam_beta2 0.999, --adam_weight_decay 1e-2, --adam_epsilon 1e-08
        opt = torch.optim.AdamW(params, lr=p.lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
        loss_fn = DiffusionLoss(c)
        gen = torch.Generator().manual_seed(seed)
        instance = f"a {p.identifier} {subject.class_noun}"
        unet.train()
        bar = FitBar(progress, f"fit {self.name} {subject.name}", p.steps)
        for _ in range(p.steps):
            idx = batch_indices(len(latents), p.batch_size, gen)
            with torch.set_grad_enabled(p.train_text_encoder):
                embeds = encode_text(c.tokenizer, text_encoder, [instance] * p.batch_size)
            loss = loss_fn(unet, latents[idx], embeds, gen)
            if class_latents is not None:
                cidx = batch_indices(len(class_latents), p.batch_size, gen)
                with torch.set_grad_enabled(p.train_text_encoder):
                    cembeds = encode_text(c.tokenizer, text_encoder, [f"a {subject.class_noun}"] * p.batch_size)
                loss = loss + p.prior_loss_weight * loss_fn(unet, class_latents[cidx], cembeds, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if p.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, p.max_grad_norm)  # the script's accelerator.clip_grad_norm_
            opt.step()
            bar.step(loss)
        bar.close()


def adapter_metadata(module: torch.nn.Module) -> dict[str, Any]:
    """The adapter's LoraConfig as diffusers' `_collate_lora_metadata` writes it (r, lora_alpha, targets, ...).

    `base_model_name_or_path` is dropped: it names wherever the base model was read from, which would make
    the cached file depend on a temporary path and says nothing `load_lora_weights` needs. Sets (peft keeps
    `target_modules` as one) are written sorted: their order follows the process's hash seed, and the file
    must be byte-identical whichever process wrote it (tests/test_scale.py)."""
    config = module.peft_config["default"].to_dict()
    config["base_model_name_or_path"] = None
    return {k: sorted(v) if isinstance(v, set | frozenset) else v for k, v in config.items()}


def save_lora(folder: Path, unet: torch.nn.Module, text_encoder: torch.nn.Module | None) -> None:
    """Write the adapters as train_dreambooth_lora.py's save hook does, plus their adapter metadata."""
    folder.mkdir(parents=True, exist_ok=True)
    text_layers = None if text_encoder is None else convert_state_dict_to_diffusers(get_peft_model_state_dict(text_encoder))
    StableDiffusionLoraLoaderMixin.save_lora_weights(
        folder,
        unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)),
        text_encoder_lora_layers=text_layers,
        weight_name=WEIGHT_NAME,
        safe_serialization=True,
        unet_lora_adapter_metadata=adapter_metadata(unet),
        text_encoder_lora_adapter_metadata=adapter_metadata(text_encoder) if text_encoder is not None else None,
    )
    canonical_header(folder / WEIGHT_NAME)


def canonical_header(path: Path) -> None:
    """Rewrite a safetensors header with its `__metadata__` keys sorted, bytes otherwise unchanged.

    safetensors serialises the metadata from a Rust HashMap, whose order is random per process; with two
    keys (diffusers writes `format` and `lora_adapter_metadata`) the same fit would give different bytes
    on different ranks of a sharded run, and the store must not depend on which process wrote it."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # the format pads the header to 8 bytes with spaces
    with atomic_path(path) as tmp:
        tmp.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n :])


def to_peft_keys(state: dict[str, torch.Tensor], unet: bool) -> dict[str, torch.Tensor]:
    """diffusers-layout LoRA keys back to peft's, as train_dreambooth_lora.py's `load_model_hook` converts them
    (a file from before the layout change, already in peft keys, passes through unchanged)."""
    if unet:
        return convert_unet_state_dict_to_peft(state)
    return convert_state_dict_to_peft(convert_state_dict_to_diffusers(state))


def load_lora(path: Path, unet, text_encoder, components: SDComponents) -> None:
    """Load a saved LoRA (diffusers' file format) into our adapted copies; a mismatch is a one-line error."""
    state, _ = StableDiffusionLoraLoaderMixin.lora_state_dict(str(path.parent), weight_name=path.name)
    parts = [("unet.", unet)] + ([("text_encoder.", text_encoder)] if text_encoder is not None else [])
    for prefix, module in parts:
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not sub:
            raise UserError(f"LoRA file '{path}' holds no {prefix[:-1]} weights; fit again (delete the folder)")
        sub = to_peft_keys(sub, unet=prefix == "unet.")
        try:
            result = set_peft_model_state_dict(module, sub)
        except (RuntimeError, ValueError) as e:
            raise UserError(f"LoRA file '{path}' does not fit this base model ({str(e).splitlines()[0][:100]}); "
                            "fit again or pass the base model it was trained on") from None
        if getattr(result, "unexpected_keys", None):
            raise UserError(f"LoRA file '{path}' has weights this model lacks ({result.unexpected_keys[0]}, ...); "
                            "it was made for another architecture")
