"""One static HTML report per run: tables, trade-off curves, per-subject image grids.

It opens from disk: images are referenced by relative path (generated images in the store) or
copied beside it (reference images), nothing is fetched.
"""

from __future__ import annotations

import html
import shutil
from pathlib import Path

import pandas as pd

from ..core.atomic import write_text

STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222}
table{border-collapse:collapse;margin:8px 0 20px}td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px}
th{background:#f2f2f2}.grid img{width:96px;height:96px;image-rendering:pixelated;display:block}
.grid td{vertical-align:top;text-align:center;font-size:11px}.curves img{max-width:560px;margin-right:12px}
"""


def _table_html(frame: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in frame.itertuples(index=False))
    return f'<table class="scores"><tr>{head}</tr>{body}</table>'


def subject_grid(run_root: Path, out_dir: Path, records: pd.DataFrame, references: dict[str, Path], max_prompts: int = 6) -> str:
    """Rows: prompts; columns: reference, then each (method, guidance) cell's first image."""
    parts = []
    columns = records[["method", "guidance"]].drop_duplicates().itertuples(index=False)
    columns = list(columns)
    for subject, rows in records.groupby("subject", sort=True):
        ref_html = ""
        if subject in references:
            target = out_dir / "refs" / f"{subject}{references[subject].suffix}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(references[subject], target)
            ref_html = f'<img src="refs/{html.escape(target.name)}" alt="reference {html.escape(subject)}">'
        head = "<th>prompt</th><th>reference</th>" + "".join(f"<th>{html.escape(m)}<br>{html.escape(g)}</th>" for m, g in columns)
        lines = [f"<h3>{html.escape(subject)}</h3><table class=\"grid\"><tr>{head}</tr>"]
        groups = list(rows.groupby("prompt_template", sort=False))[:max_prompts]
        for k, (_, prows) in enumerate(groups):
            cells = []
            for m, g in columns:
                hit = prows[(prows["method"] == m) & (prows["guidance"] == g)].sort_values("index")
                if len(hit):
                    rel = Path("..") / hit.iloc[0]["image"]
                    cells.append(f'<td><img src="{html.escape(rel.as_posix())}" alt="{html.escape(hit.iloc[0]["prompt"])}"></td>')
                else:
                    cells.append("<td>–</td>")
            caption = html.escape(prows.iloc[0]["clip_text"])
            ref_cell = f'<td rowspan="{len(groups)}">{ref_html}</td>' if k == 0 else ""
            lines.append(f"<tr><td>{caption}</td>{ref_cell}{''.join(cells)}</tr>")
        lines.append("</table>")
        parts.append("\n".join(lines))
    return "\n".join(parts)


def write_html(run_root: Path, out_dir: Path, table: pd.DataFrame | None, records: pd.DataFrame, curves: list[Path],
               references: dict[str, Path], title: str) -> Path:
    body = [f"<h1>{html.escape(title)}</h1>"]
    if table is not None:
        body += ["<h2>Scores</h2>", _table_html(table)]
    if curves:
        imgs = "".join(f'<img src="{html.escape(p.name)}" alt="trade-off">' for p in curves if p.suffix == ".png")
        body += ["<h2>Trade-off</h2>", f'<div class="curves">{imgs}</div>']
    body += ["<h2>Samples</h2>", subject_grid(run_root, out_dir, records, references)]
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{STYLE}</style></head>" \
           f"<body>{''.join(body)}</body></html>"
    path = out_dir / "index.html"
    write_text(path, page)
    return path
