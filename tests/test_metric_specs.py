"""Metrics describe themselves: a metric registered here alone (no edit anywhere in persobench) flows into
scores.parquet, the tables, the HTML report, W&B and the regression gate, with its spec's label and tolerance."""

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from persobench.harness.cli import main
from persobench.reports.metrics.spec import Column, MetricSpec, axes, default_tolerances, metric_columns, metrics

from .wandb_records import summary_of

SHIFT = {"value": 0.0}  # what the sabotage test adds to every brightness value


def brightness(ctx, frame: pd.DataFrame) -> pd.DataFrame:
    """Mean pixel value of each generated image, in [0, 1]."""
    values = [float(np.asarray(im.convert("L"), dtype=float).mean() / 255) + SHIFT["value"] for im in ctx.images]
    return pd.DataFrame({"brightness": values})


BRIGHTNESS = MetricSpec("brightness", brightness, (Column("brightness", "Brightness", higher_is_better=True, tolerance=0.05),))


@pytest.fixture(scope="module")
def registered():
    with metrics.registered("brightness", BRIGHTNESS, "mean pixel value of each generated image"):
        yield
    assert "brightness" not in metrics


def _overrides(tiny_model, store):
    return [f"model.source={tiny_model}", f"store={store}", "dataset.subjects=[ball1]", "dataset.max_prompts=2",
            "dataset.images_per_prompt=2", "sampler.steps=2", "methods=[vanilla-sd]", "guidance.name=none", "metrics.names=[brightness]",
            "metrics.bootstrap=10"]


@pytest.fixture(scope="module")
def brightness_run(registered, tmp_path_factory, tiny_model):
    store = tmp_path_factory.mktemp("store")
    assert main(["run", *_overrides(tiny_model, store), "report.wandb=offline"]) == 0
    return store / "default"


def test_the_builtin_specs_keep_todays_columns_labels_and_tolerances():
    columns = [(c.name, c.label, c.tolerance, c.higher_is_better) for c in metric_columns()][:6]
    assert columns == [("dino", "DINO", 0.02, True), ("clip_i", "CLIP-I", 0.02, True), ("clip_t", "CLIP-T", 0.01, True),
                       ("oracle_identity", "Oracle-ID", 0.1, True), ("oracle_attributes", "Oracle-Attr", 0.05, True),
                       ("oracle_context", "Oracle-Ctx", 0.1, True)]
    assert axes("subject") == ["dino", "clip_i"] and axes("text") == ["clip_t"]
    from pathlib import Path

    shipped = json.loads((Path(__file__).parent / "baselines" / "toyworld.json").read_text())["tolerances"]
    assert {k: default_tolerances()[k] for k in shipped} == shipped


def test_a_spec_is_checked_when_it_is_made():
    with pytest.raises(ValueError, match="higher is better"):
        Column("loss", "Loss", higher_is_better=False, axis="subject")
    with pytest.raises(ValueError, match="aggregation"):
        Column("x", "X", aggregation="mode")
    with pytest.raises(ValueError, match="axis"):
        Column("x", "X", axis="colour")


def test_registry_unregisters_and_a_context_restores(registered):
    assert "brightness" in metrics and metrics.get("brightness") is BRIGHTNESS
    with pytest.raises(ValueError, match="registered twice"):
        metrics.register("brightness")(BRIGHTNESS)
    metrics.unregister("brightness")
    assert "brightness" not in metrics and "oracle" in metrics  # the plugins stay loaded
    metrics.register("brightness", "mean pixel value of each generated image")(BRIGHTNESS)


def test_a_metric_returning_undeclared_columns_fails_naming_them(registered, tmp_path, tiny_model):
    wrong = MetricSpec("wrong", lambda ctx, frame: pd.DataFrame({"other": [0.0] * len(frame)}), (Column("right", "Right"),))
    with metrics.registered("wrong", wrong):
        store = tmp_path / "store"
        overrides = [o.replace("[brightness]", "[wrong]") for o in _overrides(tiny_model, store)]
        with pytest.raises(ValueError, match="'wrong' returned columns \\['other'\\]; its spec declares \\['right'\\]"):
            main(["run", *overrides, "report.wandb=disabled"])


def test_a_new_metric_flows_into_scores_and_tables(brightness_run):
    point = next((brightness_run / "points").iterdir())
    scores = pd.read_parquet(point / "scores.parquet")
    assert scores["brightness"].between(0, 1).all() and len(scores) == 4
    table = pd.read_csv(point / "table.csv")
    assert {"brightness", "brightness_lo", "brightness_hi"} <= set(table.columns)
    overall = table[table["split"] == "all"].iloc[0]
    assert overall["brightness"] == pytest.approx(scores["brightness"].mean())
    assert "| Brightness |" in (point / "table.md").read_text()
    assert "Brightness" in (point / "table.tex").read_text()
    report = brightness_run / "report"
    assert "Brightness" in (report / "table.md").read_text() and "<th>Brightness</th>" in (report / "index.html").read_text()
    assert "Brightness" in (point / "summary.md").read_text()


def test_a_new_metric_flows_into_wandb(brightness_run):
    runs = sorted((brightness_run / "wandb").glob("offline-run-*/*.wandb"))
    assert len(runs) == 1
    point = next((brightness_run / "points").iterdir())
    overall = pd.read_csv(point / "table.csv").query("split == 'all'").iloc[0]
    assert float(summary_of(runs[0])["brightness"]) == pytest.approx(overall["brightness"])
    table = json.loads(next(runs[0].parent.glob("files/media/table/images_*.table.json")).read_text())
    assert "brightness" in table["columns"]


def test_a_new_metric_is_gated_with_its_spec_tolerance(registered, tmp_path, tiny_model, capsys, monkeypatch):
    config = tmp_path / "gate.yaml"
    config.write_text(yaml.safe_dump({
        "name": "gate", "seed": 0, "methods": ["vanilla-sd"], "model": {"source": str(tiny_model), "device": "cpu"},
        "sampler": {"steps": 2}, "dataset": {"subjects": ["ball1"], "max_prompts": 2, "images_per_prompt": 2},
        "metrics": {"names": ["brightness"], "bootstrap": 0}, "report": {"wandb": "disabled"}}))
    baseline = tmp_path / "baseline.json"
    assert main(["regress", str(config), "--baseline", str(baseline), "--update", "--reason", "first"]) == 0
    data = json.loads(baseline.read_text())
    assert set(data["scores"]["vanilla-sd/none"]) == {"brightness"} and data["tolerances"]["brightness"] == 0.05
    monkeypatch.setitem(SHIFT, "value", 0.04)  # within the spec's tolerance
    assert main(["regress", str(config), "--baseline", str(baseline)]) == 0
    capsys.readouterr()
    monkeypatch.setitem(SHIFT, "value", 0.08)  # beyond it
    assert main(["regress", str(config), "--baseline", str(baseline)]) == 1
    err = capsys.readouterr().err
    assert "vanilla-sd/none brightness" in err and "drift +0.0800, tolerance 0.05" in err
