"""Subject-fidelity vs text-fidelity trade-off plots: a text axis on x (CLIP-T), a subject axis on y (DINO,
CLIP-I); which columns are axes, and their labels, come from the metrics' specs (`Column.axis`).

One point per (point, method, guidance); an arrow from each method to its guided point; for sweeps,
the curve over the swept knob per method, and the Pareto front over all points. PNG + SVG.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from ..core.atomic import atomic_path  # noqa: E402
from .metrics.spec import label  # noqa: E402
from .pareto import pareto_front  # noqa: E402


def plot_tradeoff(table: pd.DataFrame, y: str, out_stem: Path, x: str = "clip_t") -> list[Path]:
    """`table`: the overall rows of one or many points' tables (with a 'point' column); `y` a subject-fidelity
    column, `x` a text-fidelity one."""
    if x not in table or y not in table or table[[y, x]].isna().all().any():
        return []
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (method, rows) in enumerate(table.groupby("method", sort=False)):
        colour = colours[k % len(colours)]
        for guidance, g in rows.groupby("guidance", sort=False):
            g = g.sort_values("order" if "order" in g else "point")
            marker = "o" if guidance == "none" else "*"
            ax.plot(g[x], g[y], marker=marker, ls="-" if len(g) > 1 else "", color=colour, label=f"{method} ({guidance})",
                    ms=8)
        plain, guided = rows[rows["guidance"] == "none"], rows[rows["guidance"] != "none"]
        for _, a in plain.iterrows():
            for _, b in guided[guided["point"] == a["point"]].iterrows():
                ax.annotate("", xy=(b[x], b[y]), xytext=(a[x], a[y]), arrowprops={"arrowstyle": "->", "color": colour})
    front = pareto_front(table[x].to_numpy(), table[y].to_numpy())
    if len(front) > 1:
        ax.plot(table[x].to_numpy()[front], table[y].to_numpy()[front], "k--", lw=1, label="Pareto front")
    ax.set_xlabel(f"{label(x)} (text fidelity)")
    ax.set_ylabel(f"{label(y)} (subject fidelity)")
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
