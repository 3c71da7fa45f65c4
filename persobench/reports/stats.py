"""Paired, subject-aware statistics for per-image score frames.

A score frame has one row per generated image: `method`, `guidance` (a label of the operating point),
`subject`, `prompt_template`, `kind`, `index` (image index within its (subject, prompt)), `seed`, and one
float column per metric (NaN where a metric is not defined for a row).

Why not resample (subject, prompt) cells independently: the cells of one subject share its fit (a
Textual Inversion embedding, a LoRA) and its reference images, so they are correlated; resampling
them as if independent understates the uncertainty whenever subjects differ. Here subjects are the
primary unit and prompts are resampled within a drawn subject (a two-stage bootstrap).

Why paired deltas: guided and unguided images (or two methods) share subject, prompt and initial
noise (the per-image seed hashes run seed, subject, prompt and index, not method or guidance), so the
per-image difference removes those shared effects, and its interval is the honest (and narrower)
interval for "does X change the metric".

numpy / pandas only (scipy is used by the tests as the reference); no persobench imports, so this
module sits below every layer and can be reused by any report.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

SUBJECT = "subject"
PROMPT = "prompt_template"
PAIR_KEYS = (SUBJECT, PROMPT, "index")  # + "seed" when the frame has it
HIERARCHICAL = ("subject", "prompt")
SUBJECT_ONLY = ("subject",)
WEIGHTS = ("subject", "cell")  # every subject the same weight / every (subject, prompt) cell the same weight
_CHUNK_ELEMENTS = 4_000_000  # resample array elements per chunk: bounds memory for large n x subjects x prompts


# ---------------------------------------------------------------------------------------------------
# hierarchical bootstrap


def cell_means(frame: pd.DataFrame, metric: str) -> pd.Series:
    """Mean of `metric` over the images of each (subject, prompt_template) cell, NaN images skipped,
    all-NaN cells dropped. The cell mean is the bootstrap's unit below the subject: images of one
    cell share prompt and fit, so they are replicates of one measurement, not independent draws."""
    cells = frame.groupby([SUBJECT, PROMPT], sort=True, observed=True)[metric].mean()
    return cells.dropna()


def _pack(cells: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Cells as a left-packed (subjects, max prompts) matrix (NaN padding) and each subject's cell count,
    so resampling can be one array gather instead of a Python loop over subjects."""
    subjects = cells.index.get_level_values(0)
    codes, uniques = pd.factorize(subjects, sort=True)
    counts = np.bincount(codes, minlength=len(uniques))
    values = np.full((len(uniques), int(counts.max(initial=0))), np.nan)
    order = np.argsort(codes, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slot = np.arange(len(codes)) - starts[codes[order]]
    values[codes[order], slot] = cells.to_numpy(dtype=float)[order]
    return values, counts


def _point_estimate(values: np.ndarray, counts: np.ndarray, weights: str = "subject") -> float:
    """weights="subject": mean over subjects of (mean over the subject's prompts of the cell means);
    "cell": mean of all cell means (a subject weighs as many prompts as it has). Equal when every
    subject has the same number of cells."""
    if len(counts) == 0:
        return float("nan")
    if weights == "cell":
        return float(np.nansum(values) / counts.sum())
    return float(np.mean(np.nansum(values, axis=1) / counts))


def _resample(values: np.ndarray, counts: np.ndarray, n: int, rng: np.random.Generator, levels: tuple[str, ...],
              weights: str = "subject") -> np.ndarray:
    """`n` bootstrap replicates of the point estimate. Subjects are drawn with replacement; with the
    prompt level, each drawn subject's prompts are drawn with replacement from its own cells (as many
    as it has), so a subject keeps its weight whatever its number of prompts. weights="cell": each
    replicate is the mean of every drawn cell (sum over the drawn subjects' drawn cells / their count),
    the ratio estimator of the all-cells mean; the draws are the same as with "subject"."""
    n_subj, width = values.shape
    subject_sums = np.nansum(values, axis=1)
    subject_means = subject_sums / counts
    out = np.empty(n)
    per_rep = n_subj * (width if "prompt" in levels else 1)
    step = max(1, _CHUNK_ELEMENTS // max(per_rep, 1))
    for start in range(0, n, step):
        m = min(step, n - start)
        drawn = rng.integers(0, n_subj, size=(m, n_subj))
        if "prompt" not in levels:
            if weights == "cell":
                out[start:start + m] = subject_sums[drawn].sum(axis=1) / counts[drawn].sum(axis=1)
            else:
                out[start:start + m] = subject_means[drawn].mean(axis=1)
            continue
        k = counts[drawn][..., None]  # (m, S, 1): cell count of each drawn subject
        pick = rng.integers(0, k, size=(m, n_subj, width))  # a prompt slot of that subject, per draw
        vals = values[drawn[..., None], pick]
        used = np.arange(width) < k  # draw only as many prompts as the subject has
        sums = np.where(used, vals, 0.0).sum(axis=2)
        if weights == "cell":
            out[start:start + m] = sums.sum(axis=1) / k[..., 0].sum(axis=1)
        else:
            out[start:start + m] = (sums / k[..., 0]).mean(axis=1)
    return out


def bootstrap_distribution(
    frame: pd.DataFrame, metric: str, n: int = 1000, seed: int = 0, levels: Sequence[str] = HIERARCHICAL,
    weights: str = "subject",
) -> tuple[float, np.ndarray, int]:
    """(point estimate, `n` bootstrap replicates, number of subjects) for one metric.

    Exposed beside `hierarchical_bootstrap` for callers that combine replicates (e.g. the unpaired
    difference of two arms resampled independently). `levels` and `weights` as in `hierarchical_bootstrap`.
    Replicates are empty when there are fewer than 2 subjects or `n` is 0."""
    levels = _check_levels(levels)
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    values, counts = _pack(cell_means(frame, metric))
    estimate = _point_estimate(values, counts, weights)
    if n <= 0 or len(counts) < 2:
        return estimate, np.empty(0), len(counts)
    return estimate, _resample(values, counts, n, np.random.default_rng(seed), levels, weights), len(counts)


def percentile_interval(replicates: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Equal-tailed percentile interval of bootstrap replicates (NaN, NaN when there are none)."""
    if len(replicates) == 0:
        return float("nan"), float("nan")
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(replicates, [tail, 100 - tail])
    return float(lo), float(hi)


def hierarchical_bootstrap(
    frame: pd.DataFrame, metric: str, n: int = 1000, seed: int = 0, level: float = 0.95, levels: Sequence[str] = HIERARCHICAL,
    weights: str = "subject",
) -> tuple[float, float, float]:
    """(mean, lo, hi) of `metric` over one arm (one method and operating point: filter the frame first),
    with a two-stage percentile bootstrap interval.

    mean: the mean over subjects of (the mean over that subject's prompt templates of (the mean over
    the cell's images)); NaN images are skipped and all-NaN cells dropped first. Every subject weighs
    the same, and every prompt the same within its subject; when the design is balanced this equals
    the plain mean of the cell means (and of the images when every cell has the same image count).

    Interval: `n` replicates, each drawing subjects with replacement, then, within each drawn subject,
    its prompt templates with replacement (as many as it has); images within a cell are averaged, not
    resampled, since images of one cell share prompt and fit and the cell mean is the unit. Subjects
    carry the fit and the references, the dominant shared effect; resampling only cells would treat
    the cells of one subject as independent and understate the uncertainty. The interval is the
    equal-tailed `level` percentile interval of the replicates, seeded with `default_rng(seed)`.

    `levels=("subject",)` resamples subjects only (each at its fixed mean over prompts): the one-level
    bootstrap, identical in distribution to `scipy.stats.bootstrap(subject_means, np.mean,
    method="percentile")`. Fewer than 2 subjects (or `n=0`): the interval is NaN, the mean is defined.

    `weights="cell"` makes the estimate the plain mean of the cell means (a subject with more scored
    prompts weighs more; the tables' mean, which the regression gate compares) and each replicate the
    mean of its drawn cells; the resampling is the same. With every subject holding the same number of
    cells (a balanced design) both weightings give the same estimate and the same replicates.
    """
    estimate, replicates, _ = bootstrap_distribution(frame, metric, n, seed, levels, weights)
    return (estimate, *percentile_interval(replicates, level))


def _check_levels(levels: Sequence[str]) -> tuple[str, ...]:
    levels = tuple(levels)
    if levels not in (HIERARCHICAL, SUBJECT_ONLY):
        raise ValueError(f"levels must be {HIERARCHICAL} or {SUBJECT_ONLY}, got {levels}")
    return levels


# ---------------------------------------------------------------------------------------------------
# paired deltas


def pair_keys(frame: pd.DataFrame) -> list[str]:
    """The columns that identify 'the same image' across arms: subject, prompt, image index, and the
    per-image seed when the frame has it (it makes a multi-seed frame pair seed with seed)."""
    return list(PAIR_KEYS) + (["seed"] if "seed" in frame.columns else [])


def _describe(keys: pd.DataFrame, limit: int = 5) -> str:
    rows = [", ".join(f"{c}={v!r}" for c, v in zip(keys.columns, row)) for row in keys.head(limit).itertuples(index=False)]
    more = f" (and {len(keys) - limit} more)" if len(keys) > limit else ""
    return "; ".join(f"({r})" for r in rows) + more


def _check_unique(arm: pd.DataFrame, keys: list[str], label: str) -> None:
    dup = arm[arm.duplicated(keys, keep=False)][keys].drop_duplicates()
    if len(dup):
        raise ValueError(
            f"{label}: several rows share the pairing keys {keys}: {_describe(dup)}; "
            "add the column that tells them apart to `within`, or filter the frame first"
        )


def paired_differences(
    frame: pd.DataFrame, metrics: Sequence[str], column: str, treatment: Any, control: Any, label: str = ""
) -> pd.DataFrame:
    """Per-image `treatment - control` of each metric, the rows of the two arms (`frame[column] ==
    treatment` / `== control`) paired one-to-one on `pair_keys`. Returns the keys, `kind` when present
    (from the control row), and one difference column per metric. Raises ValueError naming the keys
    of any row without a partner, or of keys that repeat within an arm, since a silent inner join
    would compare different prompt sets and bias the delta."""
    keys = pair_keys(frame)
    missing = [c for c in keys + list(metrics) + [column] if c not in frame.columns]
    if missing:
        raise ValueError(f"{label}score frame lacks the columns {missing}")
    carry = ["kind"] if "kind" in frame.columns else []
    treat = frame.loc[frame[column] == treatment, keys + list(metrics)]
    ctrl = frame.loc[frame[column] == control, keys + carry + list(metrics)]
    _check_unique(treat, keys, f"{label}{column}={treatment!r}")
    _check_unique(ctrl, keys, f"{label}{column}={control!r}")
    merged = treat.merge(ctrl, on=keys, how="outer", suffixes=("_t", "_c"), indicator=True)
    for side, arm in (("left_only", treatment), ("right_only", control)):
        lone = merged.loc[merged["_merge"] == side, keys]
        if len(lone):
            raise ValueError(f"{label}rows of {column}={arm!r} without a partner on {keys}: {_describe(lone)}")
    out = merged[keys + carry].copy()
    for m in metrics:
        out[m] = merged[f"{m}_t"].to_numpy(dtype=float) - merged[f"{m}_c"].to_numpy(dtype=float)
    return out


def _as_list(value: Any) -> list | None:
    if value is None:
        return None
    return list(value) if isinstance(value, (list, tuple, set, frozenset, np.ndarray, pd.Index)) else [value]


def paired_deltas(
    frame: pd.DataFrame,
    metrics: Sequence[str],
    column: str = "guidance",
    treatment: Any = None,
    control: Any = "none",
    within: Sequence[str] = ("method",),
    n: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    weights: str = "subject",
) -> pd.DataFrame:
    """Paired `treatment - control` deltas with hierarchical bootstrap intervals, per `within` group.

    Two uses, one function:
      guided minus unguided, per method:  column="guidance", control="none", within=("method",)
      method vs a baseline, same prompts and seeds:  column="method", control="vanilla", within=("guidance",)
    `treatment` is one value of `column`, a list of them, or None for every value of `column` other
    than `control` present in the group (one output row per treatment and metric). `within` may hold
    any frame columns, e.g. ("method", "kind") for the live / object split.

    In each group the two arms are paired image by image (`paired_differences`; ValueError on rows
    that do not pair one-to-one), and the per-image differences go through `hierarchical_bootstrap`:
    delta is its point estimate (subject-equal-weight mean of the differences), lo / hi its interval.
    Every (group, treatment) uses the same `seed`, so deltas are reproducible one by one. `weights` as
    in `hierarchical_bootstrap` ("cell": the delta is the difference of the two arms' all-cells means
    when both are defined on the same cells).

    Returns columns: *within, treatment, control, metric, delta, lo, hi, n_subjects (subjects with a
    defined difference), n_pairs (image pairs with a defined difference), excludes_zero (lo > 0 or
    hi < 0; False for a NaN interval)."""
    within = list(within)
    wanted = _as_list(treatment)
    groups = frame.groupby(within, sort=True, observed=True) if within else [((), frame)]
    rows = []
    for key, group in groups:
        key = key if isinstance(key, tuple) else (key,)
        label = "".join(f"{c}={v!r}, " for c, v in zip(within, key))
        present = set(group[column].unique())
        if control not in present:
            raise ValueError(f"{label}no rows with {column}={control!r} (values: {sorted(map(str, present))})")
        arms = wanted if wanted is not None else sorted((v for v in present if v != control), key=str)
        absent = [a for a in arms if a not in present]
        if absent:
            raise ValueError(f"{label}no rows with {column} in {absent} (values: {sorted(map(str, present))})")
        for arm in arms:
            diffs = paired_differences(group, metrics, column, arm, control, label)
            for m in metrics:
                delta, lo, hi = hierarchical_bootstrap(diffs, m, n=n, seed=seed, level=level, weights=weights)
                rows.append({
                    **dict(zip(within, key)), "treatment": arm, "control": control, "metric": m,
                    "delta": delta, "lo": lo, "hi": hi,
                    "n_subjects": int(diffs.loc[diffs[m].notna(), SUBJECT].nunique()),
                    "n_pairs": int(diffs[m].notna().sum()),
                    "excludes_zero": bool(lo > 0 or hi < 0),
                })
    columns = within + ["treatment", "control", "metric", "delta", "lo", "hi", "n_subjects", "n_pairs", "excludes_zero"]
    return pd.DataFrame(rows, columns=columns)


# ---------------------------------------------------------------------------------------------------
# formatting


def format_delta(delta: float, lo: float, hi: float, excludes_zero: bool, digits: int = 3, marker: str = "*") -> str:
    """'+0.031 [+0.012, +0.050]*': signed delta, its interval, and `marker` when the interval excludes 0.
    Plain text, safe in Markdown, LaTeX and HTML cells. A NaN delta is '–'; a NaN interval is omitted."""
    if not np.isfinite(delta):
        return "–"
    text = f"{delta:+.{digits}f}"
    if np.isfinite(lo) and np.isfinite(hi):
        text += f" [{lo:+.{digits}f}, {hi:+.{digits}f}]"
    return text + (marker if excludes_zero else "")
