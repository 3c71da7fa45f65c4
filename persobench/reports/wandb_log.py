"""Weights & Biases logging: one W&B run per operating point (point x method x guidance).

Resolved config in `wandb.config`, aggregate scores in `run.summary`, group = the run (sweep) name,
a `wandb.Table` of per-image scores with thumbnails (capped, W&B tables are for browsing, the store
keeps everything), and the trade-off scatter. Offline by default; the W&B folder lives in the run.
The score columns and the scatter's axes come from the registered metrics' specs.

Paired deltas (`points/<p>/deltas.csv`) go to the run of their treatment row: the overall split in
`run.summary` as `delta_vs_unguided/<metric>` (guided minus the same method unguided) or
`delta_vs_<baseline>/<metric>` (minus metrics.baseline_method), each with `_lo` / `_hi`, and every split
as a `deltas` table.

A sweep (a run of two or more points) also gets one summary run, `<run>/sweep` (job type `sweep-summary`,
same group), so the W&B project alone tells the story: config = the shared config with each swept field's
values and the points' settings; `combined` (every point x method x guidance x split, with the swept fields),
`ablation` (the ablation table as `report/ablation.md` shows it) and `tradeoff_points` (the figures' rows,
`report/tradeoff.csv`) tables; for a one-dimensional sweep of a continuous knob, one native line plot per
trade-off axis metric, `curve/<metric>`: x = the swept value (a list-valued field's first element, e.g.
`guidance.step_size`'s first step), one series per method (per method and guidance when both arms move),
in value order; and the trade-off figures as images (`figure/<name>`).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from PIL import Image

from .ablation import ablation_table
from .metrics.spec import axes, label, present_columns
from .tradeoff import CURVE, drawn_label, drawn_rows, scalar_value, setting_columns, value_text

MAX_TABLE_ROWS = 200  # thumbnails per operating point
DELTA_TABLE_COLUMNS = ["comparison", "split", "metric", "delta", "lo", "hi", "excludes_zero", "n_subjects", "n_pairs"]


def delta_key(comparison: str) -> str:
    """deltas.csv's comparison -> the W&B summary prefix: 'guided - unguided' -> delta_vs_unguided, 'vs x' -> delta_vs_x."""
    return "delta_vs_unguided" if comparison == "guided - unguided" else "delta_" + comparison.replace(" ", "_")


def log_to_wandb(run_root: Path, points: list[Path], table: pd.DataFrame, mode: str, project: str,
                 deltas: pd.DataFrame | None = None, figures: list[Path] | None = None) -> list[str]:
    """One run per operating point; a sweep (2+ points) also its summary run (`log_sweep_summary`). `figures`:
    the report's trade-off figures (the summary run shows their PNGs). Returns the runs' ids."""
    if mode == "disabled":
        return []
    os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    overall = table[table["split"] == "all"]
    score_columns = [c.name for c in present_columns(table.columns)]
    x = next(iter(axes("text")), None)  # the scatter: the first subject-fidelity axis against the first text one
    y = next(iter(axes("subject")), None)
    scatter_rows = [[f"{r['point']}/{r['method']}/{r['guidance']}", r[x], r[y]] for r in overall.to_dict("records")
                    if x in overall and y in overall]
    ids = []
    for point in points:
        config = yaml.safe_load((point / "config.yaml").read_text())
        scores = pd.read_parquet(point / "scores.parquet") if (point / "scores.parquet").is_file() else None
        for row in overall[overall["point"] == point.name].to_dict("records"):
            run = wandb.init(project=project, dir=str(run_root), mode=mode, group=run_root.name, reinit="create_new",
                             name=f"{point.name}/{row['method']}/{row['guidance']}",
                             config={**config, "operating_point": {"method": row["method"], "guidance": row["guidance"],
                                                                   "guidance_label": row.get("guidance_label", row["guidance"])}})
            for m in score_columns:
                if pd.notna(row[m]):
                    run.summary[m] = float(row[m])
            mine = pd.DataFrame()
            if deltas is not None and len(deltas):
                mine = deltas[(deltas["point"] == point.name) & (deltas["method"] == row["method"])
                              & (deltas["guidance"] == row["guidance"])]
            for d in mine[mine["split"] == "all"].to_dict("records") if len(mine) else []:
                for suffix, value in (("", d["delta"]), ("_lo", d["lo"]), ("_hi", d["hi"])):
                    if pd.notna(value):
                        run.summary[f"{delta_key(d['comparison'])}/{d['metric']}{suffix}"] = float(value)
            if len(mine):
                run.log({"deltas": wandb.Table(columns=DELTA_TABLE_COLUMNS, data=[
                    [v.item() if hasattr(v, "item") else v for v in r] for r in mine[DELTA_TABLE_COLUMNS].itertuples(index=False)])})
            if scores is not None:
                sub = scores[(scores["method"] == row["method"]) & (scores["guidance"] == row["guidance"])].head(MAX_TABLE_ROWS)
                cols = ["subject", "prompt", "index", "seed"] + [m for m in score_columns if m in sub]
                data = [[*(r[c] for c in cols), wandb.Image(Image.open(run_root / r["image"]).convert("RGB"))] for _, r in sub.iterrows()]
                run.log({"images": wandb.Table(columns=cols + ["image"], data=data)})
            if scatter_rows:
                tradeoff = wandb.Table(columns=["operating_point", x, y], data=scatter_rows)
                run.log({"tradeoff": wandb.plot.scatter(tradeoff, x, y, title=f"{label(y)} vs {label(x)}")})
            ids.append(run.id)
            run.finish()
    if len(points) > 1:
        configs = {p.name: yaml.safe_load((p / "config.yaml").read_text()) or {} for p in points}
        ids.append(log_sweep_summary(run_root, table, configs, mode, project, figures or []))
    return ids


