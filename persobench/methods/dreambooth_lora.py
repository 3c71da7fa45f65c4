"""DreamBooth (Ruiz et al., CVPR 2023) with LoRA, following diffusers' train_dreambooth_lora example.

Instance prompt "a {identifier} {class}" with a rare identifier token; LoRA on the UNet attention
projections (and optionally the text encoder, injected with `peft.inject_adapter_in_model`, since
transformers 5 refuses `add_adapter` there); optional prior preservation with class images generated
by the base model and cached. Saved with `save_lora_weights`, so
`pipe.load_lora_weights(folder, weight_name=...)` loads it unchanged. The base UNet is never
modified: the adapter lives on a copy, and guidance can still use the base model as its template.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusionPipeline
from peft import LoraConfig, inject_adapter_in_model
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from rich.progress import Progress

from ..datasets.dreambench import Subject
from ..errors import UserError
from ..harness.atomic import atomic_path
from ..harness.models import SDComponents
from ..harness.sampling import encode_text, sample_base
from ..harness.seeding import image_seed
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

    def __init__(self, params: dict[str, Any], components: SDComponents) -> None:
        self.params = p = resolve_params(LoraParams, PRESETS, params, self.name)
        if p.rank <= 0:
            raise UserError(f"method_params.dreambooth-lora.rank must be a positive integer, got {p.rank}")
        if p.steps <= 0 or p.lr <= 0 or p.batch_size <= 0:
            raise UserError("method_params.dreambooth-lora: steps, lr and batch_size must be positive")
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
            folder.mkdir(parents=True, exist_ok=True)
            StableDiffusionPipeline.save_lora_weights(
                folder,
                unet_lora_layers=get_peft_model_state_dict(unet),
                text_encoder_lora_layers=get_peft_model_state_dict(text_encoder) if p.train_text_encoder else None,
                weight_name=WEIGHT_NAME,
                safe_serialization=True,
            )
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
        opt = torch.optim.AdamW(params, lr=p.lr, weight_decay=1e-2)
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
            opt.step()
            bar.step(loss)
        bar.close()


def load_lora(path: Path, unet, text_encoder, components: SDComponents) -> None:
    """Load a saved LoRA (diffusers' file format) into our adapted copies; a mismatch is a one-line error."""
    state, _ = StableDiffusionPipeline.lora_state_dict(str(path.parent), weight_name=path.name)
    parts = [("unet.", unet)] + ([("text_encoder.", text_encoder)] if text_encoder is not None else [])
    for prefix, module in parts:
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not sub:
            raise UserError(f"LoRA file '{path}' holds no {prefix[:-1]} weights; fit again (delete the folder)")
        try:
            result = set_peft_model_state_dict(module, sub)
        except (RuntimeError, ValueError) as e:
            raise UserError(f"LoRA file '{path}' does not fit this base model ({str(e).splitlines()[0][:100]}); "
                            "fit again or pass the base model it was trained on") from None
        if getattr(result, "unexpected_keys", None):
            raise UserError(f"LoRA file '{path}' has weights this model lacks ({result.unexpected_keys[0]}, ...); "
                            "it was made for another architecture")
