import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from persobench.harness.runner import run
from persobench.reports.metrics.scores import scale_clip_t
from persobench.reports.tables import aggregate, bootstrap_ci


def names_context(template: str) -> bool:
    from persobench.toyworld.world import CONTEXTS

    return any(phrase and template.endswith(phrase) for phrase in CONTEXTS.values())


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
    # context accuracy exists exactly where the prompt names a context, and is then a 0/1 hit
    assert scores["oracle_context"].notna().tolist() == [names_context(t) for t in scores["prompt_template"]]
    assert scores["oracle_context"].dropna().isin([0.0, 1.0]).all()
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

    from persobench.core.config import DatasetConfig
    from persobench.datasets import datasets
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

    from persobench.core.config import MetricsConfig
    from persobench.reports.metrics.scores import ScoringContext
    from persobench.toyworld import oracle_metric
    from persobench.toyworld.oracle_metric import oracle

    truth = {"cls": "box", "primary": "red", "secondary": "purple", "pattern": "plain", "scale": "fine", "shape": 0.0}
    # an oracle that reads everything right except the secondary colour
    read = {"class": ["box"] * 2, "primary": ["purple", "red"], "secondary": ["green"] * 2, "pattern": ["plain"] * 2,
            "context": ["studio"] * 2, "accessory": ["none"] * 2}
    monkeypatch.setattr(oracle_metric, "load_oracle", lambda *a: (None, None))
    monkeypatch.setattr(oracle_metric, "oracle_read", lambda *a: read)
    ctx = ScoringContext(Path("."), {}, MetricsConfig(), torch.device("cpu"), [Image.new("RGB", (64, 64))] * 2,
                         {"box1": {"identity": truth}})
    frame = pd.DataFrame({"subject": ["box1", "box1"], "prompt_template": ["a purple {0} {1}", "a {0} {1}"]})
    scores = oracle(ctx, frame)
    assert scores["oracle_identity"].tolist() == [1.0, 0.0]
    assert scores["oracle_attributes"].tolist() == [1.0, 0.75]


# --- one loader for subject, reference and generated images ------------------------------------


def test_load_image_applies_exif_orientation(tmp_path):
    """A phone JPEG stored sideways with EXIF Orientation=6 loads upright, as a viewer shows it."""
    from PIL import Image

    from persobench.core.images import load_image

    shown = Image.new("RGB", (40, 80), (255, 0, 0))  # what the viewer shows: red top half, blue bottom half
    shown.paste((0, 0, 255), (0, 40, 40, 80))
    stored = shown.rotate(90, expand=True)  # orientation 6 = "rotate 90 degrees clockwise to display"
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    im = load_image(tmp_path / "phone.jpg")
    assert im.size == (40, 80) and im.mode == "RGB"
    top, bottom = np.asarray(im)[10, 20].astype(int), np.asarray(im)[70, 20].astype(int)
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200 and bottom[0] < 60


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_load_image_composites_transparency_on_white(tmp_path, mode):
    """Transparent pixels are white, as a viewer shows them, not the colour they happen to hide (black here)."""
    from PIL import Image

    from persobench.core.images import load_image

    if mode == "P":  # palette image, index 0 (black) transparent
        im = Image.new("P", (32, 32), 0)
        im.putpalette([0, 0, 0, 200, 0, 0])
        im.paste(1, (0, 0, 16, 32))
        im.save(tmp_path / "a.png", transparency=0)
    else:
        im = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
        im.paste((200, 0, 0, 255), (0, 0, 16, 32))  # left half opaque
        (im if mode == "RGBA" else im.convert("LA")).save(tmp_path / "a.png")
    arr = np.asarray(load_image(tmp_path / "a.png")).astype(int)
    assert (arr[:, 16:] == 255).all(), "transparent half must be white"
    assert (arr[:, :16] != 255).any(axis=-1).all(), "opaque half keeps its colour"


def test_load_image_blends_partial_alpha_over_white(tmp_path):
    from PIL import Image

    from persobench.core.images import load_image

    Image.new("RGBA", (32, 32), (200, 0, 0, 128)).save(tmp_path / "half.png")
    r, g, b = np.asarray(load_image(tmp_path / "half.png"))[5, 5].astype(int)
    assert abs(r - (200 * 128 + 255 * 127) / 255) <= 1 and abs(g - 255 * 127 / 255) <= 1 and abs(b - g) <= 1


def mini_store(tmp_path, images, subject="ball1"):
    """A store with the given generated images and the records frame that points at them."""
    store = tmp_path / "store"
    (store / "img").mkdir(parents=True)
    rows = []
    for i, im in enumerate(images):
        im.save(store / "img" / f"{i}.png")
        rows.append({"subject": subject, "image": f"img/{i}.png", "prompt": "a sks ball", "clip_text": "a ball",
                     "prompt_template": "a {0} {1}"})
    return store, pd.DataFrame(rows)


def toy_subjects():
    from persobench.core.config import DatasetConfig
    from persobench.datasets import datasets

    return {s.name: s for s in datasets.get("toybench")(DatasetConfig()).subjects}


def test_generated_images_load_like_subject_images(tmp_path):
    """A transparent generated PNG scores as the white image a viewer shows, not as its hidden black pixels."""
    from PIL import Image

    from persobench.core.config import MetricsConfig
    from persobench.reports.metrics.scores import score_frame

    hidden = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    store, frame = mini_store(tmp_path, [hidden, Image.new("RGB", (64, 64), "white")])
    cfg = MetricsConfig(names=["dino", "clip-i"], device="cpu")
    scores = score_frame(frame, store, toy_subjects(), cfg, None)
    assert scores["dino"][0] == pytest.approx(scores["dino"][1], abs=1e-6)
    assert scores["clip_i"][0] == pytest.approx(scores["clip_i"][1], abs=1e-6)


