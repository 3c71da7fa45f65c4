"""One static HTML report per run: tables, trade-off curves, per-subject image grids.

It opens from disk: images are referenced by relative path (generated images in the store) or
copied beside it (reference images), nothing is fetched.
"""

from __future__ import annotations

import html
import re
import shutil
from pathlib import Path

import pandas as pd

from ..core.atomic import write_text

STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222}
table{border-collapse:collapse;margin:8px 0 20px}td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px}
th{background:#f2f2f2}.grid img{width:96px;height:96px;image-rendering:pixelated;display:block}
.grid td{vertical-align:top;text-align:center;font-size:11px}.curves img{max-width:560px;margin-right:12px}
.note{font-size:12px;color:#555;max-width:900px;margin:4px 0}table.scores td{white-space:nowrap}
"""


def _inline(text: str) -> str:
    """Escaped text with Markdown's **bold** as <b> and `code` as <code> (the tables' and notes' only markup)."""
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(text))
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)


def _table_html(frame: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(f"<td>{_inline(str(v))}</td>" for v in row) + "</tr>" for row in frame.itertuples(index=False))
    return f'<table class="scores"><tr>{head}</tr>{body}</table>'


def _note_html(text: str) -> str:
    return "".join(f'<p class="note">{_inline(line)}</p>' for line in text.splitlines() if line.strip())


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
               references: dict[str, Path], title: str, sections: list[tuple[str, pd.DataFrame | None, str]] | None = None,
               note: str = "", details: str = "", appendix: list[tuple[str, pd.DataFrame | None, str]] | None = None) -> Path:
    """`note`: lines under the scores (the method in one line, why there are no deltas); `details`: the full method
    note, folded under them; `sections`: (heading, table or None, note text) after them (the paired deltas);
    `appendix`: the same, after the samples (the metric audit)."""

    def section(heading: str, frame: pd.DataFrame | None, text: str) -> list[str]:
        return ([f"<h2>{html.escape(heading)}</h2>"] + ([_table_html(frame)] if frame is not None and len(frame) else [])
                + ([_note_html(text)] if text else []))

    body = [f"<h1>{html.escape(title)}</h1>"]
    if table is not None:
        body += ["<h2>Scores</h2>", _table_html(table)] + ([_note_html(note)] if note else [])
        body += [f'<details class="note"><summary>how these numbers are computed</summary>{_note_html(details)}</details>'] \
            if details else []
    for item in sections or []:
        body += section(*item)
    if curves:
        imgs = "".join(f'<img src="{html.escape(p.name)}" alt="trade-off">' for p in curves if p.suffix == ".png")
        body += ["<h2>Trade-off</h2>", f'<div class="curves">{imgs}</div>']
        if (out_dir / "tradeoff.csv").is_file():  # the figures' rows: swept value, curve order, Pareto membership
            body += ['<p class="note">The figures\' points, their swept values and Pareto-front membership: '
                     '<a href="tradeoff.csv">tradeoff.csv</a></p>']
    body += ["<h2>Samples</h2>", subject_grid(run_root, out_dir, records, references)]
    for item in appendix or []:
        body += section(*item)
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{STYLE}</style></head>" \
           f"<body>{''.join(body)}</body></html>"
    path = out_dir / "index.html"
    write_text(path, page)
    return path
