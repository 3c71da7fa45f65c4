"""Aggregate per-image scores into the paper's table, with 95% bootstrap intervals and paired deltas.

per image -> per (method, guidance, subject, prompt) cell -> per (method, guidance), overall and split by
DreamBench kind (live / object). Written as CSV, Markdown and LaTeX (booktabs). Reads only the run store.
Which columns, in which order and under which labels: the registered metrics' specs (`reports/metrics/spec.py`).

Mean: the mean over the row's (subject, prompt) cells of each cell's mean over its images (NaN images
skipped, all-NaN cells dropped). It is the number the regression gate compares (`table.csv`, split "all"),
defined as before intervals became hierarchical; when every subject has the same number of scored prompts
(a balanced design) it is also the mean over subjects of the subject means.

Interval (`metrics.bootstrap` resamples, seeded, 95% percentile; `stats.py`): a two-stage bootstrap that
draws subjects with replacement, then, within each drawn subject, its prompts with replacement; a cell's
images are averaged, not resampled (they share prompt and fit). Subjects carry the fit and the reference
images, so the cells of one subject are correlated and resampling cells alone would understate the
uncertainty. Each replicate is the mean of its drawn cells, the same estimator as the mean. The two-stage
interval is conservative: when subjects do not differ it is about 1.4x too wide (coverage about 97-98% at
a nominal 95%). With one subject the prompts are resampled (the interval speaks for that subject only);
`metrics.bootstrap: 0` gives no interval.

Paired deltas (`deltas.csv`): per method, guided minus unguided, and with `metrics.baseline_method` every
method minus the baseline method under the same guidance, per metric. The two arms are paired image by
image on (subject, prompt, image index, seed): they share the initial noise, so the per-image difference
removes subject, prompt and noise effects; the differences go through the same two-stage bootstrap. A
delta whose interval excludes 0 is marked `*`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from ..core.atomic import atomic_path, write_text
from .ablation import guidance_label
from .markdown import markdown_table
from .metrics.spec import present_columns
from .stats import SUBJECT_ONLY, format_delta, hierarchical_bootstrap, paired_differences

KEYS = ["method", "guidance"]

# Published DreamBench numbers (DINO, CLIP-I, CLIP-T), shown beside real-scale runs. Transcribed from
# Ruiz et al. 2023 (DreamBooth, Table 1) and Li et al. 2023 (BLIP-Diffusion); not re-verified here.
PUBLISHED = {
    name: dict(zip(("dino", "clip_i", "clip_t"), values)) for name, values in {
        "DreamBooth (SD) [Ruiz et al. 2023]": (0.668, 0.803, 0.305),
        "Textual Inversion [Ruiz et al. 2023]": (0.569, 0.780, 0.255),
        "BLIP-Diffusion zero-shot [Li et al. 2023]": (0.594, 0.779, 0.300),
        "Real images [Ruiz et al. 2023]": (0.774, 0.885, float("nan")),
    }.items()
}


GUIDED = "guided - unguided"  # deltas.csv `comparison` of a guided row against the same method unguided
DELTA_MARK = "*"  # after a delta whose 95% interval excludes 0


def bootstrap_ci(values: np.ndarray, n: int, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of independent values (one-level bootstrap); the tables use `interval`."""
    values = values[~np.isnan(values)]
    if n == 0 or len(values) < 2:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (n, len(values)))].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def interval(frame: pd.DataFrame, metric: str, n: int, seed: int = 0) -> tuple[float, float, float]:
    """(mean over cells, lo, hi) of `metric` over a frame of one arm (images, or one row per cell): the
    two-stage (subjects, then prompts) percentile bootstrap of the all-cells mean, `n` resamples, seeded.
    One subject: its prompts are resampled instead (an interval for that subject only)."""
    defined = frame[frame[metric].notna()]
    if defined["subject"].nunique() == 1:
        frame = frame.assign(subject=frame["prompt_template"])  # each prompt a unit: the one-level cell bootstrap
        return hierarchical_bootstrap(frame, metric, n=n, seed=seed, levels=SUBJECT_ONLY, weights="cell")
    return hierarchical_bootstrap(frame, metric, n=n, seed=seed, weights="cell")


