"""Rebuild every report of a run from its store: per-point tables, paired deltas and summaries, the combined
table, a sweep's ablation table, trade-off curves, the HTML report and the W&B runs. Reads only the store
(`persobench report` calls this)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..core.atomic import atomic_path, write_text
from ..core.errors import UserError
from .ablation import ablation_note, guidance_label, setting_cells, swept_fields, write_ablation
from .audit import correlation_layout, headline, html_sections, write_audit
from .html import write_html
from .markdown import markdown_table
from .metrics.spec import present_columns
from .summary import write_summary
from .tables import (
    DELTA_MARK,
    GUIDED,
    delta_notes,
    deltas_layout,
    method_note,
    method_summary,
    paper_layout,
    read_point_config,
    to_latex,
    write_point_tables,
)
from .tradeoff import write_tradeoff
from .wandb_log import log_to_wandb


def finished_points(run_root: Path) -> list[Path]:
    """Points in the order they were run (a sweep's order; its curves are ordered by the swept value, tradeoff.py)."""
    points = [p for p in (run_root / "points").glob("*") if (p / "records.parquet").is_file()]
    return sorted(points, key=lambda p: ((p / "config.yaml").stat().st_mtime_ns, p.name))


def _with_settings(layout: pd.DataFrame, cells: dict[str, str] | list[dict[str, str]]) -> pd.DataFrame:
    rows = cells if isinstance(cells, list) else [cells] * len(layout)
    if not rows or not rows[0]:
        return layout
    return pd.concat([pd.DataFrame(rows, index=layout.index), layout], axis=1)


def build_run_report(run_root: Path, wandb_mode: str | None = None) -> Path:
    points = finished_points(run_root)
    if not points:
        raise UserError(f"'{run_root}' holds no finished run points (expected points/*/records.parquet); pass a run folder")
    out = run_root / "report"
    configs = {p.name: read_point_config(p) or {} for p in points}
    config = configs[points[0].name]
    settings_of = setting_cells([(p.name, configs[p.name]) for p in points])
    records, frames, delta_frames, layouts, delta_layouts = [], [], [], [], []
    noted: dict[str, list[str]] = {}  # note -> the points it is about
    scored: list[pd.DataFrame] = []  # every point's scores, for the metric audit (audit.py)
    real_scale = config["dataset"]["name"] == "dreambench" and not config["metrics"]["dino_backbone"].startswith(("toy", "dino:"))
    for k, point in enumerate(points):
        metrics_cfg = configs[point.name].get("metrics", {})
        if (point / "scores.parquet").is_file():  # the point's tables and deltas first: its summary shows them
            scores = pd.read_parquet(point / "scores.parquet")
            table, deltas, point_notes = write_point_tables(point, scores, metrics_cfg.get("bootstrap", 1000),
                                                            metrics_cfg.get("baseline_method"), configs[point.name])
            frames.append(table.assign(point=point.name, order=k))
            scored.append(scores.assign(point=point.name))
            delta_frames.append(deltas.assign(point=point.name))
            for n in point_notes:
                noted.setdefault(n, []).append(point.name)
            labels = dict(zip(table["guidance"], table["guidance_label"]))
            overall = table[table["split"] == "all"]
            layout = paper_layout(table, real_scale, labels=labels)
            cells = [settings_of(point.name, g) for g in overall["guidance"]]
            published = [dict.fromkeys(cells[0], "–") if cells else {}] * (len(layout) - len(cells))
            layouts.append(_with_settings(layout, cells + published).assign(Point=point.name))
            if len(deltas):
                d_layout = deltas_layout(deltas, labels=labels)
                part = deltas[deltas["split"] == "all"].drop_duplicates(["comparison", "method", "guidance"])
                delta_layouts.append(_with_settings(d_layout, [settings_of(point.name, g) for g in part["guidance"]])
                                     .assign(Point=point.name))
        write_summary(run_root, point)
        records.append(pd.read_parquet(point / "records.parquet").assign(point=point.name))
    records_all = pd.concat(records, ignore_index=True)
    layout, page_table, curves, sections, note, audited = None, None, [], [], "", None
    notes = [n if len(names) == len(points) else f"{', '.join(names)}: {n}" for n, names in noted.items()]
    if frames:
        table = pd.concat(frames, ignore_index=True)
        deltas = pd.concat(delta_frames, ignore_index=True)
        with atomic_path(out / "table.csv") as tmp:
            table.to_csv(tmp, index=False)
        with atomic_path(out / "deltas.csv") as tmp:
            deltas.to_csv(tmp, index=False)
        layout = pd.concat(layouts, ignore_index=True)
        delta_layout = pd.concat(delta_layouts, ignore_index=True) if delta_layouts else pd.DataFrame()
        if len(points) == 1:
            layout = layout.drop(columns="Point")
            delta_layout = delta_layout.drop(columns="Point", errors="ignore")
        bootstrap = int(config.get("metrics", {}).get("bootstrap", 1000))
        method = method_note(bootstrap)
        delta_head = f"Paired deltas (per image, mean [95% interval]; {DELTA_MARK}: the interval excludes 0)"
        md = [markdown_table(layout), ""]
        if len(delta_layout):
            md += [f"**{delta_head}**", "", markdown_table(delta_layout), ""]
        md += [f"_{n}_" for n in notes] + ([""] if notes else []) + [method, ""]
        note = [method_summary(bootstrap)] + ([] if len(delta_layout) else notes)  # the HTML's; no deltas at all: why
        audited = write_audit(out, pd.concat(scored, ignore_index=True), table, bootstrap)  # ToyBench only: None elsewhere
        if audited is not None:
            md += ["**Metric audit against the toy world's oracle** (audit.md, audit.csv)", "",
                   markdown_table(correlation_layout(audited)), "", f"Operating points: {headline(audited)}.", ""]
        write_text(out / "table.md", "\n".join(md))
        centred = [c.label for c in present_columns(table.columns)] + ["Subjects"]
        tex = to_latex(layout, note=method, centred=centred)
        if len(delta_layout):
            tex += "\n" + to_latex(delta_layout, note=delta_head, centred=centred)
        write_text(out / "table.tex", tex)
        if len(delta_layout):
            sections.append(("Paired deltas", delta_layout, "\n".join([f"{delta_head}."] + notes)))
        page_table = layout
        if len(points) > 1:  # a sweep: the ablation table across its points, also the page's scores table
            page_table = write_ablation(out, table, configs, method)
            note.insert(1, ablation_note(swept_fields([(p.name, configs[p.name]) for p in points])) + " (report/ablation.*)")
        overall = table[table["split"] == "all"]
        curves = write_tradeoff(overall, configs, out)  # one figure per (subject axis, text axis); a sweep's curves
        mode = wandb_mode or config.get("report", {}).get("wandb", "offline")
        log_to_wandb(run_root, points, table, mode, config.get("report", {}).get("wandb_project", "persobench"), deltas, curves)
    references = {r.subject: Path(r.reference) for r in records_all.drop_duplicates("subject").itertuples()
                  if "reference" in records_all and Path(r.reference).is_file()}
    return write_html(run_root, out, page_table, records_all, curves, references, f"persobench run: {run_root.name}", sections,
                      "\n".join(note), method if frames else "", html_sections(audited) if audited is not None else None)


def _cell(value: float, delta: dict | None) -> str:
    if pd.isna(value):
        return "–"
    if delta is None or pd.isna(delta["delta"]):
        return f"{value:.3f}"
    return f"{value:.3f} ({delta['delta']:+.3f}{DELTA_MARK if delta['excludes_zero'] else ''})"


def results_table(point_dirs: list[Path]) -> str:
    """The run's results for the terminal: one row per (method, guidance) with each metric's mean over the
    (subject, prompt) cells; a guided row's paired change against the same method unguided in brackets,
    marked when its 95% interval excludes 0 (`deltas.csv`; without one, the plain difference of the means);
    a sweep's rows are led by its swept fields. Then a legend, why a point has no deltas, and a sweep's
    ablation table. Empty when no point was scored."""
    dirs = [p for p in point_dirs if (p / "table.csv").is_file()]
    if not dirs:
        return ""
    table = pd.concat([pd.read_csv(p / "table.csv").assign(Point=p.name) for p in dirs], ignore_index=True)
    table = table[table["split"] == "all"]
    deltas = {}
    for p in dirs:
        if (p / "deltas.csv").is_file():
            d = pd.read_csv(p / "deltas.csv")
            for r in d[(d["split"] == "all") & (d["comparison"] == GUIDED)].to_dict("records"):
                deltas[(p.name, r["method"], r["guidance"], r["metric"])] = r
    configs = {p.name: read_point_config(p) or {} for p in dirs}
    settings_of = setting_cells([(p.name, configs[p.name]) for p in dirs])
    columns = present_columns(table.columns)
    rows, shown, notes = [], False, []
    for row in table.to_dict("records"):
        point, method, guidance = row["Point"], row["method"], row["guidance"]
        plain = table[(table["Point"] == point) & (table["method"] == method) & (table["guidance"] == "none")]
        out = {**settings_of(point, guidance), "Method": method, "Guidance": guidance_label(guidance, configs[point])}
        for c in columns:
            delta = None
            if guidance != "none":
                delta = deltas.get((point, method, guidance, c.name))
                if delta is None and not (dirs[0].parent / point / "deltas.csv").is_file() and len(plain):
                    delta = {"delta": row[c.name] - plain[c.name].iloc[0], "excludes_zero": False}  # a store from before deltas
            shown |= delta is not None and not pd.isna(delta["delta"])
            out[c.label] = _cell(row[c.name], delta)
        if out not in rows:  # a sweep's unguided rows repeat per point (the same images): once
            rows.append(out)
    for p in dirs:
        part = table[table["Point"] == p.name]
        notes += [n for n in delta_notes(set(part["guidance"]), set(part["method"]), None) if n not in notes]
    lines = [markdown_table(pd.DataFrame(rows))]
    if shown:
        lines.append(f"(+x): paired change vs the same method unguided; {DELTA_MARK}: its 95% interval excludes 0 "
                     "(intervals and live/object splits: points/<point>/deltas.csv, table.md)")
    lines += notes
    ablation = dirs[0].parent.parent / "report" / "ablation.md"
    if len(dirs) > 1 and ablation.is_file():
        lines.append(f"ablation table: {ablation}")
    return "\n".join(lines)


def report_paths(run_root: Path) -> list[Path]:
    """The report's trade-off figures (PNG) and HTML page, as `build_run_report` wrote them."""
    out = run_root / "report"
    return sorted(out.glob("tradeoff-*.png")) + [p for p in [out / "index.html"] if p.is_file()]
