"""Sweeps as a paper's ablation table: which config fields a sweep's points differ in, their values as columns,
and which points are unguided.

Reads only the run store: each point's resolved `config.yaml` (nothing from `persobench.guidance`, so a
guidance term registered by a plugin is recognised by the shape of its section: a mapping under `guidance`
with a `weight` or an `enabled` key, as every term's config has).

- A point is *unguided* when `guidance.name` is none, or every guidance term is off (weight 0 or enabled
  false): its guided rows are labelled `unguided (all terms off)`, never by the guidance's name.
- The swept fields are the config fields whose values differ across the run's points, plus the fields a
  point's name spells (`persobench run --sweep key=v` names a point `key-v__...`, so a one-value sweep is
  found too), in sweep order.
- A term's `weight` / `enabled` column shows ✓ / ✗ (a term switched on / off; several non-zero weights: ✓ and
  the weight); any other field its value.
- `ablation_table`: rows = settings (point x method x guidance), columns = metrics, the best value of each
  metric in bold (its spec's `higher_is_better`); written as `report/ablation.{csv,md,tex}`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..core.atomic import atomic_path, write_text
from .markdown import markdown_table
from .metrics.spec import present_columns

UNGUIDED = "unguided (all terms off)"
ZERO_STEP = "unguided (step size 0)"
CHECK, CROSS = "✓", "✗"
IGNORED = ("name", "store", "sweep")  # differ by construction or hold the sweep itself: never a setting column


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config mapping -> {dotted key: leaf value} (lists are leaves)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def guidance_terms(config: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The guidance term sections of a resolved config: `guidance.<term>` mappings with a weight or a switch."""
    section = (config or {}).get("guidance") or {}
    return {k: v for k, v in section.items() if isinstance(v, dict) and ("weight" in v or "enabled" in v)}


def term_on(section: dict[str, Any]) -> bool:
    return bool(section.get("enabled", True)) and float(section.get("weight", 1.0)) != 0.0


def is_unguided(config: dict[str, Any] | None) -> bool:
    """guidance.name none, or every guidance term switched off (weight 0 or enabled false)."""
    if not config:
        return False
    guidance = config.get("guidance") or {}
    if guidance.get("name", "none") == "none":
        return True
    terms = guidance_terms(config)
    return bool(terms) and not any(term_on(t) for t in terms.values())


def zero_step(config: dict[str, Any] | None) -> bool:
    """A guidance step size of 0 throughout: the guided update is 0 x the gradient, nothing is applied."""
    sizes = ((config or {}).get("guidance") or {}).get("step_size")
    return (isinstance(sizes, list) and bool(sizes)
            and all(isinstance(s, (int, float)) and not isinstance(s, bool) and float(s) == 0.0 for s in sizes))


def guidance_label(guidance: str, config: dict[str, Any] | None) -> str:
    """How a table names a row's guidance: 'none' for unguided sampling, UNGUIDED for a guided setting with
    every term off (it samples through the guidance code with nothing to apply), ZERO_STEP for a step size of
    0 (the same images as unguided), else the guidance's name."""
    if guidance == "none":
        return "none"
    if is_unguided(config):
        return UNGUIDED
    return ZERO_STEP if zero_step(config) else guidance


