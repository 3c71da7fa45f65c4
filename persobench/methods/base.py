"""The common interface every personalization method implements.

A `Personalizer` fits a subject (train, or nothing) and returns a `Fitted`: the denoiser, the text
conditioning and the prompt wording for that subject. The harness owns the denoising loop; guidance
sees only a `Fitted`'s UNet, conditioning and subject token positions, never the method.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from rich.progress import Progress

from ..core.benchmark import Subject
from ..core.components import SDComponents
from ..core.fitted import Fitted  # noqa: F401  (re-exported: what a method's fit returns)
from ..core.registry import Registry


class Personalizer(Protocol):
    """Built from `method_params.<name>` and the base model, possibly several times per run (the runner builds one
    only to read its `fit_signature` for the fit keys), so building one checks the params and loads no weights:
    weights a method needs beyond the base model load in an optional `load()` (the runner calls it in its "load
    method" phase) or on the first `fit`."""

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
