"""Shared fixtures: a tiny random SD pipeline built from configs (no hub), and data locations."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from persobench.core.config import load_config

ROOT = Path(__file__).resolve().parent.parent
DREAMBENCH = Path(os.environ.get("PERSOBENCH_DREAMBENCH", ROOT.parent / "shared" / "dreambench"))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from persobench.toyworld.training.architectures import save_random_pipeline

    return save_random_pipeline(tmp_path_factory.mktemp("tiny-sd") / "sd", tiny=True, seed=0)


@pytest.fixture(scope="session")
def dreambench() -> Path:
    if not (DREAMBENCH / "prompts_and_classes.txt").is_file():
        pytest.skip(f"DreamBench copy not found at {DREAMBENCH} (set PERSOBENCH_DREAMBENCH)")
    return DREAMBENCH


@pytest.fixture
def make_config(tmp_path, tiny_model):
    """A small run config on the tiny model with a store in tmp_path; extra overrides as args."""

    def make(*overrides: str):
        base = [
            f"model.source={tiny_model}",
            f"store={tmp_path / 'runs'}",
            "dataset.subjects=[ball1, cat1]",
            "dataset.max_prompts=2",
            "dataset.images_per_prompt=2",
            "sampler.steps=4",
            "sampler.batch_size=3",
            "metrics.names=[]",
        ]
        return load_config(None, base + list(overrides))

    return make


@pytest.fixture(scope="session")
def tiny_evaluators(tmp_path_factory) -> Path:
    """Toy CLIP / DINO / oracle from the smoke configuration of their real training code."""
    from persobench.toyworld.training.stages import run_stages

    root = tmp_path_factory.mktemp("tiny-evaluators")
    run_stages("clip,dino,oracle", root / "out", root / "work", smoke=True)
    return root / "out"


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    """A smoke-trained generator + DINO + BLIP subject encoder (the real training code, tiny sizes)."""
    from persobench.toyworld.training.stages import run_stages

    root = tmp_path_factory.mktemp("tiny-world")
    run_stages("vae,t2i,dino,blip", root / "out", root / "work", smoke=True)
    return root / "out"
