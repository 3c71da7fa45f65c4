"""Subject-fidelity vs text-fidelity trade-off plots: a text axis on x (CLIP-T), a subject axis on y (DINO,
CLIP-I); which columns are axes, and their labels, come from the metrics' specs (`Column.axis`).

How a run is drawn depends on its sweep, found by `ablation.swept_fields` from the points' `config.yaml`:

- one point: one marker per (method, guidance), an arrow from each method to its guided point;
- a one-dimensional sweep of a continuous knob (every value a number, or a list of numbers such as
  `guidance.step_size`: `guidance.step_size`, a term's weight, `sampler.cfg_scale`, a LoRA scale, ...): one
  curve per (method, guidance) the knob moves, ordered by the swept value (numeric order, a list's
  lexicographically; never the order the points ran in), each point annotated with its value. For a
  `guidance.*` sweep a method's unguided rows are the same images at every point, drawn once ('unguided');
- anything else (a factorial sweep of 2+ fields, or a 1-D sweep of categorical values): one labelled marker
  per setting, never joined by lines (a line would claim an order the settings do not have).

A row whose guidance does nothing (every term weight 0 / disabled, or a guidance step size of 0: the guided
update is 0 x the gradient) is drawn as unguided (an open circle) and labelled so, never as the guidance's
name. The Pareto front spans every drawn row: all points, all methods, guided and unguided. `write_tradeoff`
writes the figures (PNG + SVG) and `tradeoff.csv` (the drawn rows, their swept value and their place on
each figure's front).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from ..core.atomic import atomic_path  # noqa: E402
from .ablation import CHECK, CROSS, flatten, guidance_label, settings, zero_step  # noqa: E402, F401  (zero_step re-exported)
from .metrics.spec import axes, label  # noqa: E402
from .pareto import pareto_front  # noqa: E402

SINGLE, CURVE, GRID = "single", "curve", "grid"
PLAIN = "unguided"  # how a figure names a row sampled without guidance


@dataclass
class Sweep:
    """How a run's points differ: `kind` SINGLE (one point), CURVE (one continuous field: `field`) or GRID
    (anything else: labelled points); `values`: point -> {swept field: its raw value}; `shown`: point ->
    {column header: display value} (the ablation table's cells)."""

    kind: str
    fields: list[str]
    values: dict[str, dict[str, Any]]
    shown: dict[str, dict[str, str]]

    @property
    def field(self) -> str | None:
        return self.fields[0] if self.kind == CURVE else None


def _number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def continuous(values: list[Any]) -> bool:
    """Every value a number, or every value a list of numbers of one length (`guidance.step_size`)."""
    if values and all(_number(v) for v in values):
        return True
    lists = [v for v in values if isinstance(v, list) and v and all(_number(x) for x in v)]
    return bool(values) and len(lists) == len(values) and len({len(v) for v in lists}) == 1


def order_key(value: Any) -> tuple[float, ...]:
    """Numeric order of swept values (a list's: lexicographic over its numbers)."""
    return tuple(float(x) for x in value) if isinstance(value, list) else (float(value),)


def value_text(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(value_text(x) for x in value) + "]"
    return f"{float(value):g}" if _number(value) else ("null" if value is None else str(value))


def scalar_value(value: Any) -> float:
    """A swept value as one number (a plot's x): the number, or a list's first element (a step size's first step)."""
    return float(value[0]) if isinstance(value, list) else float(value)


def sweep_of(configs: dict[str, dict[str, Any]]) -> Sweep:
    """The sweep of points {name: resolved config}, by `ablation.swept_fields` (the ablation table's fields)."""
    points = [(p, c or {}) for p, c in configs.items()]
    if len(points) < 2:
        return Sweep(SINGLE, [], {p: {} for p, _ in points}, {p: {} for p, _ in points})
    fields, shown = settings(points)
    flat = {p: flatten(c) for p, c in points}
    values = {p: {f: flat[p].get(f) for f in fields} for p, _ in points}
    kind = CURVE if len(fields) == 1 and continuous([values[p][fields[0]] for p, _ in points]) else GRID
    return Sweep(kind, fields, values, shown)


def setting_columns(sweep: Sweep, frame: pd.DataFrame) -> dict[str, list[str]]:
    """Each swept field's value as text for the rows of `frame` (point, guidance): '–' for a `guidance.*` field on an
    unguided row (nothing of it applies, as in the ablation table)."""
    return {f: ["–" if g == "none" and f.startswith("guidance.") else value_text(sweep.values.get(p, {}).get(f))
                for p, g in zip(frame["point"], frame["guidance"])] for f in sweep.fields}


def drawn_label(guidance: str, config: dict[str, Any] | None) -> str:
    """How a figure names a row's guidance: PLAIN for none, the ablation's UNGUIDED for every term off,
    'unguided (step size 0)' for a zero step size, else the guidance's name."""
    if guidance == "none":
        return PLAIN
    return guidance_label(guidance, config)


def _setting_text(shown: dict[str, str]) -> str:
    parts = []
    for header, cell in shown.items():
        switch = cell in (CHECK, CROSS) or cell.startswith(CHECK + " ")
        parts.append(f"{header} {cell}" if switch else f"{header.rsplit('.', 1)[-1]}={cell}")
    return ", ".join(parts)


def drawn_rows(overall: pd.DataFrame, configs: dict[str, dict[str, Any]] | None = None) -> tuple[pd.DataFrame, Sweep]:
    """(rows, sweep): the rows a figure draws from the overall rows of one or many points' tables (a `point`
    column; configs: point -> resolved config), one per setting, with `label` (drawn_label), `unguided`
    (drawn as unguided), `text` (its annotation), `curve` ('method|guidance', '' off any curve), `value` (its
    swept value, a curve's) and `rank` (its place on its curve, by value). A `guidance.*` sweep's unguided rows
    (the same images at every point) are kept once per method."""
    overall = overall if "point" in overall else overall.assign(point="main")
    names = list(dict.fromkeys(overall["point"]))
    configs = {p: (configs or {}).get(p) or {} for p in names}
    sweep = sweep_of(configs)
    guidance_only = bool(sweep.fields) and all(f.startswith("guidance.") for f in sweep.fields)
    rows, plain_seen = [], set()
    for r in overall.to_dict("records"):
        point, method, guidance = r["point"], r["method"], r["guidance"]
        config = configs.get(point, {})
        name = drawn_label(guidance, config)
        off = name != guidance
        row = {**r, "label": name, "unguided": off, "text": "", "curve": "", "value": None}
        if sweep.kind != SINGLE and guidance == "none" and guidance_only:
            if method in plain_seen:
                continue
            plain_seen.add(method)
            rows.append({**row, "text": PLAIN})
            continue
        if sweep.kind == CURVE:
            value = sweep.values[point][sweep.field]
            rows.append({**row, "value": value, "curve": f"{method}|{guidance}",
                         "text": value_text(value) + (f" ({PLAIN})" if off and guidance != "none" else "")})
        elif sweep.kind == GRID:
            text = _setting_text(sweep.shown.get(point, {})) or point
            if guidance == "none":
                text = f"{PLAIN}, {text}"
            elif off:
                text += f" ({PLAIN})"
            rows.append({**row, "text": text})
        else:
            rows.append(row)
    frame = pd.DataFrame(rows)
    frame["rank"] = -1
    for _, g in frame[frame["curve"] != ""].groupby("curve", sort=False):
        ordered = sorted(g.index, key=lambda i: order_key(frame.at[i, "value"]))
        frame.loc[ordered, "rank"] = range(len(ordered))
    return frame, sweep


def _colours(methods: list[str]) -> dict[str, str]:
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {m: cycle[k % len(cycle)] for k, m in enumerate(methods)}


def _marker(ax, x: float, y: float, colour: str, unguided: bool, gid: str, label: str | None = None) -> None:
    style = {"marker": "o", "mfc": "white", "mec": colour, "ms": 7} if unguided else {"marker": "*", "ms": 9}
    (line,) = ax.plot([x], [y], ls="", color=colour, zorder=3, label=label, **style)
    line.set_gid(gid)


def _note(ax, x: float, y: float, text: str, colour: str, below: bool = False, left: bool = False) -> None:
    """`text` beside the point (x, y): above or below it, to its right or (`left`: near the right edge) its left."""
    if text:
        ax.annotate(text, (x, y), xytext=(-4 if left else 4, -9 if below else 3), textcoords="offset points", fontsize=6,
                    color=colour, ha="right" if left else "left")


def draw_tradeoff(ax, table: pd.DataFrame, y: str, x: str = "clip_t", configs: dict[str, dict[str, Any]] | None = None) -> pd.DataFrame:
    """Draw one trade-off figure on `ax` (see the module's docstring); returns the drawn rows (`drawn_rows`)
    with `on_front` (the row is on this figure's Pareto front). Artists carry gids: 'curve:<method>:<guidance>'
    (a sweep's curve, its points in value order), 'point:<method>:<guidance>[:<point>]' (a marker),
    'pareto' (the front)."""
    rows, sweep = drawn_rows(table, configs)
    colour = _colours(list(dict.fromkeys(rows["method"])))
    if sweep.kind == SINGLE:
        for (method, guidance), g in rows.groupby(["method", "guidance"], sort=False):
            for r in g.to_dict("records"):
                _marker(ax, r[x], r[y], colour[method], r["unguided"], f"point:{method}:{guidance}", f"{method} ({r['label']})")
        for method, g in rows.groupby("method", sort=False):
            for a in g[g["guidance"] == "none"].to_dict("records"):
                for b in g[(g["guidance"] != "none") & (g["point"] == a["point"])].to_dict("records"):
                    ax.annotate("", xy=(b[x], b[y]), xytext=(a[x], a[y]), arrowprops={"arrowstyle": "->", "color": colour[method]})
    else:
        low, high = rows[x].min(), rows[x].max()
        right = low + 0.7 * (high - low) if high > low else high
        curves = rows[rows["curve"] != ""]
        several = curves["guidance"].nunique() > 1
        for curve, g in curves.groupby("curve", sort=False):
            g = g.sort_values("rank")
            method, guidance = curve.split("|", 1)
            (line,) = ax.plot(g[x].to_numpy(), g[y].to_numpy(), ls=":" if guidance == "none" else "-", lw=1.3,
                              color=colour[method], label=f"{method} ({drawn_label(guidance, None)})" if several else method)
            line.set_gid(f"curve:{method}:{guidance}")
        for r in rows.to_dict("records"):
            gid = f"point:{r['method']}:{r['guidance']}" + (f":{r['point']}" if sweep.kind == GRID else "")
            _marker(ax, r[x], r[y], colour[r["method"]], r["unguided"], gid)
            mine = curves[(curves["method"] == r["method"]) & curves["unguided"]]
            same = not r["curve"] and any(np.isclose(r[x], c[x]) and np.isclose(r[y], c[y]) for c in mine.to_dict("records"))
            # a curve's labels alternate above / below its points (an unguided row off the curves: below); an unguided
            # row the curve's zero already is: its label; labels near the right edge go left of their point
            below = bool(r["curve"]) and r["rank"] % 2 == 1 or not r["curve"] and sweep.kind == CURVE
            _note(ax, r[x], r[y], "" if same else r["text"], colour[r["method"]], below, left=r[x] > right)
        what = f"curves over {sweep.field} (annotated: its value)" if sweep.kind == CURVE else \
            "settings of " + (", ".join(sweep.fields) or "the points")
        ax.set_title(what, fontsize=8)
    rows["on_front"] = False
    front = pareto_front(rows[x].to_numpy(), rows[y].to_numpy())
    rows.loc[rows.index[front], "on_front"] = True
    if len(front):  # dashed through its members, each ringed (one member: the ring alone)
        (line,) = ax.plot(rows[x].to_numpy()[front], rows[y].to_numpy()[front], "k--", lw=1, marker="o", ms=13, mfc="none",
                          mec="black", mew=0.6, label="Pareto front (all rows)")
        line.set_gid("pareto")
    ax.set_xlabel(f"{label(x)} (text fidelity)")
    ax.set_ylabel(f"{label(y)} (subject fidelity)")
    ax.grid(alpha=0.3)
    handles = ax.get_legend_handles_labels()[0]
    if sweep.kind != SINGLE:  # methods by colour (a curve's line says it), then what the markers mean
        handles += [] if sweep.kind == CURVE else [Line2D([], [], ls="", marker="s", color=c, label=m) for m, c in colour.items()]
        handles += [Line2D([], [], ls="", marker="*", ms=9, color="grey", label="guided"),
                    Line2D([], [], ls="", marker="o", mfc="white", mec="grey", label=PLAIN)]
    ax.legend(handles=handles, fontsize=7, loc="best")
    return rows


def _usable(table: pd.DataFrame, x: str, y: str) -> bool:
    return x in table and y in table and not table[[y, x]].isna().all().any()


def _save(fig, out_stem: Path) -> list[Path]:
    paths = []
    for suffix in (".png", ".svg"):
        path = out_stem.with_suffix(suffix)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=suffix[1:])
        paths.append(path)
    plt.close(fig)
    return paths


def plot_tradeoff(table: pd.DataFrame, y: str, out_stem: Path, x: str = "clip_t",
                  configs: dict[str, dict[str, Any]] | None = None) -> list[Path]:
    """`table`: the overall rows of one or many points' tables (with a 'point' column); `y` a subject-fidelity
    column, `x` a text-fidelity one; `configs`: each point's resolved config (its sweep decides curves or
    labelled points). Writes `out_stem`.png and .svg."""
    if not _usable(table, x, y):
        return []
    fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
    draw_tradeoff(ax, table, y, x, configs)
    fig.tight_layout()
    return _save(fig, out_stem)


def write_tradeoff(overall: pd.DataFrame, configs: dict[str, dict[str, Any]], out_dir: Path) -> list[Path]:
    """Every trade-off figure the metric specs declare (one per (subject axis, text axis) scored: `tradeoff-<y>`
    against the first text axis, `tradeoff-<y>-vs-<x>` against others) and `tradeoff.csv`: the drawn rows with their
    swept values, curve, rank, the axis metrics and `front:<y>-vs-<x>` per figure. Returns the figures' paths."""
    paths, flags = [], {}
    for k, x in enumerate([x for x in axes("text") if x in overall]):  # the first present text axis: the plain name
        for y in axes("subject"):
            if not _usable(overall, x, y):
                continue
            fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
            rows = draw_tradeoff(ax, overall, y, x, configs)
            fig.tight_layout()
            paths += _save(fig, out_dir / (f"tradeoff-{y}" if k == 0 else f"tradeoff-{y}-vs-{x}"))
            flags[f"front:{y}-vs-{x}"] = rows["on_front"].to_numpy()
    if flags:
        rows, sweep = drawn_rows(overall, configs)
        metrics = [m for m in axes("subject") + axes("text") if m in rows]
        out = rows[["point", "method", "guidance", "label"]].copy()
        for f, values in setting_columns(sweep, rows).items():
            out[f] = values
        out["curve"], out["rank"], out["annotation"] = rows["curve"], rows["rank"], rows["text"]
        for m in metrics:
            for col in (m, f"{m}_lo", f"{m}_hi"):
                if col in rows:
                    out[col] = rows[col]
        for name, flag in flags.items():
            out[name] = flag
        with atomic_path(out_dir / "tradeoff.csv") as tmp:
            out.to_csv(tmp, index=False)
    return paths
