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
            "metrics.names=[]", "report.wandb=disabled", "methods=[vanilla-sd]", "guidance.name=none"]  # whatever default.yaml runs
    return tmp_path, bench, base


def _corrupt_image(bench: Path) -> None:
    (bench / "ball1" / "00.jpg").write_bytes(b"\xff\xd8 not really a jpeg")


def _tiny_image(bench: Path) -> None:
    Image.new("RGB", (1, 1)).save(bench / "ball1" / "00.jpg")


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


def _two_bad_images(bench: Path) -> None:
    _corrupt_image(bench)
    Image.new("RGB", (1, 1)).save(bench / "ball1" / "01.jpg")


def _all_images_bad_and_skipped(bench: Path) -> None:
    for p in (bench / "ball1").iterdir():
        p.write_bytes(b"junk")


def _no_ground_truth(bench: Path) -> None:
    (bench / "ground_truth.json").unlink()


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
    ("two-bad-images", [], _two_bad_images, "2 image(s) cannot be used"),
    ("every-image-skipped", ["dataset.skip_bad_images=true"], _all_images_bad_and_skipped, "subject 'ball1' has no usable image"),
    ("zero-images-per-prompt", ["dataset.images_per_prompt=0"], None, "dataset.images_per_prompt must be positive, got 0"),
    ("zero-max-prompts", ["dataset.max_prompts=0"], None, "dataset.max_prompts must be positive or null, got 0"),
    ("more-references-than-images", ["guidance.name=pick-and-draw", "guidance.appearance.num_references=9"], None,
     "subject 'ball1' has 5"),
    ("layout-sigma", ["guidance.layout.sigma=0"], None, "guidance.layout.sigma must be > 0, got 0"),
    ("layout-kernel-even", ["guidance.layout.kernel=4"], None, "guidance.layout.kernel must be a positive odd size (e.g. 3), got 4"),
    ("layout-kernel-zero", ["guidance.layout.kernel=0"], None, "guidance.layout.kernel must be a positive odd size (e.g. 3), got 0"),
    ("zero-iterations", ["guidance.iterations=0"], None, "guidance.iterations must be positive, got 0"),
    ("oracle-without-ground-truth", ["metrics.names=[oracle]"], _no_ground_truth, "need ground truth that dataset 'dreambench' lacks"),
    ("empty-subject-folder", [], _empty_subject, "has no images"),
    ("empty-image-file", [], _empty_file, "empty file, 0 bytes"),
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

    from persobench.guidance import layout_math

    tmp, _, base = env
    monkeypatch.setattr(layout_math, "layout_loss", lambda *a, **k: torch.full((1,), float("nan")))
    assert main(["run", *base, "guidance.name=pick-and-draw", "guidance.compare_unguided=false"]) == 2
    err = capsys.readouterr().err
    assert "NaN/inf at guided step(s) [0]" in err
    assert not list((tmp / "store").rglob("*.png"))


def test_both_bad_images_are_named_in_the_one_line(env, capsys):
    _, bench, base = env
    _two_bad_images(bench)
    assert main(["run", *base]) == 2
    err = capsys.readouterr().err.strip()
    assert "00.jpg' (cannot be read" in err and "01.jpg' (1x1 px" in err and "\n" not in err, err


@pytest.mark.parametrize("store", ["a-file/runs", "a-file"])
def test_a_store_that_cannot_be_created_is_a_clear_error(env, capsys, monkeypatch, store):
    from persobench.harness import runner

    tmp, _, base = env
    (tmp / "a-file").write_text("not a folder\n")
    monkeypatch.setattr(runner, "load_components", lambda *a, **k: pytest.fail("a model loaded before the store was checked"))
    assert main(["run", *base, f"store={tmp / store}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "store=" in err and "not a folder" in err, err
    assert (tmp / "a-file").read_text() == "not a folder\n"


def test_images_any_viewer_shows_are_used_and_bad_ones_skipped_with_one_warning_each(env, capsys):
    """A 16-bit PNG (scaled, not refused), hidden and system files, a note and a corrupt JPEG skipped on request."""
    from persobench.core.images import load_image

    tmp, bench, base = env
    (bench / "ball1" / "00.jpg").unlink()
    Image.new("I;16", (64, 64), 40000).save(bench / "ball1" / "00 Grey Photo.PNG")
    assert load_image(bench / "ball1" / "00 Grey Photo.PNG").getpixel((0, 0)) == (156, 156, 156)  # 40000 / 257, not 255
    (bench / "ball1" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (bench / "ball1" / "._01.jpg").write_bytes(b"\x00\x05\x16\x07")
    (bench / "ball1" / "Thumbs.db").write_bytes(b"\xd0\xcf")
    (bench / "ball1" / "notes.txt").write_text("hi\n")
    (bench / "ball1" / "02.jpg").write_bytes(b"\xff\xd8 broken")
    assert main(["run", *base, "dataset.skip_bad_images=true"]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "02.jpg" in err[0] and "skipped" in err[0], err
    assert len(list((tmp / "store" / "default" / "images").rglob("*.png"))) == 1


def test_a_default_config_subject_list_does_not_leak_into_another_dataset(env, capsys):
    """default.yaml's ToyBench subjects (and its work-list sizes) belong to ToyBench: a folder run starts from
    the folder dataset's own defaults."""
    tmp, _, base = env
    folder = tmp / "My Mug"
    folder.mkdir()
    Image.new("RGB", (64, 64), "red").save(folder / "IMG_1.JPG")
    own = [o for o in base if not o.startswith("dataset.")]
    assert main(["run", "--dry-run", *own, "dataset.name=folder", f"dataset.path={folder}", "dataset.class_noun=mug"]) == 0
    out = capsys.readouterr().out
    assert "1 subjects" in out, out


def test_a_metric_the_data_cannot_support_is_dropped_with_a_notice_when_it_was_a_default(env, capsys, monkeypatch):
    """metrics.names not written: the oracle (ToyBench's ground truth) is dropped before any work, one notice line."""
    from persobench.core.errors import UserError
    from persobench.harness import runner

    tmp, bench, base = env
    _no_ground_truth(bench)
    seen = {}

    def stop(model_cfg):
        seen["loaded"] = True
        raise UserError("stopped after the checks")

    monkeypatch.setattr(runner, "load_components", stop)
    monkeypatch.setattr(runner, "check_metrics", lambda cfg: seen.setdefault("metrics", list(cfg.metrics.names)))
    own = [o for o in base if not o.startswith("metrics.names")]
    assert main(["run", *own]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert seen["metrics"] == ["dino", "clip-i", "clip-t"] and seen["loaded"]
    assert len(err) == 2 and "oracle" in err[0] and "ground truth" in err[0] and err[1] == "error: stopped after the checks", err


def test_dry_run_checks_every_image_and_the_metrics_before_planning(env, capsys):
    """`--dry-run` runs the run's pre-flight: a folder with two unusable images is one error listing both."""
    tmp, bench, base = env
    (bench / "ball1" / "00.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (bench / "ball1" / "01.jpg").write_bytes(b"")
    assert main(["run", "--dry-run", *base]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "00.jpg" in err and "01.jpg" in err
    (bench / "ground_truth.json").unlink(missing_ok=True)  # DreamBench-like data: nothing for the oracle to read
    assert main(["run", "--dry-run", *[b for b in base if not b.startswith("metrics.names")], "metrics.names=[oracle]",
                 "dataset.skip_bad_images=true"]) == 2
    assert "ground truth" in capsys.readouterr().err
