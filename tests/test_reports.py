import json
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from persobench.harness.cli import main
from persobench.reports.pareto import pareto_front

from .wandb_records import run_info, summary_of


def test_pareto_front_keeps_only_non_dominated_points():
    x = np.array([0.1, 0.2, 0.3, 0.15, 0.3])
    y = np.array([0.9, 0.8, 0.5, 0.7, 0.4])
    assert pareto_front(x, y).tolist() == [0, 1, 2]


@pytest.fixture(scope="module")
def reported_run(tmp_path_factory, tiny_model, tiny_evaluators):
    store = tmp_path_factory.mktemp("store")
    args = ["run", f"model.source={tiny_model}", f"store={store}", "dataset.subjects=[ball1, cat1]", "dataset.max_prompts=2",
            "dataset.images_per_prompt=2", "sampler.steps=3", "methods=[vanilla-sd, textual-inversion]",
            "method_params={textual-inversion: {steps: 2, batch_size: 2}}", "metrics.names=[dino, clip-i, clip-t, oracle]",
            f"metrics.dino_backbone=dino:{tiny_evaluators / 'dino'}", f"metrics.clip_backbone=clip:{tiny_evaluators / 'clip'}",
            f"metrics.oracle_path={tiny_evaluators / 'oracle'}", "metrics.bootstrap=20", "guidance.name=none",
            "--sweep", "sampler.cfg_scale=2,4"]
    assert main(args) == 0
    return store / "default"


def test_run_ends_with_table_curves_html_and_offline_wandb(reported_run):
    report = reported_run / "report"
    md = (report / "table.md").read_text()
    assert "vanilla-sd" in md and "textual-inversion" in md and "Point" in md
    for name in ("tradeoff-dino.png", "tradeoff-dino.svg", "tradeoff-clip_i.png", "index.html"):
        assert (report / name).is_file(), name
    every = sorted((reported_run / "wandb").glob("offline-run-*/*.wandb"))
    runs = [r for r in every if run_info(r)[1] != "default/sweep"]  # the sweep's summary run: tests/test_tradeoff_curves.py
    assert len(runs) == 4 and len(every) == 5  # 2 sweep points x 2 methods, + the sweep's summary run
    group, name, config = run_info(runs[0])
    assert group == "default" and name.count("/") == 2
    assert json.loads(config["sampler"])["steps"] == 3
    summary = summary_of(runs[0])
    assert {"dino", "clip_i", "clip_t"} <= set(summary)
    tables = list(runs[0].parent.glob("files/media/table/images_*.table.json"))
    assert tables and len(json.loads(tables[0].read_text())["data"]) == 8  # 2 subjects x 2 prompts x 2 images


def test_report_rebuilds_from_the_store(reported_run, capsys):
    shutil.rmtree(reported_run / "report")
    assert main(["report", str(reported_run), "--wandb", "disabled"]) == 0
    assert (reported_run / "report" / "index.html").is_file()
    assert (reported_run / "report" / "tradeoff-dino.png").is_file()


def test_html_report_renders_tables_and_images_in_chromium(reported_run, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium not installed (.ci/run installs Debian's chromium)")
    shot = tmp_path / "shot.png"
    page = (reported_run / "report" / "index.html").resolve()
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", "--allow-file-access-from-files", "--window-size=1200,1600",
                    f"--screenshot={shot}", page.as_uri()], check=True, capture_output=True, timeout=120)
    image = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert image.shape[0] >= 1000
    html = page.read_text()
    assert html.count("<img") >= 6 and "<table" in html
    # the rendered page is not blank: tables (dark text lines) and images (colourful pixels) drew
    colourful = (image.max(-1) - image.min(-1) > 60).mean()
    dark = (image.max(-1) < 80).mean()
    assert colourful > 0.005 and dark > 0.001, (colourful, dark)


def test_scores_parquet_per_point(reported_run):
    for point in (reported_run / "points").iterdir():
        scores = pd.read_parquet(point / "scores.parquet")
        assert len(scores) == 16 and scores["dino"].notna().all()