def _slug(text: str) -> str:  # harness/store.py's slug, which point names are made of (reports do not import the harness)
    import re

    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def swept_fields(points: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """The dotted config fields the points differ in (or that a point's name spells), in sweep order."""
    flat = [(name, flatten(config)) for name, config in points]
    keys = list(dict.fromkeys(k for _, f in flat for k in f if k.split(".")[0] not in IGNORED))
    named: list[str] = []
    slugs = sorted(((_slug(k), k) for k in keys), key=lambda sk: -len(sk[0]))  # the longest key wins a prefix tie
    for name, _ in flat:
        for part in name.split("__"):
            hit = next((k for s, k in slugs if part.startswith(s + "-")), None)
            if hit and hit not in named:
                named.append(hit)
    differing = [k for k in keys if any(not _same(f.get(k), flat[0][1].get(k)) for _, f in flat)]
    return named + [k for k in differing if k not in named]


def _term_switch(key: str) -> str | None:
    """'guidance.<term>.weight' / '.enabled' -> the term's name; None for any other field."""
    parts = key.split(".")
    return parts[1] if len(parts) == 3 and parts[0] == "guidance" and parts[2] in ("weight", "enabled") else None


def setting_headers(fields: list[str]) -> dict[str, str]:
    """A column header per swept field: a term switch is headed by its term ('appearance'), unless two of its
    switches are swept; any other field by its dotted key."""
    terms = [_term_switch(f) for f in fields]
    return {f: (t if t and terms.count(t) == 1 else f) for f, t in zip(fields, terms)}


def format_setting(key: str, value: Any, values: list[Any]) -> str:
    """A swept field's cell: ✓ / ✗ for a term switch (a weight is ✗ at 0; ✓, with the weight when several
    non-zero weights are swept), lists comma-joined, numbers compact."""
    if _term_switch(key):
        if key.endswith(".enabled"):
            return CHECK if value else CROSS
        if value is None or float(value) == 0.0:
            return CROSS
        nonzero = {float(v) for v in values if v is not None and float(v) != 0.0}
        return CHECK if len(nonzero) <= 1 else f"{CHECK} {float(value):g}"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return "null" if value is None else str(value)


def settings(points: list[tuple[str, dict[str, Any]]]) -> tuple[list[str], dict[str, dict[str, str]]]:
    """(swept fields, {point: {header: display value}})."""
    fields = swept_fields(points)
    headers = setting_headers(fields)
    flat = {name: flatten(config) for name, config in points}
    table = {}
    for name in flat:
        table[name] = {headers[f]: format_setting(f, flat[name].get(f), [flat[n].get(f) for n in flat]) for f in fields}
    return fields, table


def setting_cells(points: list[tuple[str, dict[str, Any]]]) -> Callable[[str, str], dict[str, str]]:
    """A function (point, guidance) -> {header: display value} of the swept fields, for a table's rows; a
    `guidance.*` field is '–' on an unguided row (guidance 'none': nothing of it applies). One point: no columns."""
    if len(points) < 2:
        return lambda point, guidance: {}
    fields, shown = settings(points)
    headers = setting_headers(fields)

    def cells(point: str, guidance: str) -> dict[str, str]:
        return {headers[f]: "–" if guidance == "none" and f.startswith("guidance.") else shown[point][headers[f]] for f in fields}

    return cells


def best_mask(values: pd.Series, higher_is_better: bool, digits: int = 3) -> pd.Series:
    """Rows holding the best value (ties, as printed, all best); NaN is never best."""
    shown = values.round(digits)
    if shown.notna().sum() == 0:
        return pd.Series(False, index=values.index)
    best = shown.max() if higher_is_better else shown.min()
    return shown == best


def _cell(mean: float, lo: float, hi: float, bold: bool) -> str:
    if not np.isfinite(mean):
        return "–"
    text = f"**{mean:.3f}**" if bold else f"{mean:.3f}"
    half = (hi - lo) / 2
    return f"{text} ± {half:.3f}" if np.isfinite(half) else text


def ablation_table(table: pd.DataFrame, configs: dict[str, dict[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(data, layout) of a sweep's ablation table from the combined per-point table (overall split, with a
    `point` column) and each point's resolved config.

    data: one row per setting: the swept fields' raw values, `method`, `guidance`, `guidance_label`, `point`,
    each metric's mean / lo / hi and `<metric>_best`. layout: the same rows for Markdown / LaTeX / HTML: the
    swept fields' display values, Method (several methods only), Guidance ('unguided' for guidance none, UNGUIDED
    for every term off), and each metric as 'mean ± half' with the best in bold. An unguided row's guidance-only
    settings are '–' (nothing of them applies), and unguided rows the same across points (the same images) are
    kept once."""
    overall = table[table["split"] == "all"].copy()
    points = [(p, configs.get(p, {})) for p in dict.fromkeys(overall["point"])]
    fields = swept_fields(points)
    cells = setting_cells(points)
    columns = present_columns(overall.columns)
    several = overall["method"].nunique() > 1
    data_rows, layout_rows, seen = [], [], set()
    for row in overall.to_dict("records"):
        config = configs.get(row["point"], {})
        flat = flatten(config)
        label = "unguided" if row["guidance"] == "none" else guidance_label(row["guidance"], config)
        display = cells(row["point"], row["guidance"])
        key = (tuple(display.items()), row["method"], label, tuple(f"{float(row[c.name]):.9g}" for c in columns))
        if row["guidance"] == "none" and key in seen:
            continue
        seen.add(key)
        data_rows.append({**{f: flat.get(f) for f in fields}, "method": row["method"], "guidance": row["guidance"],
                          "guidance_label": label, "point": row["point"],
                          **{k: row[k] for c in columns for k in (c.name, f"{c.name}_lo", f"{c.name}_hi") if k in row}})
        layout_rows.append({**display, **({"Method": row["method"]} if several else {}), "Guidance": label})
    data = pd.DataFrame(data_rows)
    layout = pd.DataFrame(layout_rows)
    for c in columns:
        best = best_mask(data[c.name].astype(float), c.higher_is_better) if len(data) else pd.Series(dtype=bool)
        data[f"{c.name}_best"] = best.to_numpy(dtype=bool)
        layout[c.label] = [_cell(r[c.name], r.get(f"{c.name}_lo", np.nan), r.get(f"{c.name}_hi", np.nan), b)
                           for r, b in zip(data.to_dict("records"), best)]
    return data, layout


def ablation_note(fields: list[str]) -> str:
    swept = ", ".join(f"`{f}`" for f in fields) or "nothing (the points share every setting)"
    return (f"Rows: the sweep's settings (swept: {swept}); {CHECK} / {CROSS}: a guidance term on / off (weight 0 or "
            f"enabled false); '{UNGUIDED}': every term off, i.e. unguided. Cells: mean ± 95% bootstrap half-width "
            "over (subject, prompt) cells; **bold**: the best value of each metric (higher or lower is better, by the metric).")


def write_ablation(out_dir: Path, table: pd.DataFrame, configs: dict[str, dict[str, Any]], note: str = "") -> pd.DataFrame:
    """Write `ablation.{csv,md,tex}` in `out_dir` (`note`: the method note, under the table); returns the layout."""
    from .tables import to_latex

    data, layout = ablation_table(table, configs)
    fields = swept_fields([(p, configs.get(p, {})) for p in dict.fromkeys(table["point"])])
    with atomic_path(out_dir / "ablation.csv") as tmp:
        data.to_csv(tmp, index=False)
    text = ablation_note(fields) + (f"\n\n{note}" if note else "")
    write_text(out_dir / "ablation.md", markdown_table(layout) + "\n\n" + text + "\n")
    write_text(out_dir / "ablation.tex", to_latex(layout, note=text, centred=[c.label for c in present_columns(table.columns)]))
    return layout
