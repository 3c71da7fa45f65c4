"""Rebuild every report of a run from its store: per-point summaries, the combined table, trade-off
curves, the HTML report and the W&B runs. Reads only the store (`persobench report` calls this)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from ..core.atomic import atomic_path, write_text
from ..core.errors import UserError
from .html import write_html
from .markdown import markdown_table
from .metrics.spec import axes, present_columns
from .summary import write_summary
from .tables import aggregate, paper_layout, to_latex
from .tradeoff import plot_tradeoff
from .wandb_log import log_to_wandb


def finished_points(run_root: Path) -> list[Path]:
    """Points in the order they were run (a sweep's order), so curves follow the swept knob."""
    points = [p for p in (run_root / "points").glob("*") if (p / "records.parquet").is_file()]
    return sorted(points, key=lambda p: ((p / "config.yaml").stat().st_mtime_ns, p.name))


def build_run_report(run_root: Path, wandb_mode: str | None = None) -> Path:
    points = finished_points(run_root)
    if not points:
        raise UserError(f"'{run_root}' holds no finished run points (expected points/*/records.parquet); pass a run folder")
    out = run_root / "report"
    records, scores = [], []
    for point in points:
        write_summary(run_root, point)
        records.append(pd.read_parquet(point / "records.parquet").assign(point=point.name))
        if (point / "scores.parquet").is_file():
            scores.append(pd.read_parquet(point / "scores.parquet").assign(point=point.name))
    records_all = pd.concat(records, ignore_index=True)
    config = yaml.safe_load((points[0] / "config.yaml").read_text())
    table, layout, curves = None, None, []
    if scores:
        frames = [aggregate(s, config["metrics"]["bootstrap"]).assign(point=s["point"].iloc[0], order=k) for k, s in enumerate(scores)]
        table = pd.concat(frames, ignore_index=True)
        with atomic_path(out / "table.csv") as tmp:
            table.to_csv(tmp, index=False)
        real_scale = config["dataset"]["name"] == "dreambench" and not config["metrics"]["dino_backbone"].startswith(("toy", "dino:"))
        layout = pd.concat([paper_layout(f, real_scale).assign(Point=f["point"].iloc[0]) for f in frames], ignore_index=True)
        if len(points) == 1:
            layout = layout.drop(columns="Point")
        write_text(out / "table.md", markdown_table(layout) + "\n")
        write_text(out / "table.tex", to_latex(layout))
        overall = table[table["split"] == "all"]
        for k, x in enumerate(axes("text")):  # one figure per (subject axis, text axis) the specs declare
            for y in axes("subject"):
                curves += plot_tradeoff(overall, y, out / (f"tradeoff-{y}" if k == 0 else f"tradeoff-{y}-vs-{x}"), x)
        mode = wandb_mode or config.get("report", {}).get("wandb", "offline")
        log_to_wandb(run_root, points, table, mode, config.get("report", {}).get("wandb_project", "persobench"))
    references = {r.subject: Path(r.reference) for r in records_all.drop_duplicates("subject").itertuples()
                  if "reference" in records_all and Path(r.reference).is_file()}
    return write_html(run_root, out, layout, records_all, curves, references, f"persobench run: {run_root.name}")


def results_table(point_dirs: list[Path]) -> str:
    """The run's results for the terminal: one row per (method, guidance) with each metric's mean over the
    (subject, prompt) cells, a guided row's change against the same method unguided in brackets; a Point
    column when there are several points. Empty when no point was scored."""
    tables = [pd.read_csv(p / "table.csv").assign(Point=p.name) for p in point_dirs if (p / "table.csv").is_file()]
    if not tables:
        return ""
    table = pd.concat(tables, ignore_index=True)
    table = table[table["split"] == "all"]
    columns = present_columns(table.columns)
    rows = []
    for row in table.to_dict("records"):
        plain = table[(table["Point"] == row["Point"]) & (table["method"] == row["method"]) & (table["guidance"] == "none")]
        out = {"Method": row["method"], "Guidance": row["guidance"]}
        for c in columns:
            value = row[c.name]
            cell = "–" if pd.isna(value) else f"{value:.3f}"
            if row["guidance"] != "none" and len(plain) and not pd.isna(value) and not pd.isna(plain[c.name].iloc[0]):
                cell += f" ({value - plain[c.name].iloc[0]:+.3f})"
            out[c.label] = cell
        rows.append(out | ({"Point": row["Point"]} if len(point_dirs) > 1 else {}))
    return markdown_table(pd.DataFrame(rows))


def report_paths(run_root: Path) -> list[Path]:
    """The report's trade-off figures (PNG) and HTML page, as `build_run_report` wrote them."""
    out = run_root / "report"
    return sorted(out.glob("tradeoff-*.png")) + [p for p in [out / "index.html"] if p.is_file()]
