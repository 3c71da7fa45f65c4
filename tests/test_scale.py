"""Scale and reliability: sharded runs, repeated SIGKILL + resume, concurrent runs on one store."""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

ARGS = ["dataset.subjects=[ball1, cat1]", "dataset.max_prompts=3", "dataset.images_per_prompt=2", "sampler.steps=12",
        "sampler.batch_size=2", "metrics.names=[]", "report.wandb=disabled", "methods=[vanilla-sd, textual-inversion]",
        "method_params={textual-inversion: {steps: 3, batch_size: 2}}", "guidance.name=none"]
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def artefacts(run_root: Path) -> dict[str, object]:
    """Everything a run stores except timings: image bytes, fit files, records and fit.json without 'seconds'."""
    out: dict[str, object] = {}
    for p in sorted(run_root.rglob("*")):
        rel = p.relative_to(run_root).as_posix()
        if not p.is_file() or rel.startswith(("points", "report", "cache")) or p.name.endswith(".lock"):
            continue
        if p.suffix == ".json" and (rel.startswith("images") or p.name == "fit.json"):
            out[rel] = {k: v for k, v in json.loads(p.read_text()).items() if k != "seconds"}
        else:
            out[rel] = p.read_bytes()
    return out


def command(tiny_model: Path, store: Path, launcher: list[str] | None = None) -> list[str]:
    prefix = launcher or [sys.executable, "-m"]
    return [*prefix, "persobench", "run", f"model.source={tiny_model}", f"store={store}", *ARGS]


@pytest.fixture(scope="module")
def reference(tiny_model, tmp_path_factory) -> dict[str, object]:
    store = tmp_path_factory.mktemp("reference")
    subprocess.run(command(tiny_model, store), env=ENV, check=True, capture_output=True)
    return artefacts(store / "default")


# the sharded run covers what is easiest to get wrong across processes: a trained LoRA fit and guidance
SHARD_ARGS = ["dataset.subjects=[ball1, cat1]", "dataset.max_prompts=2", "dataset.images_per_prompt=2", "sampler.steps=6",
              "sampler.batch_size=2", "metrics.names=[]", "report.wandb=disabled", "methods=[vanilla-sd, dreambooth-lora]",
              "method_params={dreambooth-lora: {steps: 3, batch_size: 2}}", "guidance.name=pick-and-draw"]


def test_two_processes_produce_the_same_store_as_one(tiny_model, tmp_path):
    one = tmp_path / "one"
    subprocess.run([*command(tiny_model, one), *SHARD_ARGS], env=ENV, check=True, capture_output=True)
    torchrun = shutil.which("torchrun")
    assert torchrun, "torchrun ships with torch"
    store = tmp_path / "sharded"
    launcher = [torchrun, "--nproc-per-node=2", f"--master-port={29500 + random.randrange(400)}", "-m"]
    done = subprocess.run([*command(tiny_model, store, launcher), *SHARD_ARGS], env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    shares = {int(m[0]): (int(m[1]), int(m[2])) for m in re.findall(r"rank (\d)/2: (\d+) fit unit\(s\), (\d+) image\(s\)", done.stderr)}
    assert sorted(shares) == [0, 1], done.stderr[-2000:]
    assert all(fits > 0 and images > 0 for fits, images in shares.values()), shares  # each rank did real work
    assert sum(images for _, images in shares.values()) == 32  # 2 methods x {none, pick-and-draw} x 2 subjects x 2 x 2
    assert artefacts(store / "default") == artefacts(one / "default")
    frame = pd.read_parquet(store / "default" / "points" / "main" / "records.parquet")
    assert len(frame) == 32 and frame["image"].is_unique
    assert set(frame["guidance"]) == {"none", "pick-and-draw"} and set(frame["method"]) == {"vanilla-sd", "dreambooth-lora"}
    assert any(p.name == "pytorch_lora_weights.safetensors" for p in (store / "default" / "fits").rglob("*"))


def _written(store: Path) -> int:
    return sum(1 for p in store.rglob("*") if p.is_file()) if store.exists() else 0


def test_ten_kills_and_resumes_end_identical(tiny_model, tmp_path, reference):
    """Ten SIGKILLs, then a clean resume ends with the uninterrupted run's store. Most kills are timed from the
    process's first change to the store (the point's config, a fit or a batch), so they land inside fits,
    sampling and writes whatever this machine's start-up costs; every third lands during start-up and loading."""
    store = tmp_path / "killed"
    rng = random.Random(0)
    kills = 0
    for attempt in range(10):
        before = _written(store)
        proc = subprocess.Popen(command(tiny_model, store), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if attempt % 3 == 2:
            time.sleep(rng.uniform(0.5, 3.0))
        else:
            deadline = time.monotonic() + 300
            while proc.poll() is None and _written(store) == before:
                if time.monotonic() > deadline:
                    proc.kill()
                    pytest.fail("the run changed nothing in its store in 300 s")
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.5))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        else:
            assert proc.returncode == 0, f"attempt {attempt} failed on its own (exit {proc.returncode})"
        proc.wait()
        # every complete-looking file is whole: PNGs decode, records parse (temp files are swept on the next start)
        for png in store.rglob("images/**/*.png"):
            Image.open(png).load()
        for record in store.rglob("images/**/*.json"):
            json.loads(record.read_text())
    assert kills >= 5
    assert subprocess.run(command(tiny_model, store), env=ENV, capture_output=True).returncode == 0
    assert not [p for p in store.rglob("*") if p.name.endswith(".tmp")], "a half-written temp file survived"
    assert artefacts(store / "default") == reference
    frame = pd.read_parquet(store / "default" / "points" / "main" / "records.parquet")
    assert len(frame) == 24 and frame["image"].is_unique


def test_two_concurrent_runs_on_one_store(tiny_model, tmp_path, reference):
    store = tmp_path / "shared"
    procs = [subprocess.Popen(command(tiny_model, store), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
    assert artefacts(store / "default") == reference
    assert len(list((store / "default" / "fits").rglob("learned_embeds.safetensors"))) == 2


def test_sharded_metric_jobs_give_the_single_process_scores(tiny_model, tiny_evaluators, tmp_path):
    metrics = ["metrics.names=[dino, clip-t]", f"metrics.dino_backbone=dino:{tiny_evaluators / 'dino'}",
               f"metrics.clip_backbone=clip:{tiny_evaluators / 'clip'}", "methods=[vanilla-sd]"]
    launcher = [shutil.which("torchrun"), "--nproc-per-node=2", f"--master-port={29500 + random.randrange(400)}", "-m"]
    for store, prefix in ((tmp_path / "one", None), (tmp_path / "two", launcher)):
        done = subprocess.run(command(tiny_model, store, prefix) + metrics, env=ENV, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
    one = pd.read_parquet(tmp_path / "one" / "default" / "points" / "main" / "scores.parquet").drop(columns="seconds")
    two = pd.read_parquet(tmp_path / "two" / "default" / "points" / "main" / "scores.parquet").drop(columns="seconds")
    pd.testing.assert_frame_equal(one, two, atol=1e-6)
    assert not list((tmp_path / "two").rglob("scores.part-*"))
