"""Guidance by name, and the terms its score sums. A guidance hook is built from plain inputs (denoisers,
conditionings, the template, a reference palette) and is a sampling-loop hook; it never sees a method.
Terms (`terms.py`; appearance.py, layout.py) register into `core.config.guidance_terms`, in that order.

Light on purpose: config validation imports the term files through this package, so the hook
(`pick_and_draw.py`, torch) is imported on first use of `guidances`, `GuidanceInputs`, `Palette` or `PickAndDraw`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..core.registry import Registry

guidances: Registry[Callable] = Registry("guidance", builtins=("persobench.guidance.pick_and_draw",))

__all__ = ["GuidanceInputs", "Palette", "PickAndDraw", "guidances"]


def __getattr__(name: str) -> Any:
    if name in ("GuidanceInputs", "Palette", "PickAndDraw"):
        from . import pick_and_draw

        return getattr(pick_and_draw, name)
    raise AttributeError(f"module 'persobench.guidance' has no attribute {name!r}")
