"""The Python API (`import persobench`): the CLI's code path, from a notebook; and the docs' example runs."""

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import persobench

DOC = Path(__file__).resolve().parent.parent / "docs" / "python_api.md"


@pytest.fixture(scope="module")
def api_run(tiny_model, tmp_path_factory):
    store = tmp_path_factory.mktemp("api")
    cfg = persobench.load_config(overrides=[
        f"model.source={tiny_model}", f"store={store}", "dataset.subjects=[ball1, cat1]", "dataset.max_prompts=2",
        "dataset.images_per_prompt=2", "sampler.steps=3", "sampler.batch_size=1", "methods=[vanilla-sd, textual-inversion]",
        "method_params={textual-inversion: {steps: 2, batch_size: 2}}", "guidance.name=pick-and-draw",
        "metrics.names=[dino, clip-i, clip-t]", "report.wandb=disabled"])
    return cfg, persobench.run(cfg)


def test_run_returns_the_point_its_scores_and_table(api_run):
    cfg, result = api_run
    assert result.point == Path(cfg.store) / "default" / "points" / "main" and result.point.is_dir()
    assert isinstance(result.scores, pd.DataFrame) and len(result.scores) == 2 * 2 * 2 * 2 * 2  # methods x guidance x 2 x 2 x 2
    assert {"dino", "clip_i", "clip_t"} <= set(result.scores.columns)
    assert list(zip(result.table["method"], result.table["guidance"])) == [
        ("vanilla-sd", "none"), ("vanilla-sd", "pick-and-draw"), ("textual-inversion", "none"), ("textual-inversion", "pick-and-draw")]
    assert result.table["dino"].between(-1, 1).all()
    assert result.report.name == "index.html" and result.report.is_file()
    assert "| Method |" in result.summary() and "index.html" in result.summary()


@pytest.mark.parametrize("guidance", ["none", "pick-and-draw"])
def test_fit_and_sample_give_the_runs_images(api_run, guidance):
    cfg, result = api_run
    handle = persobench.fit("textual-inversion", "cat1", cfg)
    fits = list((Path(cfg.store) / "default" / "fits" / "textual-inversion").glob("cat1-*"))
    assert [handle.folder] == fits  # the run's fit, not a second one
    template = result.records[result.records["subject"] == "cat1"]["prompt_template"].iloc[0]
    images = handle.sample(template, n=2, guidance=guidance)
    assert len(images) == 2 and all(isinstance(i, Image.Image) for i in images)
    stored = result.records.query("method == 'textual-inversion' and subject == 'cat1' and guidance == @guidance "
                                  "and prompt_template == @template").sort_values("index")
    for image, rel in zip(images, stored["image"]):
        assert np.array_equal(np.asarray(image), np.asarray(Image.open(Path(cfg.store) / "default" / rel).convert("RGB")))


def test_sample_refuses_an_unknown_guidance(api_run):
    cfg, _ = api_run
    with pytest.raises(persobench.UserError, match="unknown guidance"):
        persobench.fit("vanilla-sd", "ball1", cfg).sample("a {0} {1}", n=1, guidance="pick-n-draw")


def test_the_python_api_doc_runs_as_written(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert blocks, f"{DOC} has no python blocks"
    monkeypatch.chdir(tmp_path)  # the example's store (runs/) lands here
    monkeypatch.setenv("WANDB_MODE", os.environ.get("WANDB_MODE", "offline"))
    namespace: dict = {}
    for code in blocks:
        exec(compile(code, str(DOC), "exec"), namespace)
    assert (tmp_path / "runs").is_dir()


def test_fit_sees_the_runs_subjects_when_bad_images_are_skipped(tiny_model, tmp_path):
    """With dataset.skip_bad_images the run fits on the usable images only; `fit` must pass the same pre-flight
    (same images, same fit key) and load that fit, not refit and then trip over the bad file."""
    bench = tmp_path / "bench"
    (bench / "mug").mkdir(parents=True)
    for i, colour in enumerate(("red", "blue")):
        Image.new("RGB", (64, 64), colour).save(bench / "mug" / f"{i}.png")
    (bench / "mug" / "broken.jpg").write_bytes(b"not a jpeg")
    (bench / "classes.csv").write_text("subject,class\nmug,mug\n")
    cfg = persobench.load_config(overrides=[
        f"model.source={tiny_model}", f"store={tmp_path / 'store'}", "dataset.name=folder", f"dataset.path={bench}",
        "dataset.skip_bad_images=true", "dataset.max_prompts=1", "dataset.images_per_prompt=1", "sampler.steps=2",
        "methods=[textual-inversion]", "method_params={textual-inversion: {steps: 2, batch_size: 2}}", "guidance.name=none",
        "metrics.names=[]", "report.wandb=disabled"])
    persobench.run(cfg)
    fits = list((tmp_path / "store" / "default" / "fits" / "textual-inversion").glob("mug-*"))
    handle = persobench.fit("textual-inversion", "mug", cfg)
    assert [handle.folder] == fits
