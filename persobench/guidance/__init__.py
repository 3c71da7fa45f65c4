"""Guidance by name, and the terms its score sums. A guidance hook is built from plain inputs (denoisers,
conditionings, the template, a reference palette) and is a sampling-loop hook; it never sees a method.
Terms (`terms.py`) register into `core.config.guidance_terms`, in this order: appearance, then layout."""

from __future__ import annotations

from collections.abc import Callable

from ..core.registry import Registry
from . import appearance, layout  # noqa: F401  (register the appearance and layout terms, in that order)
from .pick_and_draw import GuidanceInputs, Palette, PickAndDraw

guidances: Registry[Callable] = Registry("guidance")
guidances.register("pick-and-draw", "Pick-and-Draw: appearance picking (UREMD) + layout drawing (template maps)")(PickAndDraw)

__all__ = ["GuidanceInputs", "Palette", "PickAndDraw", "guidances"]
