"""The regression gate: a fixed small benchmark compared with a stored baseline.

`persobench regress --baseline tests/baselines/<name>.json` runs the gate config (in a temporary
store, never the working directory), compares every aggregate score (method x guidance x metric,
overall split) with the baseline within per-metric tolerances, and fails naming each metric that
drifted and by how much. Which columns are gated, and their default tolerances, come from the
registered metrics' specs (`reports/metrics/spec.py`); a baseline's own `tolerances` win.
`--update --reason "..."` rewrites the baseline and appends the reason to its history. A baseline
made from another config (or another embedded model) is refused.
"""

from __future__ import annotations

import datetime
import json
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from ..core.atomic import write_json
from ..core.components import load_components
from ..core.config import RunConfig, load_config, signature_dict, stable_hash, to_dict
from ..core.errors import UserError
from ..reports.metrics.spec import column, default_tolerances
from .runner import run

GATE_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "regress.yaml"


def gate_signature(cfg: RunConfig) -> str:
    """What a baseline is valid for: the resolved config (minus where it is stored) and the base model."""
    data = signature_dict(cfg)
    data.pop("store")
    return stable_hash({"config": data, "model": load_components(cfg.model).fingerprint}, 16)


def measure(cfg: RunConfig) -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory(prefix="persobench-regress-") as tmp:
        cfg.store = tmp
        point = run(cfg)
        table = pd.read_csv(point / "table.csv")
    overall = table[table["split"] == "all"]
    scores: dict[str, dict[str, float]] = {}
    for row in overall.to_dict("records"):
        key = f"{row['method']}/{row['guidance']}"
        scores[key] = {m: float(row[m]) for m in default_tolerances() if m in row and pd.notna(row[m])}
    return scores


def compare(baseline: dict[str, Any], scores: dict[str, dict[str, float]]) -> list[str]:
    """One line per drifted metric (or missing / new operating point)."""
    problems = []
    tolerances = {**default_tolerances(), **baseline.get("tolerances", {})}
    for key, expected in baseline["scores"].items():
        got = scores.get(key)
        if got is None:
            problems.append(f"{key}: missing from this run")
            continue
        for metric, value in expected.items():
            if metric not in got:
                problems.append(f"{key} {metric}: missing from this run")
            elif abs(drift := got[metric] - value) > tolerances[metric]:
                problems.append(f"{key} {metric}: {got[metric]:.4f} vs baseline {value:.4f} "
                                f"(drift {drift:+.4f}, tolerance {tolerances[metric]}{_direction(metric, drift)})")
    problems += [f"{key}: new operating point, not in the baseline" for key in scores if key not in baseline["scores"]]
    return problems


def _direction(metric: str, drift: float) -> str:
    """', better' / ', worse' by the metric's spec (a drift either way fails the gate; this says which)."""
    spec = column(metric)
    return "" if spec is None else (", better" if (drift > 0) == spec.higher_is_better else ", worse")


def regress(baseline_path: Path, config: str | None, overrides: list[str], update: bool, reason: str | None) -> list[str]:
    cfg = load_config(config or GATE_CONFIG, overrides)
    signature = gate_signature(cfg)
    if update:
        if not reason:
            raise UserError('--update needs --reason "why the scores may change"')
        old = json.loads(baseline_path.read_text()) if baseline_path.is_file() else {}
        history = old.get("history", []) + [{"date": datetime.date.today().isoformat(), "reason": reason}]
        scores = measure(cfg)
        tolerances = {**default_tolerances(), **old.get("tolerances", {})}  # a new metric's spec default joins the kept ones
        write_json(baseline_path, {"signature": signature, "config": to_dict(cfg) | {"store": None},
                                   "tolerances": tolerances, "scores": scores, "history": history})
        return []
    if not baseline_path.is_file():
        raise UserError(f"baseline '{baseline_path}' does not exist; create it with --update --reason \"...\"")
    try:
        baseline = json.loads(baseline_path.read_text())
        baseline["scores"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise UserError(f"baseline '{baseline_path}' is not a persobench baseline; recreate it with --update") from None
    if baseline.get("signature") != signature:
        raise UserError(f"baseline '{baseline_path}' was made with another config or base model; "
                        "rerun with the config it was made from, or --update --reason \"...\"")
    return compare(baseline, measure(cfg))
