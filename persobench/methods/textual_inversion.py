"""Textual Inversion (Gal et al., ICLR 2023), following diffusers' `examples/textual_inversion/textual_inversion.py`.

A placeholder token per subject, initialised from the class noun's embedding; only its rows of the
token-embedding matrix train (all others are restored after every step). As the script: AdamW with its
defaults (betas 0.9 / 0.999, weight decay 1e-2, eps 1e-8), prompts drawn from `imagenet_templates_small`,
latents drawn from the VAE posterior (`latent_dist.sample()`) of a reference resized without cropping and
mirrored with p = 0.5. Saved as `learned_embeds.safetensors` ({token: [num_vectors, dim]}), which
`StableDiffusionPipeline.load_textual_inversion(path, token=...)` loads unchanged.

Deviations from the script, by design: batches draw references with replacement (the script shuffles an
epoch of the images x 100 repeats); the initial embedding is the mean over the class noun's tokens (the
script requires a one-token initializer); the lr schedule is constant without warmup (the script's default
"constant" ignores its warmup too).
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, Literal

import torch
from rich.progress import Progress
from safetensors.torch import load_file, save_file

from ..core.benchmark import Subject
from ..core.components import SDComponents
from ..core.errors import UserError
from ..core.sampling import encode_text
from .base import Fitted, register_method
from .training import DiffusionLoss, FitBar, ReferencePosterior, as_dict, resolve_params, subject_references

# textual_inversion.py's `imagenet_templates_small` (learnable_property "object"), verbatim and in order
IMAGENET_TEMPLATES_SMALL = [
    "a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}", "a photo of a clean {}",
    "a photo of a dirty {}", "a dark photo of the {}", "a photo of my {}", "a photo of the cool {}", "a close-up photo of a {}",
    "a bright photo of the {}", "a cropped photo of a {}", "a photo of the {}", "a good photo of the {}", "a photo of one {}",
    "a close-up photo of the {}", "a rendition of the {}", "a photo of the clean {}", "a rendition of a {}", "a photo of a nice {}",
    "a good photo of a {}", "a photo of the nice {}", "a photo of the small {}", "a photo of the weird {}", "a photo of the large {}",
    "a photo of a cool {}", "a photo of a small {}",
]


@dataclasses.dataclass
class TIParams:
    steps: int
    lr: float
    batch_size: int
    num_vectors: int = 1
    placeholder: str = "<{subject}>"  # '{subject}' is replaced by the subject's name
    num_references: int | None = None  # None = all of the subject's images
    templates: list[str] = dataclasses.field(default_factory=lambda: list(IMAGENET_TEMPLATES_SMALL))
    prompt_form: Literal["token", "token+class"] = "token+class"  # "a <dog> in the snow" vs "a <dog> dog in the snow"
    # textual_inversion.py's defaults: --adam_beta1 0.9, --adam_beta2 0.999, --adam_weight_decay 1e-2, --adam_epsilon 1e-08
    weight_decay: float = 1e-2
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    flip_p: float = 0.5  # the dataset's RandomHorizontalFlip(p=flip_p)
    center_crop: bool = False  # --center_crop (off: the whole image is resized)


PRESETS = {
    # diffusers examples/textual_inversion/README.md's SD command: --max_train_steps 3000, --learning_rate 5e-4
    # x --train_batch_size 1 x --gradient_accumulation_steps 4 with --scale_lr = 2e-3 on 4 images per update
    # (one batch of 4 here: the same mean loss). Optimizer, templates, flip and posterior as the script.
    "paper": {"steps": 3000, "lr": 2.0e-3, "batch_size": 4},
    # tuned on the embedded toy world (see README). Deviates from the script in steps / lr / batch only:
    # 300 x 2e-2 x 8 fits a 64-px toy subject in ~30 s on a CPU core where 3000 x 2e-3 would take minutes.
    "toy": {"steps": 300, "lr": 2.0e-2, "batch_size": 8},
}


@register_method("textual-inversion")
class TextualInversion:
    """Textual Inversion: a learned token embedding per subject."""

    name = "textual-inversion"
    fit_step_seconds = 0.25  # one fit step on one A100-class GPU, SD 1.5 fp16 512 px (dry-run estimate)

    def __init__(self, params: dict[str, Any], components: SDComponents) -> None:
        self.params = resolve_params(TIParams, PRESETS, params, self.name)
        p = self.params
        if p.steps <= 0 or p.lr <= 0 or p.batch_size <= 0 or p.num_vectors <= 0:
            raise UserError("method_params.textual-inversion: steps, lr, batch_size and num_vectors must be positive")
        if not 0.0 <= p.flip_p <= 1.0:
            raise UserError(f"method_params.textual-inversion.flip_p must be a probability in [0, 1], got {p.flip_p}")
        if any("{}" not in t for t in p.templates):
            raise UserError("method_params.textual-inversion.templates must each contain '{}' for the token")
        self.components = components

    @staticmethod
    def fit_steps(params: dict[str, Any]) -> int:
        return resolve_params(TIParams, PRESETS, params, "textual-inversion").steps

    def fit_signature(self) -> dict[str, Any]:
        return as_dict(self.params)

    def tokens(self, subject: Subject) -> list[str]:
        token = self.params.placeholder.replace("{subject}", subject.name)
        return [token] + [f"{token}_{i}" for i in range(1, self.params.num_vectors)]  # diffusers' multi-vector naming

    def fit(self, subject: Subject, folder: Path, seed: int, progress: Progress | None = None) -> Fitted:
        c = self.components
        tokens = self.tokens(subject)
        tokenizer = copy.deepcopy(c.tokenizer)
        vocab = tokenizer.get_vocab()
        clash = [t for t in tokens if t in vocab or f"{t}</w>" in vocab]  # CLIP BPE marks word ends with </w>
        if clash:
            raise UserError(f"placeholder token(s) {clash} are already in the vocabulary; set method_params.textual-inversion.placeholder")
        text_encoder = copy.deepcopy(c.text_encoder).float()
        tokenizer.add_tokens(tokens)
        text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # new rows are set below
        ids = tokenizer.convert_tokens_to_ids(tokens)
        weights = text_encoder.get_input_embeddings().weight
        saved = folder / "learned_embeds.safetensors"
        if saved.is_file():
            with torch.no_grad():
                weights[ids] = load_file(saved)[tokens[0]].to(weights)
        else:
            self._train(subject, tokenizer, text_encoder, ids, seed, progress)
            folder.mkdir(parents=True, exist_ok=True)
            save_file({tokens[0]: weights[ids].detach().cpu().contiguous()}, saved)
        text_encoder.to(c.dtype).eval().requires_grad_(False)
        class_word = None if self.params.prompt_form == "token+class" else ""
        return Fitted(self.name, subject, c, c.unet, tokenizer, text_encoder, identifier=" ".join(tokens), class_word=class_word)

    def _optimizer(self, weight: torch.Tensor) -> torch.optim.Optimizer:
        """The script's AdamW over the whole embedding matrix (rows other than the placeholders are restored after each step)."""
        p = self.params
        return torch.optim.AdamW([weight], lr=p.lr, betas=(p.adam_beta1, p.adam_beta2), weight_decay=p.weight_decay, eps=p.adam_epsilon)

    def _train(self, subject: Subject, tokenizer, text_encoder, ids: list[int], seed: int, progress: Progress | None) -> None:
        c, p = self.components, self.params
        posterior = ReferencePosterior(c, subject_references(subject, p.num_references), p.center_crop)
        embedding = text_encoder.get_input_embeddings()
        with torch.no_grad():
            init = tokenizer(subject.class_noun, add_special_tokens=False).input_ids
            embedding.weight[ids] = embedding.weight[init].mean(0, keepdim=True).expand(len(ids), -1)
        original = embedding.weight.detach().clone()
        keep = torch.ones(len(original), dtype=torch.bool)
        keep[ids] = False
        text_encoder.requires_grad_(False)
        embedding.weight.requires_grad_(True)
        text_encoder.train()
        opt = self._optimizer(embedding.weight)
        loss_fn = DiffusionLoss(c)
        gen = torch.Generator().manual_seed(seed)
        phrase = " ".join(tokenizer.convert_ids_to_tokens(ids))
        bar = FitBar(progress, f"fit {self.name} {subject.name}", p.steps)
        for _ in range(p.steps):
            latents = posterior.sample(p.batch_size, p.flip_p, gen)
            pick = torch.randint(0, len(p.templates), (p.batch_size,), generator=gen).tolist()
            prompts = [p.templates[k].format(phrase) for k in pick]
            with torch.enable_grad():
                embeds = encode_text(tokenizer, text_encoder, prompts)
                loss = loss_fn(c.unet, latents, embeds, gen)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            with torch.no_grad():
                embedding.weight[keep] = original[keep]
            bar.step(loss)
        bar.close()
