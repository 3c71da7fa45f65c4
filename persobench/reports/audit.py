"""The metric audit: how the metrics papers report agree with the toy world's ground truth.

On ToyBench every generated image's true class, colours, pattern and context are known, and the `oracle` metric
reads them back (columns `oracle_identity`, `oracle_attributes`, `oracle_context`). This module asks, from the
store only (scores and tables; no model, and nothing of the toy world imported: it finds the oracle's columns by
name and skips with one line when they are absent, e.g. on DreamBench):

1. Per image: the Spearman rank correlation of each identity metric (the subject-fidelity axes DINO and CLIP-I,
   and their subject-region variants when scored) with oracle attributes and oracle identity, and of each text
   metric (CLIP-T) with oracle context, over every distinct image of the run (a sweep's shared images once),
   with n, a two-sided permutation p-value (`scipy.stats.permutation_test` on the ranks: exact when n! is within
   the resamples, else 9,999 seeded pairings) and a 95% interval that resamples subjects (`metrics.bootstrap`
   draws, at most 1,000, seeded). Images of one subject share its fit and references, so they are not
   independent: the permutation p treats them as exchangeable and is optimistic; the interval is the honest one.
2. Per pair of operating points (method x guidance, and x point in a sweep; rows with the same images once):
   whether each metric orders the two rows as the oracle does (identity metrics against oracle attributes, text
   metrics against oracle context), on the tables' means over (subject, prompt) cells. A difference smaller than
   the larger of the two rows' 95% bootstrap half-widths (the tables' two-stage intervals; the metric's spec
   tolerance where a row has none) is *level*. Verdicts: `agree` (same order), `level` (the metric ties rows the
   oracle orders), `reversed` (the opposite order), `unconfirmed` (the metric orders rows the oracle calls
   level: not a disagreement, the oracle cannot say), `both level`. `level` and `reversed` are listed.

Written as `report/audit.md` and `report/audit.csv` (one long table, its `section` column: correlation,
ordering summary, ordering); `build.py` adds the headline to `report/table.md` and two sections to the HTML.
"""

from __future__ import annotations

import dataclasses
import logging
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from ..core.atomic import atomic_path, write_text
from .markdown import markdown_table
from .metrics.spec import axes, column, label, present_columns

logger = logging.getLogger(__name__)

IDENTITY_ORACLES = ("oracle_attributes", "oracle_identity")  # per image; the ordering reads the first
TEXT_ORACLE = "oracle_context"
PERMUTATIONS = 9999
MAX_BOOTSTRAP = 1000
VERDICTS = ("agree", "level", "reversed", "unconfirmed", "both level")
DISAGREEMENTS = ("level", "reversed")


@dataclasses.dataclass
class Audit:
    correlations: pd.DataFrame
    summary: pd.DataFrame  # per (metric, oracle): pair counts by verdict
    pairs: pd.DataFrame  # per (metric, oracle, pair of operating points)
    rows: int  # operating points compared
    images: int

    @property
    def disagreements(self) -> pd.DataFrame:
        return self.pairs[self.pairs["verdict"].isin(DISAGREEMENTS)] if len(self.pairs) else self.pairs


