"""Aggregate per-image scores into the paper's table, with 95% bootstrap intervals.

per image -> per (method, guidance, subject, prompt) -> per (method, guidance), overall and split by
DreamBench kind (live / object). Intervals resample the (subject, prompt) cells with replacement.
Written as CSV, Markdown and LaTeX (booktabs). Reads only the run store. Which columns, in which order
and under which labels: the registered metrics' specs (`reports/metrics/spec.py`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..core.atomic import atomic_path, write_text
from .markdown import markdown_table
from .metrics.spec import present_columns

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


def bootstrap_ci(values: np.ndarray, n: int, seed: int = 0) -> tuple[float, float]:
    values = values[~np.isnan(values)]
    if n == 0 or len(values) < 2:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (n, len(values)))].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def aggregate(scores: pd.DataFrame, bootstrap: int = 1000) -> pd.DataFrame:
    metrics = [c.name for c in present_columns(scores.columns)]  # every spec's aggregation is the mean
    cells = scores.groupby(KEYS + ["kind", "subject", "prompt_template"], sort=False)[metrics].mean().reset_index()
    rows = []
    for split, part in [("all", cells)] + [(k, cells[cells["kind"] == k]) for k in ("object", "live")]:
        for key, group in part.groupby(KEYS, sort=False):
            row = dict(zip(KEYS, key), split=split, cells=len(group))
            for m in metrics:
                vals = group[m].to_numpy(dtype=float)
                row[m] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
                row[f"{m}_lo"], row[f"{m}_hi"] = bootstrap_ci(vals, bootstrap)
            rows.append(row)
    return pd.DataFrame(rows)


def _fmt(row: pd.Series, m: str) -> str:
    if np.isnan(row[m]):
        return "–"
    half = (row[f"{m}_hi"] - row[f"{m}_lo"]) / 2
    return f"{row[m]:.3f} ± {half:.3f}" if np.isfinite(half) else f"{row[m]:.3f}"


def paper_layout(table: pd.DataFrame, published: bool = False, split: str = "all") -> pd.DataFrame:
    """Rows = method (each without / with guidance), columns = metrics, for one split (all, object,
    live); with `published`, the published DreamBench rows follow (real-scale runs only)."""
    overall = table[table["split"] == split]
    columns = present_columns(overall.columns)
    out = pd.DataFrame({"Method": overall["method"], "Guidance": overall["guidance"]})
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


def to_latex(frame: pd.DataFrame) -> str:
    cols = list(frame.columns)
    lines = [r"\begin{tabular}{" + "l" * 2 + "c" * (len(cols) - 2) + "}", r"\toprule", " & ".join(cols) + r" \\", r"\midrule"]
    for row in frame.itertuples(index=False):
        lines.append(" & ".join(str(v).replace("±", r"$\pm$").replace("_", r"\_") for v in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", ""]
    return "\n".join(lines)


def write_tables(point_dir: Path, scores: pd.DataFrame, bootstrap: int) -> pd.DataFrame:
    table = aggregate(scores, bootstrap)
    with atomic_path(point_dir / "table.csv") as tmp:
        table.to_csv(tmp, index=False)
    layout = paper_layout(table)
    parts = [markdown_table(layout), ""]
    for split in ("object", "live"):
        if (table["split"] == split).any():
            parts += [f"**{split} subjects**", "", markdown_table(paper_layout(table, split=split)), ""]
    write_text(point_dir / "table.md", "\n".join(parts))
    write_text(point_dir / "table.tex", to_latex(layout))
    return table
