"""Weights & Biases logging: one W&B run per operating point (point x method x guidance).

Resolved config in `wandb.config`, aggregate scores in `run.summary`, group = the run (sweep) name,
a `wandb.Table` of per-image scores with thumbnails (capped, W&B tables are for browsing, the store
keeps everything), and the trade-off scatter. Offline by default; the W&B folder lives in the run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import yaml
from PIL import Image

MAX_TABLE_ROWS = 200  # thumbnails per operating point
SCORE_COLUMNS = ["dino", "clip_i", "clip_t", "oracle_identity", "oracle_attributes", "oracle_context"]


def log_to_wandb(run_root: Path, points: list[Path], table: pd.DataFrame, mode: str, project: str) -> list[str]:
    if mode == "disabled":
        return []
    os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    overall = table[table["split"] == "all"]
    scatter_rows = [[f"{r.point}/{r.method}/{r.guidance}", r.clip_t, r.dino] for r in overall.itertuples()
                    if "clip_t" in overall and "dino" in overall]
    ids = []
    for point in points:
        config = yaml.safe_load((point / "config.yaml").read_text())
        scores = pd.read_parquet(point / "scores.parquet") if (point / "scores.parquet").is_file() else None
        for row in overall[overall["point"] == point.name].itertuples():
            run = wandb.init(project=project, dir=str(run_root), mode=mode, group=run_root.name, reinit="create_new",
                             name=f"{point.name}/{row.method}/{row.guidance}",
                             config={**config, "operating_point": {"method": row.method, "guidance": row.guidance}})
            for m in SCORE_COLUMNS:
                if hasattr(row, m) and pd.notna(getattr(row, m)):
                    run.summary[m] = float(getattr(row, m))
            if scores is not None:
                sub = scores[(scores["method"] == row.method) & (scores["guidance"] == row.guidance)].head(MAX_TABLE_ROWS)
                cols = ["subject", "prompt", "index", "seed"] + [m for m in SCORE_COLUMNS if m in sub]
                data = [[*(r[c] for c in cols), wandb.Image(Image.open(run_root / r["image"]).convert("RGB"))] for _, r in sub.iterrows()]
                run.log({"images": wandb.Table(columns=cols + ["image"], data=data)})
            if scatter_rows:
                tradeoff = wandb.Table(columns=["operating_point", "clip_t", "dino"], data=scatter_rows)
                run.log({"tradeoff": wandb.plot.scatter(tradeoff, "clip_t", "dino", title="DINO vs CLIP-T")})
            ids.append(run.id)
            run.finish()
    return ids