def metric_pairs(columns) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(per-image correlation pairs, ordering pairs) of (metric, oracle) columns that `columns` holds."""
    present = present_columns(columns)
    names = {c.name for c in present}
    subject_axes = axes("subject")
    identity = [c.name for c in present if c.name in subject_axes or (c.beside in subject_axes)]
    text = [c.name for c in present if c.name in axes("text")]
    correlation = [(m, o) for m in identity for o in IDENTITY_ORACLES if o in names]
    correlation += [(m, TEXT_ORACLE) for m in text if TEXT_ORACLE in names]
    ordering = [(m, IDENTITY_ORACLES[0]) for m in identity if IDENTITY_ORACLES[0] in names]
    ordering += [(m, TEXT_ORACLE) for m in text if TEXT_ORACLE in names]
    return correlation, ordering


def has_oracle(columns) -> bool:
    return any(o in set(columns) for o in (*IDENTITY_ORACLES, TEXT_ORACLE))


# --- per image --------------------------------------------------------------------------------------------------

def _pearson(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    x = x - x.mean(axis, keepdims=True)
    y = y - y.mean(axis, keepdims=True)
    return (x * y).sum(axis) / np.sqrt((x * x).sum(axis) * (y * y).sum(axis))


def permutation_p(x: np.ndarray, y: np.ndarray, n_resamples: int = PERMUTATIONS, seed: int = 0) -> float:
    """Two-sided permutation p-value of Spearman's rho (pairings permuted; exact when n! <= n_resamples)."""
    rx, ry = stats.rankdata(x), stats.rankdata(y)
    res = stats.permutation_test((rx, ry), _pearson, permutation_type="pairings", vectorized=True, n_resamples=n_resamples,
                                 batch=max(1, 2_000_000 // len(rx)), alternative="two-sided", rng=np.random.default_rng(seed))
    return float(res.pvalue)


def subject_interval(frame: pd.DataFrame, metric: str, oracle: str, n: int, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the pooled Spearman rho, resampling subjects with replacement."""
    groups = [g[[metric, oracle]].to_numpy(float) for _, g in frame.groupby("subject", sort=True)]
    if n <= 0 or len(groups) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    rhos = []
    for _ in range(n):
        drawn = np.concatenate([groups[k] for k in rng.integers(0, len(groups), len(groups))])
        if np.ptp(drawn[:, 0]) > 0 and np.ptp(drawn[:, 1]) > 0:
            rhos.append(stats.spearmanr(drawn[:, 0], drawn[:, 1]).statistic)
    if len(rhos) < n / 2:  # most draws constant in one column: no interval worth the name
        return float("nan"), float("nan")
    return float(np.percentile(rhos, 2.5)), float(np.percentile(rhos, 97.5))


def correlations(scores: pd.DataFrame, pairs: list[tuple[str, str]], bootstrap: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per (metric, oracle): n images, Spearman rho (scipy), permutation p, subject-resampled 95% interval."""
    images = scores.drop_duplicates("image") if "image" in scores else scores
    rows = []
    for metric, oracle in pairs:
        part = images[images[metric].notna() & images[oracle].notna()]
        x, y = part[metric].to_numpy(float), part[oracle].to_numpy(float)
        row = {"section": "correlation", "metric": metric, "oracle": oracle, "n": len(part), "rho": np.nan, "p": np.nan,
               "rho_lo": np.nan, "rho_hi": np.nan, "note": ""}
        if len(part) < 3:
            row["note"] = f"{len(part)} image(s) with both values: no correlation"
        elif np.ptp(y) == 0 or np.ptp(x) == 0:
            constant = label(oracle) if np.ptp(y) == 0 else label(metric)
            row["note"] = f"{constant} is {y[0] if np.ptp(y) == 0 else x[0]:.3g} on every image: no rank correlation defined"
        else:
            row["rho"] = float(stats.spearmanr(x, y).statistic)
            row["p"] = permutation_p(x, y, PERMUTATIONS, seed)
            row["rho_lo"], row["rho_hi"] = subject_interval(part, metric, oracle, min(bootstrap, MAX_BOOTSTRAP), seed)
        rows.append(row)
    return pd.DataFrame(rows)


# --- operating points -------------------------------------------------------------------------------------------

def operating_points(table: pd.DataFrame, scores: pd.DataFrame | None = None) -> pd.DataFrame:
    """The table's overall rows, one per operating point, labelled `method/guidance` (`@ point` in a sweep); rows
    whose images are another row's (a sweep's unguided rows repeat per point) kept once."""
    rows = table[table["split"] == "all"] if "split" in table else table
    rows = rows.copy()
    if "point" not in rows:
        rows["point"] = "main"
    several = rows["point"].nunique() > 1
    rows["label"] = [f"{m}/{g}" + (f" @ {p}" if several else "") for m, g, p in zip(rows["method"], rows["guidance"], rows["point"])]
    if scores is not None and "point" in scores and "image" in scores:
        images = {k: frozenset(g["image"]) for k, g in scores.groupby(["point", "method", "guidance"], sort=False)}
        key = [images.get((p, m, g), frozenset([(p, m, g)])) for p, m, g in zip(rows["point"], rows["method"], rows["guidance"])]
        rows = rows[~pd.Series(key, index=rows.index).duplicated()]
    return rows.reset_index(drop=True)


def _half_width(row: pd.Series, metric: str) -> float:
    lo, hi = row.get(f"{metric}_lo", np.nan), row.get(f"{metric}_hi", np.nan)
    if pd.notna(lo) and pd.notna(hi):
        return float(hi - lo) / 2
    spec = column(metric)
    return spec.tolerance if spec is not None else 0.0


def _order(a: float, b: float, threshold: float) -> int:
    """0 (level) when the difference is under the threshold (or nil: two rows the oracle scores alike are level even
    when their intervals have no width), else which is higher."""
    return 0 if abs(a - b) < threshold or a == b else (1 if a > b else -1)


def verdict(metric_order: int, oracle_order: int) -> str:
    if oracle_order == 0:
        return "both level" if metric_order == 0 else "unconfirmed"
    if metric_order == oracle_order:
        return "agree"
    return "level" if metric_order == 0 else "reversed"


def _sentence(metric: str, oracle: str, lower: pd.Series, higher: pd.Series, kind: str, threshold: float) -> str:
    """The disagreement in words, `lower` being the row the oracle ranks lower."""
    ml, mh, ol, oh = lower[metric], higher[metric], lower[oracle], higher[oracle]
    where = (f"level with (|diff| {abs(ml - mh):.3f} < half-width {threshold:.3f})" if kind == "level" else "above")
    return (f"{label(metric)} puts {lower['label']} ({ml:.3f}) {where} {higher['label']} ({mh:.3f}) "
            f"while {label(oracle)} says {ol:.2f} < {oh:.2f}")


def orderings(points: pd.DataFrame, pairs: list[tuple[str, str]]) -> pd.DataFrame:
    """One row per (metric, oracle, pair of operating points) with both rows' values, half-widths and the verdict."""
    rows = []
    for metric, oracle in pairs:
        for (_, a), (_, b) in combinations(points.iterrows(), 2):
            if any(pd.isna(r[c]) for r in (a, b) for c in (metric, oracle)):
                continue
            hm = max(_half_width(a, metric), _half_width(b, metric))
            ho = max(_half_width(a, oracle), _half_width(b, oracle))
            om, oo = _order(a[metric], b[metric], hm), _order(a[oracle], b[oracle], ho)
            v = verdict(om, oo)
            text = ""
            if v in DISAGREEMENTS:
                lower, higher = (a, b) if oo < 0 else (b, a)
                text = _sentence(metric, oracle, lower, higher, v, hm)
            rows.append({"section": "ordering", "metric": metric, "oracle": oracle, "a": a["label"], "b": b["label"],
                         "metric_a": a[metric], "metric_b": b[metric], "metric_halfwidth": hm, "oracle_a": a[oracle],
                         "oracle_b": b[oracle], "oracle_halfwidth": ho, "verdict": v, "text": text})
    return pd.DataFrame(rows, columns=["section", "metric", "oracle", "a", "b", "metric_a", "metric_b", "metric_halfwidth",
                                       "oracle_a", "oracle_b", "oracle_halfwidth", "verdict", "text"])


def ordering_summary(pairs: pd.DataFrame, wanted: list[tuple[str, str]]) -> pd.DataFrame:
    rows = []
    for metric, oracle in wanted:
        part = pairs[(pairs["metric"] == metric) & (pairs["oracle"] == oracle)] if len(pairs) else pairs
        counts = {v: int((part["verdict"] == v).sum()) if len(part) else 0 for v in VERDICTS}
        ordered = counts["agree"] + counts["level"] + counts["reversed"]
        rows.append({"section": "ordering summary", "metric": metric, "oracle": oracle, "pairs": len(part),
                     "oracle_orders": ordered, **counts, "agreement": counts["agree"] / ordered if ordered else np.nan})
    return pd.DataFrame(rows)


def audit(scores: pd.DataFrame, table: pd.DataFrame, bootstrap: int = 1000, seed: int = 0) -> Audit | None:
    """The audit of a run's scores (every point's, with a `point` column) and combined table; None without oracle columns."""
    if not has_oracle(scores.columns):
        return None
    correlation, ordering = metric_pairs(scores.columns)
    points = operating_points(table, scores)
    pairs = orderings(points, ordering)
    images = scores["image"].nunique() if "image" in scores else len(scores)
    return Audit(correlations(scores, correlation, bootstrap, seed), ordering_summary(pairs, ordering), pairs, len(points),
                 images)


# --- writing ----------------------------------------------------------------------------------------------------

def _p(p: float) -> str:
    return "–" if pd.isna(p) else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def _num(v: float, digits: int = 2) -> str:
    return "–" if pd.isna(v) else f"{v:.{digits}f}"


def correlation_layout(a: Audit) -> pd.DataFrame:
    return pd.DataFrame([{"Metric": label(r.metric), "Oracle": label(r.oracle), "n": r.n, "Spearman ρ": _num(r.rho),
                          "95% interval (subjects resampled)": "–" if pd.isna(r.rho_lo) else f"[{r.rho_lo:.2f}, {r.rho_hi:.2f}]",
                          "p (permutation)": _p(r.p), "Note": r.note}
                         for r in a.correlations.itertuples()])


def summary_layout(a: Audit) -> pd.DataFrame:
    return pd.DataFrame([{"Metric": label(r["metric"]), "Against": label(r["oracle"]), "Pairs": r["pairs"],
                          "Oracle orders": r["oracle_orders"], "Agree": r["agree"], "Level": r["level"],
                          "Reversed": r["reversed"], "Agreement": "–" if pd.isna(r["agreement"]) else f"{r['agreement']:.0%}",
                          "Unconfirmed": r["unconfirmed"], "Both level": r["both level"]}
                         for r in a.summary.to_dict("records")])


METHOD = ("Per image: Spearman ρ over the run's distinct images (scipy.stats.spearmanr), two-sided permutation p "
          "(images treated as exchangeable, so optimistic: a subject's images share its fit), 95% interval resampling "
          "subjects. Operating points: the tables' means; a difference under the larger 95% bootstrap half-width of the two "
          "rows is level. Agreement: pairs ordered as the oracle does, of the pairs the oracle orders; level = the metric "
          "ties them, reversed = the opposite order; unconfirmed = the metric orders rows the oracle calls level.")


def headline(a: Audit) -> str:
    """One line per (metric, oracle) ordering summary, for the results table's Markdown."""
    parts = []
    for r in a.summary.itertuples(index=False):
        if r.oracle_orders:
            parts.append(f"{label(r.metric)} orders {r.agree}/{r.oracle_orders} pairs as {label(r.oracle)} does "
                         f"({r.level} level, {r.reversed} reversed)")
    return "; ".join(parts) if parts else "the oracle orders no pair of operating points apart"


def audit_markdown(a: Audit) -> str:
    lines = ["# Metric audit against the toy world's oracle", "",
             f"{a.images} images, {a.rows} operating points. {METHOD}", "",
             "## Per image: rank correlation with the oracle", "", markdown_table(correlation_layout(a)), "",
             "## Operating points: does the metric order them as the oracle does?", ""]
    if a.rows < 2:
        lines += ["One operating point: nothing to order.", ""]
    else:
        lines += [markdown_table(summary_layout(a)), ""]
        dis = a.disagreements
        lines += ["### Disagreements", ""] + ([f"- {t}" for t in dis["text"]] if len(dis) else ["None."]) + [""]
    return "\n".join(lines)


def write_audit(out: Path, scores: pd.DataFrame, table: pd.DataFrame, bootstrap: int = 1000, seed: int = 0) -> Audit | None:
    """`report/audit.md` and `report/audit.csv`; None (and one log line, no files) when the scores have no oracle."""
    a = audit(scores, table, bootstrap, seed)
    if a is None:
        logger.info("metric audit skipped: the scores have no oracle columns (only ToyBench has ground truth)")
        return None
    with atomic_path(out / "audit.csv") as tmp:
        pd.concat([a.correlations, a.summary, a.pairs], ignore_index=True).to_csv(tmp, index=False)
    write_text(out / "audit.md", audit_markdown(a))
    return a


def html_sections(a: Audit) -> list[tuple[str, pd.DataFrame | None, str]]:
    """(heading, table, note) for the HTML report (`html.py::write_html`'s sections)."""
    dis = a.disagreements
    listing = "\n".join(f"- {t}" for t in dis["text"]) if len(dis) else "No disagreement."
    out = [("Metric audit: per image", correlation_layout(a), f"{a.images} images. {METHOD} (audit.md, audit.csv)")]
    if a.rows >= 2:
        out.append(("Metric audit: operating points", summary_layout(a), f"Disagreements:\n{listing}"))
    return out
