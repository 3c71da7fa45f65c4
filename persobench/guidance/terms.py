"""What a guidance term is: one loss of Pick-and-Draw's guided score S = sum over enabled terms of weight * loss.

A term is one file (`appearance.py`, `layout.py`, or a plugin's): a class registered in
`core.config.guidance_terms` under its name, whose `Config` (a `GuidanceTermConfig`) becomes the config
section `guidance.<name>`, which builds its own inputs from a `Fitted` (`inputs_from`, e.g. the token
columns it reads), and which, per guided step, prepares what it needs without gradients (`prepare`) and
returns its per-image loss from the guided forward's captured attention (`loss`). The hook
(`pick_and_draw.py`) runs one guided forward capturing every term's layers, sums the weighted losses and
descends; it owns the vanilla template, which a term reads by setting `template = True`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from ..core.config import GuidanceTermConfig, guidance_terms
from ..core.errors import UserError

if TYPE_CHECKING:  # imported where used: config validation imports the term files, and must not import torch
    import torch

    from ..core.fitted import Fitted
    from .pick_and_draw import GuidanceInputs


class GuidanceTerm:
    """Base class: `layers` (the UNet layers its loss reads, from `cfg.layers`), `feature` (the feature kind it
    reads at those layers, None for maps only) and `template` (whether it reads the vanilla template's
    maps at its layers)."""

    name: ClassVar[str]
    Config: ClassVar[type[GuidanceTermConfig]]
    template: ClassVar[bool] = False

    def __init__(self, cfg: Any, inputs: GuidanceInputs, own: Any) -> None:
        """`own`: what `inputs_from` built for this term."""
        from ..core.attention import select_layers

        self.cfg, self.inp, self.own = cfg, inputs, own
        self.layers: list[str] = select_layers(inputs.unet, cfg.layers) if getattr(cfg, "layers", None) else []

    @property
    def feature(self) -> str | None:
        return None

    @classmethod
    def inputs_from(cls, cfg: Any, fitted: Fitted, prompts: list[str]) -> Any:
        """This term's own inputs for these guided prompts (e.g. token columns); raise `UserError` when the
        fitted method or the prompts cannot serve it."""
        return None

    @classmethod
    def check(cls, cfg: Any, fitted: Fitted, prompts: list[str]) -> None:
        """Fail before any image is sampled: the layers exist, the prompts name what the term reads."""
        from ..core.attention import select_layers

        if getattr(cfg, "layers", None):
            select_layers(fitted.unet, cfg.layers)
        cls.inputs_from(cfg, fitted, prompts)

    def prepare(self, step: int, t: torch.Tensor, template: dict[str, torch.Tensor]) -> Any:
        """Per guided step, without gradients: what `loss` compares against (`template`: the vanilla
        template's maps at the template terms' layers, {} when no term reads it)."""
        return None

    def loss(self, cap: Any, state: Any) -> torch.Tensor:
        """Per-image loss [B] (fp32) from the guided forward's capture (`cap.maps`, `cap.features`)."""
        raise NotImplementedError


def register_term(cls: type[GuidanceTerm]) -> type[GuidanceTerm]:
    """Class decorator: the term under its `name`, its `Config` the section `guidance.<name>`."""
    return guidance_terms.register(cls.name, (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else None)(cls)


def token_columns(tokenizer, prompts: list[str], words: list[str], what: str, fix: str) -> list[list[int]]:
    """Per prompt, the token columns of `words`; a prompt without them is a `UserError` ending with `fix`."""
    from ..core.sampling import token_positions

    cols = [token_positions(tokenizer, p, words) for p in prompts]
    missing = [p for p, c in zip(prompts, cols) if not c]
    if missing:
        raise UserError(f"guidance needs the subject in every prompt, but {missing[0]!r} has no {what} token ({' / '.join(words)}); "
                        f"{fix}")
    return cols


def subject_words(fitted: Fitted, which: str, key: str) -> list[str]:
    """The words that name the subject: its class noun, the method's identifier, or both."""
    words = {"class": [fitted.subject.class_noun], "identifier": [fitted.identifier] if fitted.identifier else [],
             "both": [w for w in (fitted.identifier, fitted.subject.class_noun) if w]}[which]
    if not words:
        raise UserError(f"{key}={which} but method {fitted.method} has no identifier; use 'class'")
    return words
