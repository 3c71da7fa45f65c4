"""Guidance terms by name. A term is built from plain inputs (denoisers, conditionings, token
columns, a reference palette) and is a sampling-loop hook; it never sees a method."""

from __future__ import annotations

from collections.abc import Callable

from ..core.registry import Registry
from .pick_and_draw import GuidanceInputs, Palette, PickAndDraw

guidances: Registry[Callable] = Registry("guidance")
guidances.register("pick-and-draw", "Pick-and-Draw: appearance picking (UREMD) + layout drawing (template maps)")(PickAndDraw)

__all__ = ["GuidanceInputs", "Palette", "PickAndDraw", "guidances"]
