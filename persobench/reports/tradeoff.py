"""Subject-fidelity vs text-fidelity trade-off plots (CLIP-T on x; DINO or CLIP-I on y).

One point per (point, method, guidance); an arrow from each method to its guided point; for sweeps,
the curve over the swept knob per method, and the Pareto front over all points. PNG + SVG.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from ..harness.atomic import atomic_path  # noqa: E402
from .pareto import pareto_front  # noqa: E402


def plot_tradeoff(table: pd.DataFrame, y: str, out_stem: Path) -> list[Path]:
    """`table`: the overall rows of one or many points' tables (with a 'point' column)."""
    if "clip_t" not in table or y not in table or table[[y, "clip_t"]].isna().all().any():
        return []
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (method, rows) in enumerate(table.groupby("method", sort=False)):
        colour = colours[k % len(colours)]
        for guidance, g in rows.groupby("guidance", sort=False):
            g = g.sort_values("order" if "order" in g else "point")
            marker = "o" if guidance == "none" else "*"
            ax.plot(g["clip_t"], g[y], marker=marker, ls="-" if len(g) > 1 else "", color=colour, label=f"{method} ({guidance})",
                    ms=8)
        plain, guided = rows[rows["guidance"] == "none"], rows[rows["guidance"] != "none"]
        for _, a in plain.iterrows():
            for _, b in guided[guided["point"] == a["point"]].iterrows():
                ax.annotate("", xy=(b["clip_t"], b[y]), xytext=(a["clip_t"], a[y]), arrowprops={"arrowstyle": "->", "color": colour})
    front = pareto_front(table["clip_t"].to_numpy(), table[y].to_numpy())
    if len(front) > 1:
        ax.plot(table["clip_t"].to_numpy()[front], table[y].to_numpy()[front], "k--", lw=1, label="Pareto front")
    ax.set_xlabel("CLIP-T (text fidelity)")
    ax.set_ylabel({"dino": "DINO", "clip_i": "CLIP-I"}.get(y, y) + " (subject fidelity)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    paths = []
    for suffix in (".png", ".svg"):
        path = out_stem.with_suffix(suffix)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=suffix[1:])
        paths.append(path)
    plt.close(fig)
    return paths