def aggregate(scores: pd.DataFrame, bootstrap: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per (method, guidance) and split (all / object / live): cells, subjects, and each metric's mean over
    the (subject, prompt) cells with its two-stage bootstrap interval (`<metric>_lo`, `<metric>_hi`)."""
    metrics = [c.name for c in present_columns(scores.columns)]  # every spec's aggregation is the mean
    cells = scores.groupby(KEYS + ["kind", "subject", "prompt_template"], sort=False)[metrics].mean().reset_index()
    rows = []
    for split, part in [("all", cells)] + [(k, cells[cells["kind"] == k]) for k in ("object", "live")]:
        for key, group in part.groupby(KEYS, sort=False):
            row = dict(zip(KEYS, key), split=split, cells=len(group), subjects=group["subject"].nunique())
            for m in metrics:
                vals = group[m].to_numpy(dtype=float)
                row[m] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")  # the gate's number
                _, row[f"{m}_lo"], row[f"{m}_hi"] = interval(group, m, bootstrap, seed) if np.isfinite(vals).any() \
                    else (np.nan, np.nan, np.nan)
            rows.append(row)
    return pd.DataFrame(rows)


DELTA_COLUMNS = ["comparison", "method", "guidance", "split", "metric", "delta", "lo", "hi", "excludes_zero", "n_subjects",
                 "n_pairs", "treatment", "control", "text"]


def delta_notes(guidances: set[str], methods: set[str], baseline_method: str | None) -> list[str]:
    """Why a point has no deltas of a kind (one line each), from its rows' guidance and method values."""
    notes = []
    if guidances == {"none"}:
        notes.append("no guided - unguided deltas: the run samples without guidance (guidance.name none)")
    elif "none" not in guidances:
        notes.append("no guided - unguided deltas: no unguided twin to pair with (guidance.compare_unguided false)")
    if baseline_method is not None and baseline_method not in methods:
        notes.append(f"no method deltas: metrics.baseline_method {baseline_method!r} has no rows here")
    elif baseline_method is not None and len(methods) < 2:
        notes.append(f"no method deltas: {baseline_method} is the only method")
    return notes


def paired_delta_table(scores: pd.DataFrame, bootstrap: int = 1000, baseline_method: str | None = None,
                       seed: int = 0) -> tuple[pd.DataFrame, list[str]]:
    """(deltas, notes): per method, guided minus unguided (comparison `guided - unguided`), and with a
    `baseline_method`, every other method minus it under each guidance (`vs <baseline>`); per metric and split
    (all / object / live), paired per image (`stats.paired_differences`) and bootstrapped as the table's
    means (`interval`). notes: why a kind of delta is missing (no unguided twin, ...) or a pair failed."""
    metrics = [c.name for c in present_columns(scores.columns)]
    notes = delta_notes(set(scores["guidance"]), set(scores["method"]), baseline_method)
    splits = [("all", scores)] + [(k, scores[scores["kind"] == k]) for k in ("object", "live") if (scores["kind"] == k).any()]
    comparisons = []  # (comparison, method, guidance, column, treatment, control, rows)
    if "none" in set(scores["guidance"]):
        for method, group in scores.groupby("method", sort=False):
            for g in [g for g in dict.fromkeys(group["guidance"]) if g != "none"]:
                comparisons.append((GUIDED, method, g, "guidance", g, "none", scores["method"] == method))
    if baseline_method is not None and baseline_method in set(scores["method"]):
        for g in dict.fromkeys(scores["guidance"]):
            arm = scores["guidance"] == g
            for method in [m for m in dict.fromkeys(scores.loc[arm, "method"]) if m != baseline_method]:
                if ((scores["method"] == baseline_method) & arm).any():
                    comparisons.append((f"vs {baseline_method}", method, g, "method", method, baseline_method, arm))
    rows = []
    for comparison, method, g, column, treatment, control, mask in comparisons:
        for split, part in splits:
            frame = part[mask.loc[part.index]]
            if not ((frame[column] == treatment).any() and (frame[column] == control).any()):
                continue
            try:
                diffs = paired_differences(frame, metrics, column, treatment, control)
            except ValueError as e:  # rows without a partner, or repeated keys: this comparison is not paired
                notes.append(f"{method} {comparison} ({g}, {split}): not compared, {e}")
                continue
            for m in metrics:
                defined = diffs[diffs[m].notna()]
                delta, lo, hi = interval(diffs, m, bootstrap, seed) if len(defined) else (np.nan, np.nan, np.nan)
                excludes = bool(lo > 0 or hi < 0)
                rows.append({"comparison": comparison, "method": method, "guidance": g, "split": split, "metric": m,
                             "delta": delta, "lo": lo, "hi": hi, "excludes_zero": excludes,
                             "n_subjects": int(defined["subject"].nunique()), "n_pairs": len(defined),
                             "treatment": treatment, "control": control,
                             "text": format_delta(delta, lo, hi, excludes, marker=DELTA_MARK)})
    return pd.DataFrame(rows, columns=DELTA_COLUMNS), notes


def deltas_layout(deltas: pd.DataFrame, split: str = "all", labels: dict[str, str] | None = None) -> pd.DataFrame:
    """Rows = (method, guidance, comparison), columns = metrics: 'delta [lo, hi]*' cells, and the subjects paired."""
    part = deltas[deltas["split"] == split]
    columns = [c for c in present_columns(part["metric"].unique()) if c.name in set(part["metric"])]
    rows = []
    for (comparison, method, g), group in part.groupby(["comparison", "method", "guidance"], sort=False):
        by_metric = group.set_index("metric")
        row = {"Method": method, "Guidance": (labels or {}).get(g, g), "Comparison": comparison}
        for c in columns:
            row[c.label] = by_metric.loc[c.name, "text"] if c.name in by_metric.index else "–"
        row["Subjects"] = int(group["n_subjects"].max())
        rows.append(row)
    return pd.DataFrame(rows)


def method_summary(bootstrap: int) -> str:
    """`method_note` in one line (the HTML report shows it under the scores, the full note folded below)."""
    ci = (f"95% intervals: two-stage bootstrap ({bootstrap} resamples), subjects then prompts within subject "
          "(conservative: up to about 1.4x wide)") if bootstrap > 0 else "no intervals (metrics.bootstrap: 0)"
    return f"Means over (subject, prompt) cells; {ci}; deltas paired per image, {DELTA_MARK}: the interval excludes 0."


def method_note(bootstrap: int) -> str:
    """The report's note under the tables: what the means, intervals and deltas are."""
    if bootstrap <= 0:
        ci = "No intervals (metrics.bootstrap: 0)."
    else:
        ci = (f"95% intervals: percentile bootstrap, {bootstrap} resamples, seeded, two-stage: subjects drawn with "
              "replacement, then each drawn subject's prompts (a cell's images are averaged, not resampled); with one "
              "subject, its prompts only. Subjects are the primary unit because a subject's cells share its fit and "
              "references. Conservative: when subjects do not differ the interval is about 1.4x too wide (coverage "
              "about 97-98% at a nominal 95%).")
    return ("Method: means are over (subject, prompt) cells, each the mean of its images (with every subject "
            f"scored on the same number of prompts, the mean over subjects). {ci} Deltas are paired per image on "
            "(subject, prompt, image index, seed), the two arms sharing the initial noise, and bootstrapped the same "
            f"way; {DELTA_MARK} marks a delta whose 95% interval excludes 0 (deltas.csv).")


def _fmt(row: pd.Series, m: str) -> str:
    if np.isnan(row[m]):
        return "–"
    half = (row[f"{m}_hi"] - row[f"{m}_lo"]) / 2
    return f"{row[m]:.3f} ± {half:.3f}" if np.isfinite(half) else f"{row[m]:.3f}"


def paper_layout(table: pd.DataFrame, published: bool = False, split: str = "all", labels: dict[str, str] | None = None) -> pd.DataFrame:
    """Rows = method (each without / with guidance), columns = metrics, for one split (all, object,
    live); with `published`, the published DreamBench rows follow (real-scale runs only). `labels`: how to
    name a guidance value (an all-terms-off setting is 'unguided ...', see `ablation.guidance_label`)."""
    overall = table[table["split"] == split]
    columns = present_columns(overall.columns)
    out = pd.DataFrame({"Method": overall["method"], "Guidance": [(labels or {}).get(g, g) for g in overall["guidance"]]})
    for c in columns:
        out[c.label] = [_fmt(r, c.name) for _, r in overall.iterrows()]
    if published:
        rows = []
        for name, values in PUBLISHED.items():
            row = {"Method": f"published: {name}", "Guidance": "–"}
            for c in columns:
                value = values.get(c.name, float("nan"))
                row[c.label] = "–" if np.isnan(value) else f"{value:.3f}"
            rows.append(row)
        out = pd.concat([out, pd.DataFrame(rows)], ignore_index=True)
    return out.reset_index(drop=True)


LATEX_ESCAPES = {"\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "$": r"\$", "{": r"\{", "}": r"\}",
                 "±": r"$\pm$", "✓": r"$\checkmark$", "✗": r"$\times$"}


def latex_cell(value: Any) -> str:
    """A table cell as LaTeX: special characters escaped, ± -> $\\pm$, ✓ / ✗ -> $\\checkmark$ / $\\times$
    (amssymb), **bold** -> \\textbf{bold}."""
    import re

    text = re.sub("[" + re.escape("".join(LATEX_ESCAPES)) + "]", lambda m: LATEX_ESCAPES[m.group()], str(value))
    return re.sub(r"\*\*(.+?)\*\*", r"\\textbf{\1}", text)


def to_latex(frame: pd.DataFrame, n_text: int = 2, note: str = "", centred: list[str] | None = None) -> str:
    """A booktabs tabular: the first `n_text` columns left-aligned, the rest centred (or, given `centred`, those
    columns centred and the others left-aligned); `note` as % comment lines above it."""
    cols = list(frame.columns)
    align = ["c" if c in centred else "l" for c in cols] if centred is not None else \
        ["l" if k < n_text else "c" for k in range(len(cols))]
    lines = [f"% {line}" for line in note.splitlines() if line.strip()]
    lines += [r"\begin{tabular}{" + "".join(align) + "}", r"\toprule",
              " & ".join(latex_cell(c) for c in cols) + r" \\", r"\midrule"]
    for row in frame.itertuples(index=False):
        lines.append(" & ".join(latex_cell(v) for v in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", ""]
    return "\n".join(lines)


def deltas_markdown(deltas: pd.DataFrame, notes: list[str], labels: dict[str, str] | None = None) -> list[str]:
    """The deltas section of table.md: the overall deltas table, then why any kind of delta is missing."""
    parts = []
    layout = deltas_layout(deltas, labels=labels) if len(deltas) else pd.DataFrame()
    if len(layout):
        parts += [f"**Paired deltas** (per image, mean [95% interval]; {DELTA_MARK}: the interval excludes 0)", "",
                  markdown_table(layout), ""]
    parts += [f"_{n}_" for n in notes] + ([""] if notes else [])
    return parts


def read_point_config(point_dir: Path) -> dict[str, Any] | None:
    path = point_dir / "config.yaml"
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def write_point_tables(point_dir: Path, scores: pd.DataFrame, bootstrap: int, baseline_method: str | None = None,
                       config: dict[str, Any] | None = None, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Write `table.{csv,md,tex}` and `deltas.csv` of one point; returns (table, deltas, notes). `config`: the
    point's resolved config (default: its config.yaml), which names an all-terms-off setting unguided."""
    config = config if config is not None else read_point_config(point_dir)
    table = aggregate(scores, bootstrap, seed)
    labels = {g: guidance_label(g, config) for g in table["guidance"].unique()} if len(table) else {}
    table["guidance_label"] = table["guidance"].map(labels)
    with atomic_path(point_dir / "table.csv") as tmp:
        table.to_csv(tmp, index=False)
    deltas, notes = paired_delta_table(scores, bootstrap, baseline_method, seed)
    with atomic_path(point_dir / "deltas.csv") as tmp:
        deltas.to_csv(tmp, index=False)
    layout = paper_layout(table, labels=labels)
    parts = [markdown_table(layout), ""] + deltas_markdown(deltas, notes, labels)
    for split in ("object", "live"):
        if (table["split"] == split).any():
            parts += [f"**{split} subjects**", "", markdown_table(paper_layout(table, split=split, labels=labels)), ""]
            if (deltas["split"] == split).any():
                parts += [markdown_table(deltas_layout(deltas, split, labels)), ""]
    note = method_note(bootstrap)
    write_text(point_dir / "table.md", "\n".join(parts + [note, ""]))
    tex = to_latex(layout, note=note)
    if len(deltas):
        tex += "\n" + to_latex(deltas_layout(deltas, labels=labels), note=f"Paired deltas, mean [95% interval]; {DELTA_MARK}: "
                               "the interval excludes 0", centred=[c.label for c in present_columns(scores.columns)] + ["Subjects"])
    write_text(point_dir / "table.tex", tex)
    return table, deltas, notes


def write_tables(point_dir: Path, scores: pd.DataFrame, bootstrap: int, baseline_method: str | None = None) -> pd.DataFrame:
    """`write_point_tables`, returning the table (the runner's call)."""
    return write_point_tables(point_dir, scores, bootstrap, baseline_method)[0]
