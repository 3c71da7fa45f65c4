"""Vanilla Stable Diffusion: no personalization; the subject is named by its class noun only.

The DreamBench baseline ("a dog in the snow"); `fit` is a no-op.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.benchmark import Subject
from ..core.components import SDComponents
from ..core.errors import UserError
from .base import Fitted, register_method


@register_method("vanilla-sd")
class VanillaSD:
    """Stable Diffusion prompted with the class noun (no fitting)."""

    name = "vanilla-sd"
    fit_step_seconds = 0.0  # one fit step on one A100-class GPU, SD 1.5 fp16 512 px (dry-run estimate)

    def __init__(self, params: dict[str, Any], components: SDComponents) -> None:
        if params:
            raise UserError(f"method vanilla-sd takes no parameters, got {sorted(params)}; remove method_params.vanilla-sd")
        self.components = components

    @staticmethod
    def fit_steps(params: dict[str, Any]) -> int:
        return 0

    def fit_signature(self) -> dict[str, Any]:
        return {}

    def fit(self, subject: Subject, folder: Path, seed: int, progress=None) -> Fitted:
        c = self.components
        return Fitted(self.name, subject, c, c.unet, c.tokenizer, c.text_encoder, identifier="")
