"""Pick-and-Draw's appearance picking as a guidance term: UREMD (`uremd.py`) between the generated image's
features inside its subject mask and the reference palette's (the inverted subject images at the same step)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from ..core.config import GuidanceTermConfig
from ..core.errors import UserError
from .terms import GuidanceTerm, register_term, subject_words, token_columns

if TYPE_CHECKING:  # imported where used: config validation imports this file for AppearanceConfig, without torch
    import torch

    from ..core.fitted import Fitted

FIX = "change guidance.appearance.subject_token or the method's prompt form"


@dataclasses.dataclass
class AppearanceConfig(GuidanceTermConfig):
    """Pick-and-Draw appearance picking: UREMD between generated and reference-palette features."""

    tau: float = 0.5  # threshold on min-max normalised subject-token attention
    soft_masks: bool = False
    layers: list[str] = dataclasses.field(default_factory=lambda: ["up-mid"])  # names or groups: up-mid, up, down, mid, all, res:N
    feature: Literal["hidden", "attn_out", "query"] = "hidden"
    direction: Literal["gen_to_ref", "ref_to_gen", "both"] = "gen_to_ref"
    subject_token: Literal["class", "identifier", "both"] = "class"
    num_references: int | None = 1  # references in the palette; None = all
    needs_palette: ClassVar[bool] = True

    def check(self, prefix: str) -> None:
        if not 0.0 < self.tau < 1.0:
            raise UserError(f"{prefix}.tau must be in (0, 1), got {self.tau}")
        if self.num_references is not None and self.num_references <= 0:
            raise UserError(f"{prefix}.num_references must be positive or null (all), got {self.num_references}")


@register_term
class AppearanceTerm(GuidanceTerm):
    """Pick-and-Draw appearance picking (UREMD to the reference palette)"""

    name = "appearance"
    Config = AppearanceConfig

    def __init__(self, cfg: AppearanceConfig, inputs, own: list[list[int]]) -> None:
        if inputs.palette is None:
            raise UserError("guidance.appearance needs a reference palette (the subject's images)")
        super().__init__(cfg, inputs, own)

    @property
    def feature(self) -> str | None:
        return self.cfg.feature

    @classmethod
    def inputs_from(cls, cfg: AppearanceConfig, fitted: Fitted, prompts: list[str]) -> list[list[int]]:
        """The subject-token columns of each guided prompt (the generated side's attention mask)."""
        words = subject_words(fitted, cfg.subject_token, "guidance.appearance.subject_token")
        return token_columns(fitted.tokenizer, prompts, words, "subject", FIX)

    def prepare(self, step: int, t: torch.Tensor, template: dict[str, torch.Tensor]) -> tuple[list, list]:
        """The palette's features and subject masks at this step, per layer (computed once per subject and step,
        then shared by every prompt and seed through the palette's cache)."""
        import torch

        from ..core.attention import capture_cross_attention
        from .masks import subject_mask

        pal, a = self.inp.palette, self.cfg
        missing = [n for n in self.layers if (step, n) not in pal.cache]
        if missing:
            with torch.no_grad(), capture_cross_attention(self.inp.unet, self.layers, feature=a.feature,
                                                          feature_layers=self.layers) as cap:
                self.inp.unet(pal.trajectory[step], t, encoder_hidden_states=pal.cond.cond)
            for name in self.layers:
                mask = subject_mask(cap.maps[name], pal.cond.subject_positions, a.tau, a.soft_masks)
                f = cap.features[name]
                pal.cache[(step, name)] = (f.reshape(-1, f.shape[-1]).float(), mask.reshape(-1))
        feats, masks = zip(*(pal.cache[(step, name)] for name in self.layers))
        return list(feats), list(masks)

    def loss(self, cap: Any, state: tuple[list, list]) -> torch.Tensor:
        import torch

        from .masks import subject_mask
        from .uremd import uremd

        a = self.cfg
        return torch.stack([
            uremd(cap.features[name].float(), subject_mask(cap.maps[name].detach().float(), self.own, a.tau, a.soft_masks), pf, pm,
                  a.direction)
            for name, pf, pm in zip(self.layers, *state)
        ]).mean(0)
