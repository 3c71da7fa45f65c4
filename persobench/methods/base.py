"""The common interface every personalization method implements.

A `Personalizer` fits a subject (train, or nothing) and returns a `Fitted`: the denoiser, the text
conditioning and the prompt wording for that subject. The harness owns the denoising loop; guidance
sees only a `Fitted`'s UNet, conditioning and subject token positions, never the method.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from rich.progress import Progress

from ..core.benchmark import Subject
from ..core.components import SDComponents
from ..core.registry import Registry
from ..core.sampling import Conditioning, encode_text, token_positions


@dataclasses.dataclass
class Fitted:
    """A method ready to sample one subject."""

    method: str
    subject: Subject
    components: SDComponents  # base model parts (VAE, scheduler config) the method builds on
    unet: torch.nn.Module  # the denoiser to call (LoRA-patched, or the base UNet)
    tokenizer: Any
    text_encoder: torch.nn.Module
    identifier: str  # the word(s) that name this subject in prompts ("" for vanilla SD)
    class_word: str | None = None  # the class noun as prompts say it (None: the subject's; "" to omit)
    prompt_reps: int = 1  # BLIP-Diffusion's prompt strengthening: the class-noun form appended reps-1 times
    identifier_first: bool = False  # the identifier right after the prompt's first word, wherever the template puts {0}

    def prompt(self, template: str) -> str:
        """A DreamBench template ('a {0} {1} in the snow') in this method's wording.

        `identifier_first` is BLIP-Diffusion's layout: its pipeline inserts the query embeddings at token
        position 2 (`ctx_begin_pos=2`: after BOS and the first word) for every prompt, so a property prompt
        'a red {0} {1}' reads 'a <q>... red dog', not 'a red <q>... dog'."""
        noun = self.subject.class_noun if self.class_word is None else self.class_word
        if self.identifier_first and self.identifier:
            head, _, rest = " ".join(template.format("", noun).split()).partition(" ")
            first = " ".join(w for w in (head, self.identifier, rest) if w)
        else:
            first = " ".join(template.format(self.identifier, noun).split())
        return ", ".join([first] + [self.clip_text(template)] * (self.prompt_reps - 1))

    def clip_text(self, template: str) -> str:
        """The text CLIP-T scores against: the class-noun form, without the identifier."""
        return " ".join(template.format("", self.subject.class_noun).split())

    @property
    def subject_words(self) -> list[str]:
        return [w for w in (self.identifier, self.subject.class_noun) if w]

    @torch.no_grad()
    def encode(self, prompts: list[str], negative: str = "") -> Conditioning:
        cond = encode_text(self.tokenizer, self.text_encoder, prompts)
        uncond = encode_text(self.tokenizer, self.text_encoder, [negative] * len(prompts))
        positions = [token_positions(self.tokenizer, p, self.subject_words) for p in prompts]
        dtype = self.components.dtype
        return Conditioning(cond.to(dtype), uncond.to(dtype), positions)


class Personalizer(Protocol):
    """Built once per run from `method_params.<name>` and the base model."""

    name: str
    fit_step_seconds: float  # seconds per fit step on one A100-class GPU, SD 1.5 fp16 512 px (0: no training); dry-run estimate

    @staticmethod
    def fit_steps(params: dict[str, Any]) -> int:
        """Optimizer steps one fit takes with these params (0: no training); for dry-run estimates."""
        ...

    def fit_signature(self) -> dict[str, Any]:
        """The hyperparameters that change a fit (with subject and base model, the fit's cache key)."""
        ...

    def fit(self, subject: Subject, folder: Path, seed: int, progress: Progress | None = None) -> Fitted:
        """Train (or not) into `folder`, or load what a previous fit left complete there.

        `progress` (rich) is where a training method shows its bar and loss."""
        ...


methods: Registry[Callable[[dict[str, Any], SDComponents], Personalizer]] = Registry("method")
register_method = methods.register
