"""What a metric is, for everything downstream of scoring: its function and the columns it writes, each
with its label, direction, default gate tolerance, aggregation and trade-off-curve axis.

The tables (`reports/tables.py`), W&B (`reports/wandb_log.py`), the trade-off figures (`reports/build.py`,
`reports/tradeoff.py`) and the regression gate (`harness/regress.py`) read these specs, so a metric
registered anywhere (a plugin, a test) is tabled, logged, plotted and gated without an edit elsewhere:

    metrics.register("brightness", "mean pixel value")(
        MetricSpec("brightness", fn, (Column("brightness", "Brightness", tolerance=0.05),)))

or `@register_metric(name, doc, Column(...), ...)` on the function. This module imports no model code;
the built-in metrics (`scores.py`) load on the registry's first lookup.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pandas as pd

from ...core.registry import Registry

AGGREGATIONS = ("mean",)  # per image -> per (subject, prompt) cell -> per row; intervals bootstrap the cells' mean
AXES = ("subject", "text")  # trade-off figures: subject fidelity (y) against text fidelity (x)


@dataclasses.dataclass(frozen=True)
class Column:
    """One output column of a metric (`name` is the scores.parquet / table.csv / W&B / baseline key)."""

    name: str
    label: str  # the tables' header and the figures' axis name ("DINO")
    higher_is_better: bool = True
    tolerance: float = 0.02  # the regression gate's default |drift| allowance (a baseline's own tolerances win)
    aggregation: str = "mean"
    axis: str | None = None  # "subject" | "text": a trade-off-curve axis (both axes must be higher-is-better)
    beside: str | None = None  # a variant of another column, shown right after it in the tables ("dino_subject" beside "dino")

    def __post_init__(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"metric column {self.name!r}: aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}")
        if self.axis is not None and self.axis not in AXES:
            raise ValueError(f"metric column {self.name!r}: axis must be one of {AXES} or None, got {self.axis!r}")
        if self.axis is not None and not self.higher_is_better:
            raise ValueError(f"metric column {self.name!r}: a trade-off axis must be higher is better (the Pareto front assumes it)")
        if self.tolerance < 0:
            raise ValueError(f"metric column {self.name!r}: tolerance must be >= 0, got {self.tolerance}")
        if self.beside == self.name:
            raise ValueError(f"metric column {self.name!r} cannot be shown beside itself")


@dataclasses.dataclass(frozen=True)
class MetricSpec:
    """A metric: `function(ScoringContext, records frame) -> DataFrame` with exactly `columns`, one row per
    record. `backbones`: the `metrics.<kind>_backbone` fields it embeds with ("dino", "clip"), whose weights
    the run checks before any work and whose fingerprints go into metrics_protocol.json. `needs_ground_truth`:
    it reads the dataset's ground truth (ToyBench's ground_truth.json); on data without one the run drops it
    before any work (a default) or refuses (named in metrics.names). `needs_reference_masks`: it reads a subject
    mask for each reference image (`masks/<subject>/<image stem>.png`, scores.py::reference_mask_path; ToyBench
    ships them); on data without them the run drops or refuses it the same way."""

    name: str
    function: Callable[[Any, pd.DataFrame], pd.DataFrame]
    columns: tuple[Column, ...]
    backbones: tuple[str, ...] = ()
    needs_ground_truth: bool = False
    needs_reference_masks: bool = False

    def __post_init__(self) -> None:
        if not self.columns:
            raise ValueError(f"metric {self.name!r} declares no columns")

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def __call__(self, ctx: Any, frame: pd.DataFrame) -> pd.DataFrame:
        out = self.function(ctx, frame)
        if list(out.columns) != self.column_names:
            raise ValueError(f"metric {self.name!r} returned columns {list(out.columns)}; its spec declares {self.column_names}")
        return out


metrics: Registry[MetricSpec] = Registry("metric", builtins=("persobench.reports.metrics.scores",))


def register_metric(name: str, doc: str | None, *columns: Column, backbones: tuple[str, ...] = (),
                    needs_reference_masks: bool = False):
    """Decorator: register `function` as metric `name` with these columns; returns the function unchanged."""

    def add(function: Callable[[Any, pd.DataFrame], pd.DataFrame]):
        metrics.register(name, doc or function.__doc__)(
            MetricSpec(name, function, tuple(columns), backbones, needs_reference_masks=needs_reference_masks))
        return function

    return add


def metric_columns() -> list[Column]:
    """Every registered metric's columns, in registration order, the variants shown `beside` another column last
    (so the paper's columns keep their places whatever variants are registered)."""
    columns = [c for spec in metrics.values() for c in spec.columns]
    return [c for c in columns if c.beside is None] + [c for c in columns if c.beside is not None]


def present_columns(frame_columns) -> list[Column]:
    """The registered columns a scores / table frame holds, in the tables' order: registration order, each
    `beside` variant right after the column it varies when that one is there too (DINO, DINO (subject), CLIP-I)."""
    have = set(frame_columns)
    present = [c for c in metric_columns() if c.name in have]
    out = [c for c in present if c.beside is None or c.beside not in have]
    for c in present:
        if c not in out:
            at = max(i for i, o in enumerate(out) if o.name == c.beside or o.beside == c.beside)
            out.insert(at + 1, c)
    return out


def default_tolerances() -> dict[str, float]:
    return {c.name: c.tolerance for c in metric_columns()}


def axes(kind: str) -> list[str]:
    """The columns that are trade-off axes of this kind ("subject" or "text"), in registration order."""
    return [c.name for c in metric_columns() if c.axis == kind]


def column(name: str) -> Column | None:
    return next((c for c in metric_columns() if c.name == name), None)


def label(name: str) -> str:
    c = column(name)
    return c.label if c else name
