"""Per-subject identity of every method against vanilla SD, from a finished run (the README's table).

    OMP_NUM_THREADS=1 persobench run configs/toy/per_subject.yaml
    python benchmarks/method_identity.py runs/toy-per-subject

Prints, per method: mean DINO / CLIP-I / CLIP-T / oracle scores, on how many subjects its mean DINO and
its oracle attribute accuracy beat vanilla SD's, and the fit time per subject (from the store's fit.json).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from persobench.reports.metrics.spec import present_columns


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("run", help="a run folder (runs/<name>) or one of its points")
    a = p.parse_args()
    root = Path(a.run)
    points = [root] if (root / "scores.parquet").is_file() else sorted(q.parent for q in root.glob("points/*/scores.parquet"))
    if not points:
        raise SystemExit(f"no finished run point under {root}; run `persobench run configs/toy/per_subject.yaml` first")
    point = points[0]
    frame = pd.read_parquet(point / "scores.parquet")  # the records with one column per metric
    frame = frame[frame["guidance"] == "none"]
    metrics = [c.name for c in present_columns(frame.columns)]  # every registered metric's columns, in registration order
    per_subject = frame.groupby(["method", "subject"])[metrics].mean()
    vanilla = per_subject.loc["vanilla-sd"]
    store = point.parent.parent
    fits = [json.loads(f.read_text()) for f in store.glob("fits/**/fit.json")]
    print(f"run point: {point}")
    print("| method | " + " | ".join(metrics) + " | DINO beats vanilla on | oracle-attr beats vanilla on | fit s/subject |")
    print("|---" * (len(metrics) + 4) + "|")
    for method, rows in per_subject.groupby(level=0):
        rows = rows.droplevel(0)
        means = " | ".join(f"{rows[m].mean():.3f}" for m in metrics)
        if method == "vanilla-sd":
            wins = "– | –"
        else:
            common = rows.index.intersection(vanilla.index)
            dino = int((rows.loc[common, "dino"] > vanilla.loc[common, "dino"]).sum())
            attr = (f"{int((rows.loc[common, 'oracle_attributes'] > vanilla.loc[common, 'oracle_attributes']).sum())} of {len(common)}"
                    if "oracle_attributes" in rows else "n/a")
            wins = f"{dino} of {len(common)} | {attr}"
        secs = sorted(f["seconds"] for f in fits if f.get("method") == method and f.get("subject") in rows.index)
        fit = f"{secs[0]:.0f}-{secs[-1]:.0f}" if secs else "–"
        print(f"| {method} | {means} | {wins} | {fit} |")


if __name__ == "__main__":
    main()