# --- caches key on the backbone's weights -------------------------------------------------------


def perturbed_copy(src, dst, seed):
    """A copy of a backbone folder whose weights differ (same architecture and file names)."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst, dirs_exist_ok=True)
    weights = next(p for p in dst.iterdir() if p.suffix == ".safetensors")
    state = load_file(str(weights))
    g = torch.Generator().manual_seed(seed)
    save_file({k: v + 0.05 * torch.randn(v.shape, generator=g) * v.std().nan_to_num(0) if v.is_floating_point() and v.numel() > 1
               else v for k, v in state.items()}, str(weights))


def test_replaced_backbone_weights_are_never_served_from_a_cache(tmp_path):
    """Score with folder weights A, overwrite the folder with weights B, score again in the same store and process:
    the numbers are B's, equal to a fresh store's, for both the generated-image and the reference embeddings."""
    from persobench.core.components import ASSETS
    from persobench.core.config import MetricsConfig
    from persobench.reports.metrics.scores import score_frame

    rng = np.random.default_rng(0)
    from PIL import Image

    gen = [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(2)]
    store, frame = mini_store(tmp_path, gen)
    subjects = toy_subjects()
    dino, clip = tmp_path / "dino", tmp_path / "clip"
    perturbed_copy(ASSETS / "dino", dino, 1)
    perturbed_copy(ASSETS / "clip", clip, 1)
    cfg = MetricsConfig(names=["dino", "clip-i"], dino_backbone=f"dino:{dino}", clip_backbone=f"clip:{clip}", device="cpu")
    a = score_frame(frame, store, subjects, cfg, None)
    perturbed_copy(ASSETS / "dino", dino, 2)
    perturbed_copy(ASSETS / "clip", clip, 2)
    b = score_frame(frame, store, subjects, cfg, None)
    fresh_store, _ = mini_store(tmp_path / "fresh", gen)
    fresh = score_frame(frame, fresh_store, subjects, cfg, None)
    for col in ("dino", "clip_i"):
        assert not np.allclose(a[col], b[col]), col
        assert np.allclose(b[col], fresh[col], atol=1e-6), col


# --- image-metric scale and pairing -------------------------------------------------------------


def test_image_scale_and_one_to_one_pairing(tmp_path):
    """x100 is DreamBench++'s percent scale; one-to-one compares each image with the one reference it was given
    (the record's `reference`, the subject's first image), as DreamBench++ pairs src_image/tgt_image by name."""
    from PIL import Image

    from persobench.core.config import MetricsConfig
    from persobench.reports.metrics.scores import score_frame

    rng = np.random.default_rng(1)
    store, frame = mini_store(tmp_path, [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(3)])
    subjects = toy_subjects()
    score = lambda **kw: score_frame(frame, store, subjects, MetricsConfig(names=["dino", "clip-i"], device="cpu", **kw), None)  # noqa: E731
    raw, x100 = score(), score(image_scale="x100")
    first, one = score(reference_set="first"), score(pairing="one-to-one")
    for col in ("dino", "clip_i"):
        assert np.allclose(x100[col], 100 * raw[col])
        assert np.allclose(one[col], first[col]) and not np.allclose(one[col], raw[col])


def test_clip_i_and_clip_t_embed_the_generated_images_once(monkeypatch, tmp_path):
    """Issue 17: the CLIP image embedding of a generated image is computed once for CLIP-I and CLIP-T (and the
    scores are what each metric computes alone)."""
    import torch
    from PIL import Image

    from persobench.core.config import DatasetConfig, MetricsConfig
    from persobench.datasets import datasets
    from persobench.reports.metrics import backbones
    from persobench.reports.metrics.scores import ScoringContext, clip_i, clip_t

    subjects = {s.name: s for s in datasets.get("toybench")(DatasetConfig()).subjects if s.name == "ball1"}
    images = [Image.new("RGB", (64, 64), c) for c in ("red", "blue", "green")]
    frame = pd.DataFrame({"subject": ["ball1"] * 3, "clip_text": ["a ball", "a ball on the beach", "a red ball"],
                          "prompt": ["a sks ball"] * 3})
    calls = []
    original = backbones.Backbone.embed_images

    def counting(self, ims, device, batch_size):
        calls.append(len(ims))
        return original(self, ims, device, batch_size)

    monkeypatch.setattr(backbones.Backbone, "embed_images", counting)
    cfg = MetricsConfig(clip_backbone="toy-clip")
    alone_i = clip_i(ScoringContext(tmp_path, subjects, cfg, torch.device("cpu"), images, None), frame)
    alone_t = clip_t(ScoringContext(tmp_path, subjects, cfg, torch.device("cpu"), images, None), frame)
    calls.clear()
    ctx = ScoringContext(tmp_path, subjects, cfg, torch.device("cpu"), images, None)
    both_i, both_t = clip_i(ctx, frame), clip_t(ctx, frame)
    assert calls.count(3) == 1, calls  # the generated images once (the references are cached on disk or per subject)
    pd.testing.assert_frame_equal(both_i, alone_i)
    pd.testing.assert_frame_equal(both_t, alone_t)