def _cell(value: Any) -> Any:
    """A W&B table cell: numpy scalars as Python ones, lists and None as text."""
    value = value.item() if hasattr(value, "item") else value
    return value_text(value) if isinstance(value, list) or value is None else value


def _wandb_table(wandb, frame: pd.DataFrame):
    return wandb.Table(columns=[str(c) for c in frame.columns], data=[[_cell(v) for v in r] for r in frame.itertuples(index=False)])


def _set(config: dict[str, Any], dotted: str, value: Any) -> None:
    node = config
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {}) if isinstance(node.get(part, {}), dict) else {}
    node[leaf] = value


def sweep_curves(rows: pd.DataFrame, metric: str) -> tuple[list[list[float]], list[list[float]], list[str]]:
    """(xs, ys, keys) of a 1-D sweep's curves for `metric`: one series per curve of the drawn rows (`drawn_rows`),
    x = the swept value as a number, in value order; a series is named by its method (and its guidance when
    both arms have curves)."""
    curves = rows[rows["curve"] != ""]
    several = curves["guidance"].nunique() > 1
    xs, ys, keys = [], [], []
    for curve, g in curves.groupby("curve", sort=False):
        g = g.sort_values("rank")
        method, guidance = curve.split("|", 1)
        xs.append([scalar_value(v) for v in g["value"]])
        ys.append([float(v) for v in g[metric]])
        keys.append(f"{method} ({drawn_label(guidance, None)})" if several else method)
    return xs, ys, keys


def log_sweep_summary(run_root: Path, table: pd.DataFrame, configs: dict[str, dict[str, Any]], mode: str, project: str,
                      figures: list[Path]) -> str:
    """The sweep's summary run (see the module's docstring); returns its id."""
    import wandb

    overall = table[table["split"] == "all"]
    rows, sweep = drawn_rows(overall, configs)
    base = copy.deepcopy(next(iter(configs.values())))
    for f in sweep.fields:  # the shared config, each swept field holding its values (in value order for a curve)
        values = list({value_text(v[f]): v[f] for v in sweep.values.values()}.values())
        _set(base, f, sorted(values, key=lambda v: tuple(v) if isinstance(v, list) else (v,)) if sweep.kind == CURVE else values)
    config = {**base, "sweep_summary": {"fields": sweep.fields, "kind": sweep.kind,
                                        "points": {p: {f: _cell(v) for f, v in vals.items()} for p, vals in sweep.values.items()}}}
    run = wandb.init(project=project, dir=str(run_root), mode=mode, group=run_root.name, reinit="create_new",
                     name=f"{run_root.name}/sweep", job_type="sweep-summary", config=config)
    combined = table.assign(**setting_columns(sweep, table))
    lead = ["point", *sweep.fields, "method", "guidance"]
    combined = combined[lead + [c for c in combined.columns if c not in lead and c != "order"]]
    _, layout = ablation_table(table, configs)
    drawn = rows.drop(columns=["value"]).assign(**setting_columns(sweep, rows))
    logged = {"combined": _wandb_table(wandb, combined), "ablation": _wandb_table(wandb, layout.astype(str)),
              "tradeoff_points": _wandb_table(wandb, drawn[[c for c in drawn.columns if c not in ("order",)]])}
    if sweep.kind == CURVE:
        xname = sweep.field + ("[0]" if any(isinstance(v[sweep.field], list) for v in sweep.values.values()) else "")
        for metric in [m for m in axes("subject") + axes("text") if m in rows and rows[m].notna().any()]:
            xs, ys, keys = sweep_curves(rows, metric)
            if keys:
                logged[f"curve/{metric}"] = wandb.plot.line_series(xs, ys, keys=keys, title=f"{label(metric)} vs {sweep.field}",
                                                                   xname=xname)
    for path in figures:
        if path.suffix == ".png" and path.is_file():
            logged[f"figure/{path.stem}"] = wandb.Image(str(path))
    run.log(logged)
    run.summary["sweep/fields"] = ", ".join(sweep.fields)
    run.summary["sweep/points"] = len(configs)
    run_id = run.id
    run.finish()
    return run_id
