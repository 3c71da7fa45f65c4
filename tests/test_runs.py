import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from persobench.harness.runner import run


def images(store: Path) -> dict[str, bytes]:
    return {p.relative_to(store).as_posix(): p.read_bytes() for p in sorted(store.rglob("images/**/*.png"))}


def test_run_writes_store_with_records_config_and_summary(make_config):
    cfg = make_config()
    point = run(cfg)
    frame = pd.read_parquet(point / "records.parquet")
    assert len(frame) == 2 * 2 * 2
    assert set(frame["method"]) == {"vanilla-sd"}
    assert {"subject", "prompt", "clip_text", "seed", "fit_key", "sample_key", "guidance", "seconds"} <= set(frame.columns)
    assert (point / "config.yaml").is_file() and (point / "summary.md").is_file()
    row = frame.iloc[0]
    assert row["prompt"] == row["clip_text"]  # vanilla SD: the class-noun prompt
    assert Image.open(Path(cfg.store) / cfg.name / row["image"]).size == (64, 64)
    assert not list(Path(cfg.store).rglob("*.tmp"))


def test_rerun_with_nothing_changed_does_nothing(make_config):
    cfg = make_config()
    run(cfg)
    store = Path(cfg.store) / cfg.name
    before = {p: p.stat().st_mtime_ns for p in store.rglob("images/**/*")}
    run(cfg)
    after = {p: p.stat().st_mtime_ns for p in store.rglob("images/**/*")}
    assert before == after


def test_changed_sampler_resamples_but_reuses_the_fit(make_config):
    run(make_config())
    point = run(make_config("sampler.cfg_scale=2.0"))
    store = point.parent.parent
    frame = pd.read_parquet(point / "records.parquet")
    assert len(list((store / "fits").rglob("fit.json"))) == 2  # one per subject, not per sampler setting
    assert frame["sample_key"].nunique() == 2  # new images for the new setting, two subjects
    assert len(list(store.rglob("images/**/*.png"))) == 16


def test_images_independent_of_batch_size_and_order(make_config, tmp_path):
    a = run(make_config("sampler.batch_size=1", f"store={tmp_path / 'a'}"))
    b = run(make_config("sampler.batch_size=5", f"store={tmp_path / 'b'}", "dataset.subjects=[cat1, ball1]"))
    ia, ib = images(a.parent.parent), images(b.parent.parent)
    assert ia.keys() == ib.keys()
    for k in ia:
        x = np.asarray(Image.open(a.parent.parent / k), dtype=int)
        y = np.asarray(Image.open(b.parent.parent / k), dtype=int)
        assert np.abs(x - y).max() <= 1, k  # same seed, same noise; batched BLAS may differ in the last bit


def test_killed_run_resumes_to_the_uninterrupted_result(make_config, tiny_model, tmp_path):
    args = [f"model.source={tiny_model}", "dataset.subjects=[ball1, cat1]", "dataset.max_prompts=3",
            "dataset.images_per_prompt=2", "sampler.steps=25", "sampler.batch_size=1", "metrics.names=[]", "report.wandb=disabled",
            "methods=[vanilla-sd]", "guidance.name=none"]  # not the demo's methods and guidance (default.yaml)
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "persobench", "run", *args, f"store={killed}"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(killed.rglob("images/**/*.json"))) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list(killed.rglob("images/**/*.json")))
    assert 3 <= done_before < 12, "the run must be killed mid-way"
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == 0
    reference = run(make_config(*args, f"store={tmp_path / 'ref'}"))
    got, want = images(killed / "default"), images(reference.parent.parent)
    assert got == want and len(got) == 12
    assert not [p for p in killed.rglob("*") if p.name.endswith(".tmp")]
    frame = pd.read_parquet(killed / "default" / "points" / "main" / "records.parquet")
    assert len(frame) == 12 and frame["image"].is_unique


def test_model_fingerprint_ignores_model_cards_but_not_weights(tiny_model, tmp_path):
    import shutil

    from persobench.core.components import fingerprint

    folder = tmp_path / "sd"
    shutil.copytree(tiny_model, folder)
    before = fingerprint(folder)
    (folder / "MODEL_CARD.md").write_text("# rewritten card\n")
    assert fingerprint(folder) == before  # a re-written card must not invalidate fits, caches or the gate baseline
    weights = next(folder.glob("unet/*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert fingerprint(folder) != before
