"""A run point's summary: image counts and timings per method, and a contact sheet per method.

Reads only the run store (records.parquet and the PNGs), never live models.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from PIL import Image

from ..core.atomic import write_png, write_text
from .markdown import markdown_table

THUMB = 64


def contact_sheet(store_root: Path, frame: pd.DataFrame, max_cols: int = 8) -> Image.Image:
    """Rows = subjects; columns = the first image of each prompt (up to max_cols)."""
    rows = []
    for _, group in frame.sort_values(["subject", "prompt_index", "index"]).groupby("subject", sort=True):
        firsts = group[group["index"] == group["index"].min()].head(max_cols)
        rows.append([Image.open(store_root / p).convert("RGB").resize((THUMB, THUMB)) for p in firsts["image"]])
    width = max((len(r) for r in rows), default=1)
    sheet = Image.new("RGB", (width * THUMB, max(1, len(rows)) * THUMB), "white")
    for y, row in enumerate(rows):
        for x, im in enumerate(row):
            sheet.paste(im, (x * THUMB, y * THUMB))
    return sheet


def write_summary(store_root: Path, point_dir: Path) -> Path:
    frame = pd.read_parquet(point_dir / "records.parquet")
    table = (
        frame.groupby(["method", "guidance"], sort=False)
        .agg(subjects=("subject", "nunique"), prompts=("prompt_template", "nunique"), images=("image", "count"),
             seconds_per_image=("seconds", "mean"))
        .reset_index()
    )
    lines = [f"# Run summary: {point_dir.name}", "", markdown_table(table), ""]
    if (point_dir / "table.md").is_file():
        lines += ["## Scores (mean ± 95% bootstrap half-width)", "", (point_dir / "table.md").read_text(), ""]
    for method, group in frame.groupby("method", sort=False):
        sheet = point_dir / f"samples-{method}.png"
        write_png(sheet, contact_sheet(store_root, group))
        lines += [f"## {method}", "", f"![{method}]({sheet.name})", ""]
    out = point_dir / "summary.md"
    write_text(out, "\n".join(lines))
    return out
