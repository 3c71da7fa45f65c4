"""The bad-input catalog: each gives a one-line error saying what to do, exit code 2, no partial output."""

import errno
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from persobench.harness.cli import main


@pytest.fixture
def env(tmp_path, tiny_model):
    """Paths each case may break; `base` are the overrides of a valid small run."""
    bench = tmp_path / "bench"
    shutil.copytree(Path(__file__).resolve().parent.parent / "persobench" / "assets" / "toyworld" / "toybench", bench)
    base = [f"model.source={tiny_model}", f"store={tmp_path / 'store'}", "dataset.name=dreambench", f"dataset.path={bench}",
            "dataset.subjects=[ball1]", "dataset.max_prompts=1", "dataset.images_per_prompt=1", "sampler.steps=2",
            "metrics.names=[]", "report.wandb=disabled"]
    return tmp_path, bench, base


def _corrupt_image(bench: Path) -> None:
    (bench / "ball1" / "00.jpg").write_bytes(b"\xff\xd8 not really a jpeg")


def _tiny_image(bench: Path) -> None:
    Image.new("RGB", (1, 1)).save(bench / "ball1" / "00.jpg")


def _sixteen_bit(bench: Path) -> None:
    (bench / "ball1" / "00.jpg").unlink()
    Image.new("I;16", (64, 64)).save(bench / "ball1" / "00.png")


def _empty_subject(bench: Path) -> None:
    for p in (bench / "ball1").iterdir():
        p.unlink()


def _empty_file(bench: Path) -> None:
    (bench / "ball1" / "00.jpg").write_bytes(b"")


def _no_prompts(bench: Path) -> None:
    (bench / "prompts_and_classes.txt").unlink()


def _bad_prompts(bench: Path) -> None:
    (bench / "prompts_and_classes.txt").write_text("nothing useful here\n")


def _missing_subject_folder(bench: Path) -> None:
    shutil.rmtree(bench / "ball1")


def _bad_yaml(tmp: Path) -> list[str]:
    (tmp / "bad.yaml").write_text("sampler: [steps: 3\n")
    return [str(tmp / "bad.yaml")]


def _not_a_mapping(tmp: Path) -> list[str]:
    (tmp / "list.yaml").write_text("- 1\n- 2\n")
    return [str(tmp / "list.yaml")]




CASES = [
    # (id, extra overrides, data breaker, expected fragment)
    ("missing-model-folder", ["model.source=/nonexistent/sd"], None, "does not exist"),
    ("offline-hub-id", ["model.source=some-org/not-cached-model"], None, "not in the local Hugging Face cache"),
    ("unknown-method", ["methods=[dreambooth-lore]"], None, "unknown method"),
    ("unknown-metric", ["metrics.names=[dinov9]"], None, "unknown metric 'dinov9'"),
    ("unknown-scheduler", ["sampler.scheduler=heun9"], None, "unknown scheduler 'heun9'"),
    ("unknown-dataset", ["dataset.name=imagenet"], None, "unknown dataset 'imagenet'"),
    ("unknown-subject", ["dataset.subjects=[dragon]"], None, "unknown subject"),
    ("unknown-layer", ["guidance.name=pick-and-draw", "guidance.layout.layers=[up_blocks.9.attn2]"], None, "unknown cross-attention"),
    ("unknown-guidance", ["guidance.name=pick-and-paint"], None, "unknown guidance"),
    ("unknown-key", ["sampler.stepz=3"], None, "unknown config key"),
    ("wrong-type", ["sampler.steps=many"], None, "must be int"),
    ("negative-steps", ["sampler.steps=-4"], None, "sampler.steps must be a positive"),
    ("tau-outside", ["guidance.appearance.tau=1.2"], None, "tau must be in (0, 1)"),
    ("fp16-on-cpu", ["model.device=cpu", "model.dtype=fp16"], None, "fp16 is not supported on the CPU"),
    ("cuda-missing", ["model.device=cuda"], None, "no CUDA device"),
    ("lora-rank-zero", ["methods=[dreambooth-lora]", "method_params={dreambooth-lora: {rank: 0}}"], None, "rank must be a positive"),
    ("ti-token-in-vocab", ["methods=[textual-inversion]", "method_params={textual-inversion: {placeholder: ball, steps: 1}}"], None,
     "already in the vocabulary"),
    ("subject-token-missing", ["guidance.name=pick-and-draw", "guidance.appearance.subject_token=identifier"], None, "has no identifier"),
    ("real-backbone-without-weights", ["metrics.preset=dreambench", "metrics.names=[dino]"], None, "metrics.dino_weights="),
    ("unknown-metrics-preset", ["metrics.preset=dreambench-xl"], None, "metrics.preset must be null or one of"),
    ("missing-backbone-weights", ["metrics.preset=dreambench", "metrics.clip_weights=/nonexistent/clip.safetensors"], None,
     "metrics.clip_weights: '/nonexistent/clip.safetensors' does not exist"),
    ("corrupt-image", [], _corrupt_image, "cannot be read"),
    ("1x1-image", [], _tiny_image, "at least 16 px"),
    ("16-bit-image", [], _sixteen_bit, "16-bit"),
    ("empty-subject-folder", [], _empty_subject, "has no images"),
    ("empty-image-file", [], _empty_file, "is empty (0 bytes)"),
    ("no-prompts-file", [], _no_prompts, "has no prompts_and_classes.txt"),
    ("not-dreambench-prompts", [], _bad_prompts, "Object Prompts"),
    ("missing-subject-folder", [], _missing_subject_folder, "does not exist"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, env, capsys):
    _, extra, breaker, fragment = case
    tmp, bench, base = env
    if breaker:
        breaker(bench)
    code = main(["run", *base, *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and "\n" not in err, err
    assert fragment in err, err
    assert not list((tmp / "store").rglob("*.png")), "no partial output"


@pytest.mark.parametrize("writer, fragment", [(_bad_yaml, "not valid YAML"), (_not_a_mapping, "must hold a mapping")])
def test_bad_config_files(writer, fragment, env, capsys):
    tmp, _, base = env
    assert main(["run", *writer(tmp), *base]) == 2
    assert fragment in capsys.readouterr().err


def test_full_disk_is_a_clear_error_and_leaves_no_temp_files(env, capsys, monkeypatch):
    tmp, _, base = env
    real_replace = os.replace

    def full(src, dst):
        if str(dst).endswith(".png"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full)
    assert main(["run", *base]) == 2
    err = capsys.readouterr().err
    assert "no space left on the device" in err and "store=" in err
    assert not list((tmp / "store").rglob("*.png")) and not list((tmp / "store").rglob("*.tmp"))


def test_nan_in_guidance_is_reported_with_its_step_and_not_written(env, capsys, monkeypatch):
    import torch

    from persobench.guidance import pick_and_draw

    tmp, _, base = env
    monkeypatch.setattr(pick_and_draw, "layout_loss", lambda *a, **k: torch.full((1,), float("nan")))
    assert main(["run", *base, "guidance.name=pick-and-draw", "guidance.compare_unguided=false"]) == 2
    err = capsys.readouterr().err
    assert "NaN/inf at guided step(s) [0]" in err
    assert not list((tmp / "store").rglob("*.png"))
