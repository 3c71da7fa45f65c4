"""`Fitted`: what a method's fit hands the harness, the contract between methods and everything that samples.

It lives in the bottom layer so that guidance terms can read what they need from it (the tokenizer, the
subject's words, the denoiser) without importing any method, and methods never learn they are guided.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from .benchmark import Subject
from .components import SDComponents
from .sampling import Conditioning, encode_text, token_positions


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
