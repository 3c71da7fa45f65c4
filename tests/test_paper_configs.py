"""The shipped configs: paper presets with the paper's rows, toy twins for each, no path outside the repo."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from persobench.core.config import load_config
from persobench.core.errors import UserError
from persobench.harness.cli import main

ROOT = Path(__file__).resolve().parent.parent
PAPER = sorted((ROOT / "configs" / "paper").glob("*.yaml"))
SHIPPED = sorted((ROOT / "configs").rglob("*.yaml")) + sorted((ROOT / "persobench" / "configs").glob("*.yaml"))


def _paths(node, key=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, k)
    elif isinstance(node, list):
        for v in node:
            yield from _paths(v, key)
    elif isinstance(node, str) and (key in ("path", "store", "source", "oracle_path") or "/" in node or node.startswith(".")):
        yield node


@pytest.mark.parametrize("config", SHIPPED, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_shipped_config_points_outside_the_repository(config):
    for value in _paths(yaml.safe_load(config.read_text())):
        if value.startswith(("..", "/", "~")) or "../" in value:
            pytest.fail(f"{config.name} points outside the repository: {value!r}")


def test_paper_dreambench_needs_the_dreambench_folder(capsys):
    assert main(["run", "--dry-run", str(ROOT / "configs" / "paper" / "dreambench.yaml")]) == 2
    assert "dataset.path=" in capsys.readouterr().err


def test_paper_dreambench_dry_run_shows_every_method_with_and_without_pick_and_draw(dreambench, capsys):
    assert main(["run", "--dry-run", str(ROOT / "configs" / "paper" / "dreambench.yaml"), f"dataset.path={dreambench}"]) == 0
    out = capsys.readouterr().out
    rows = out.split("table rows (method/guidance): ")[1].splitlines()[0].split(", ")
    methods = ["vanilla-sd", "textual-inversion", "dreambooth-lora", "blip-diffusion"]
    assert rows == [f"{m}/{g}" for m in methods for g in ("none", "pick-and-draw")]
    assert "30 subjects" in out and "24000 images" in out  # 30 subjects x 25 prompts x 4 images x 8 rows


@pytest.mark.parametrize("paper", PAPER, ids=lambda p: p.stem)
def test_every_paper_config_has_a_toy_twin_that_validates_offline(paper, capsys):
    twin = ROOT / "configs" / "toy" / paper.name
    assert twin.is_file(), f"{paper.name} has no toy twin in configs/toy/"
    p, t = load_config(paper, ["dataset.path=/data/dreambench"]), load_config(twin)
    assert t.methods == p.methods and t.sweep == p.sweep  # the same table and the same sweep
    assert (t.guidance.name, t.guidance.compare_unguided) == (p.guidance.name, p.guidance.compare_unguided)
    assert t.model.source == "toyworld" and t.dataset.name == "toybench"
    assert main(["run", "--dry-run", str(twin)]) == 0  # every sweep point validates with the embedded models


def test_missing_dreambench_folder_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="dataset.path"):
        from persobench.datasets import datasets

        datasets.get("dreambench")(load_config(ROOT / "configs" / "paper" / "dreambench.yaml").dataset)
