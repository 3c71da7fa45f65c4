"""Pick-and-Draw's layout drawing as a guidance term: the generated image's class-word cross-attention maps follow
the vanilla template's (`layout_math.py` holds the distance and why its resolution weighting is what it is).

Imports nothing heavy at module level: config validation imports this file for `LayoutConfig` (the
`guidance_terms` registry's built-ins), and checking a config must not import torch."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Literal

from ..core.config import GuidanceTermConfig
from ..core.errors import UserError
from .terms import GuidanceTerm, register_term, subject_words, token_columns

if TYPE_CHECKING:
    import torch

    from ..core.fitted import Fitted


@dataclasses.dataclass
class LayoutConfig(GuidanceTermConfig):
    """Pick-and-Draw layout drawing: smoothed cross-attention maps vs the vanilla model's template."""

    kernel: int = 3
    sigma: float = 0.5
    layers: list[str] = dataclasses.field(default_factory=lambda: ["all"])
    # sum: sum-1 maps, plain Frobenius norm, a layer's weight falls as 1/side (the scale the defaults are tuned at);
    # equal: every layer counts the same whatever its resolution (per-pixel RMS of mean-1 maps); module docstring
    resolution_weighting: Literal["sum", "equal"] = "sum"

    def check(self, prefix: str) -> None:
        if self.kernel <= 0 or self.kernel % 2 == 0:
            raise UserError(f"{prefix}.kernel must be a positive odd size (e.g. 3), got {self.kernel}")
        if self.sigma <= 0:
            raise UserError(f"{prefix}.sigma must be > 0, got {self.sigma}")


@register_term
class LayoutTerm(GuidanceTerm):
    """Pick-and-Draw layout drawing (cross-attention maps to the vanilla template's)"""

    name = "layout"
    Config = LayoutConfig
    template = True

    @classmethod
    def inputs_from(cls, cfg: LayoutConfig, fitted: Fitted, prompts: list[str]) -> list[list[int]]:
        """The columns whose maps should follow the template's class word: the class noun, or the identifier
        where a method's prompts drop the noun."""
        from ..core.sampling import token_positions

        words = [fitted.subject.class_noun]
        if not all(token_positions(fitted.tokenizer, p, words) for p in prompts):
            words = subject_words(fitted, "identifier", "guidance.layout")
        return token_columns(fitted.tokenizer, prompts, words, "class",
                             "layout drawing needs the class noun (or the method's identifier) in every prompt; "
                             "change the prompt templates or set guidance.layout.enabled=false")

    def prepare(self, step: int, t: torch.Tensor, template: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        return [template[n].float() for n in self.layers]

    def loss(self, cap: Any, state: list[torch.Tensor]) -> torch.Tensor:
        from . import layout_math
        from .masks import maps_2d

        gen = [maps_2d(cap.maps[n].float(), self.own) for n in self.layers]
        return layout_math.layout_loss(gen, state, self.cfg.kernel, self.cfg.sigma, self.cfg.resolution_weighting)
