import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from persobench.harness.runner import run
from persobench.reports.metrics.scores import scale_clip_t
from persobench.reports.tables import aggregate, bootstrap_ci


@pytest.fixture
def scored_config(make_config, tiny_evaluators):
    def make(*extra):
        return make_config("metrics.names=[dino, clip-i, clip-t, oracle]", f"metrics.dino_backbone=dino:{tiny_evaluators / 'dino'}",
                           f"metrics.clip_backbone=clip:{tiny_evaluators / 'clip'}", f"metrics.oracle_path={tiny_evaluators / 'oracle'}",
                           "metrics.bootstrap=50", *extra)
    return make


def test_run_scores_every_image_and_writes_tables(scored_config):
    cfg = scored_config()
    point = run(cfg)
    scores = pd.read_parquet(point / "scores.parquet")
    assert len(scores) == 8
    for col in ("dino", "clip_i", "clip_t", "oracle_identity", "oracle_attributes"):
        assert scores[col].between(-1, 1).all(), col
    assert scores["oracle_context"].isna().any() or scores["oracle_context"].notna().all()
    # graded identity: the fraction of (class, primary, secondary, pattern) read right, never below the strict score
    fractions = (scores["oracle_attributes"] * 12).round(6) % 1 == 0  # of 4 attributes, or 3 without the secondary
    assert (scores["oracle_attributes"] >= scores["oracle_identity"]).all() and fractions.all()
    table = pd.read_csv(point / "table.csv")
    assert set(table["split"]) == {"all", "object", "live"}
    md = (point / "table.md").read_text()
    assert "DINO" in md and "CLIP-T" in md and "±" in md
    assert r"\toprule" in (point / "table.tex").read_text()
    assert (point.parent.parent / "cache" / "references").is_dir()
    written = json.loads((point / "metrics_protocol.json").read_text())
    assert written["metrics"]["clip_t_scale"] == "raw" and written["metrics"]["reference_set"] == "all"
    assert {"library", "model"} <= set(next(iter(written["backbones"].values())))
    assert any("Normalize" in v.get("preprocess", "") or "mean" in v.get("data_config", "") for v in written["backbones"].values())


def test_dino_score_is_mean_cosine_to_references(scored_config, tiny_evaluators):
    """Recompute one image's DINO score by hand from the backbone."""
    import torch.nn.functional as F
    from PIL import Image

    from persobench.datasets import datasets
    from persobench.harness.config import DatasetConfig
    from persobench.reports.metrics.backbones import get_backbone

    cfg = scored_config("metrics.names=[dino]")
    point = run(cfg)
    row = pd.read_parquet(point / "scores.parquet").iloc[0]
    bb = get_backbone(f"dino:{tiny_evaluators / 'dino'}")
    subject = next(s for s in datasets.get("toybench")(DatasetConfig()).subjects if s.name == row["subject"])
    import torch

    x = torch.stack([bb.transform(im) for im in [Image.open(point.parent.parent / row["image"]).convert("RGB"), *subject.images()]])
    f = F.normalize(bb.model(x), dim=-1)
    assert abs(float((f[0] @ f[1:].T).mean().detach()) - row["dino"]) < 1e-4


def test_clip_t_scales():
    cos = np.array([-0.2, 0.3])
    assert np.allclose(scale_clip_t(cos, "raw"), cos)
    assert np.allclose(scale_clip_t(cos, "x100"), [-20, 30])
    assert np.allclose(scale_clip_t(cos, "w2.5"), [0, 0.75])


def test_aggregate_averages_cells_then_methods_with_intervals():
    frame = pd.DataFrame({
        "method": ["a"] * 4 + ["b"] * 4, "guidance": "none", "kind": ["object", "object", "live", "live"] * 2,
        "subject": ["s1", "s1", "s2", "s2"] * 2, "prompt_template": ["p", "p", "q", "q"] * 2,
        "dino": [0.0, 1.0, 1.0, 1.0, 0.2, 0.2, 0.4, 0.4],
    })
    table = aggregate(frame, bootstrap=200)
    a = table[(table["method"] == "a") & (table["split"] == "all")].iloc[0]
    assert a["dino"] == pytest.approx(0.75)  # cells: 0.5 (s1,p) and 1.0 (s2,q)
    assert a["dino_lo"] <= a["dino"] <= a["dino_hi"]
    live = table[(table["method"] == "b") & (table["split"] == "live")].iloc[0]
    assert live["dino"] == pytest.approx(0.4)


def test_bootstrap_interval_narrows_with_more_data():
    rng = np.random.default_rng(0)
    small = bootstrap_ci(rng.normal(size=10), 500)
    large = bootstrap_ci(rng.normal(size=1000), 500)
    assert (large[1] - large[0]) < (small[1] - small[0])


def test_published_reference_rows_for_real_scale_tables():
    from persobench.reports.tables import paper_layout

    frame = pd.DataFrame({"method": ["dreambooth-lora"], "guidance": ["none"], "kind": ["object"], "subject": ["dog"],
                          "prompt_template": ["p"], "dino": [0.6], "clip_i": [0.7], "clip_t": [0.3]})
    layout = paper_layout(aggregate(frame, 0), published=True)
    row = layout[layout["Method"].str.contains("DreamBooth")].iloc[0]
    assert (row["DINO"], row["CLIP-I"], row["CLIP-T"]) == ("0.668", "0.803", "0.305")
    assert len(paper_layout(aggregate(frame, 0))) == 1


def test_oracle_scores_the_secondary_colour_only_where_the_prompt_lets_it_show(monkeypatch):
    """box1 is red with purple trim: 'a purple box' shows no secondary colour, 'a box' does."""
    import torch
    from PIL import Image

    from persobench.datasets.toyworld import evaluate
    from persobench.harness.config import MetricsConfig
    from persobench.reports.metrics.scores import ScoringContext, oracle

    truth = {"cls": "box", "primary": "red", "secondary": "purple", "pattern": "plain", "scale": "fine", "shape": 0.0}
    # an oracle that reads everything right except the secondary colour
    read = {"class": ["box"] * 2, "primary": ["purple", "red"], "secondary": ["green"] * 2, "pattern": ["plain"] * 2,
            "context": ["studio"] * 2, "accessory": ["none"] * 2}
    monkeypatch.setattr(evaluate, "load_oracle", lambda *a: (None, None))
    monkeypatch.setattr(evaluate, "oracle_read", lambda *a: read)
    ctx = ScoringContext(Path("."), {}, MetricsConfig(), torch.device("cpu"), [Image.new("RGB", (64, 64))] * 2,
                         {"box1": {"identity": truth}})
    frame = pd.DataFrame({"subject": ["box1", "box1"], "prompt_template": ["a purple {0} {1}", "a {0} {1}"]})
    scores = oracle(ctx, frame)
    assert scores["oracle_identity"].tolist() == [1.0, 0.0]
    assert scores["oracle_attributes"].tolist() == [1.0, 0.75]
