"""Weights & Biases logging: one W&B run per operating point (point x method x guidance).

Resolved config in `wandb.config`, aggregate scores in `run.summary`, group = the run (sweep) name,
a `wandb.Table` of per-image scores with thumbnails (capped, W&B tables are for browsing, the store
keeps everything), and the trade-off scatter. Offline by default; the W&B folder lives in the run.
The score columns and the scatter's axes come from the registered metrics' specs.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import yaml
from PIL import Image

from .metrics.spec import axes, label, present_columns

MAX_TABLE_ROWS = 200  # thumbnails per operating point


def log_to_wandb(run_root: Path, points: list[Path], table: pd.DataFrame, mode: str, project: str) -> list[str]:
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
                             config={**config, "operating_point": {"method": row["method"], "guidance": row["guidance"]}})
            for m in score_columns:
                if pd.notna(row[m]):
                    run.summary[m] = float(row[m])
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
    return ids
