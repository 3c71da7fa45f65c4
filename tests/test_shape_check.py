"""`persobench run CONFIG --shape-check` (harness/shapecheck.py): the paper configs' whole pipelines on reduced random-weight
twins through the normal runner, each phase timed and measured with a projection of the full run; a store made with
twins and a store of real runs refuse each other; twins never fingerprint as real weights; the dry run and the shape
check read one table of GPU unit costs."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from persobench.core.config import load_config
from persobench.core.errors import UserError
from persobench.harness.cli import main
from persobench.harness.shapecheck import STORE_MARKER
from persobench.twins import REDUCED, ensure_twin

ROOT = Path(__file__).resolve().parent.parent
PAPER = ROOT / "configs" / "paper"
METHODS = ["vanilla-sd", "textual-inversion", "dreambooth-lora", "blip-diffusion"]
ROW = re.compile(r"^\| (?P<phase>[a-z ]+) \| (?P<method>[a-z-]*) \| [^|]+ \| (?P<seconds>[0-9.]+) \| (?P<gib>[0-9.]+) \|(?P<rest>.*)$")
TOY = ["dataset.subjects=[ball1]", "dataset.max_prompts=1", "dataset.images_per_prompt=1", "methods=[vanilla-sd, textual-inversion]",
       "metrics.names=[dino, clip-t]", "report.wandb=disabled"]


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """One twin cache for the module (PERSOBENCH_TWINS), as a user's cache folder would be."""
    cache = tmp_path_factory.mktemp("twins")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PERSOBENCH_TWINS", str(cache))
        yield cache


def phases(out: str) -> dict[tuple[str, str], re.Match]:
    return {(m["phase"], m["method"]): m for m in map(ROW.match, out.splitlines()) if m}


@pytest.fixture(scope="module")
def dreambench_check(twins, tmp_path_factory):
    """The acceptance command at the CI size: `persobench run configs/paper/dreambench.yaml --shape-check` (DreamBench
    itself is not given, so a generated stand-in subject runs)."""
    store = tmp_path_factory.mktemp("store")
    with pytest.MonkeyPatch.context() as mp:
        import io
        import sys

        out = io.StringIO()
        mp.setattr(sys, "stdout", out)
        code = main(["run", str(PAPER / "dreambench.yaml"), "--shape-check", "--shape-check-scale", str(REDUCED), f"store={store}",
                     "report.wandb=disabled"])
    return code, out.getvalue(), store / f"dreambench-paper-shape-check-w{REDUCED}"


def test_shape_check_of_the_paper_dreambench_config_times_every_phase_and_projects_the_full_run(dreambench_check):
    code, out, root = dreambench_check
    assert code == 0, out
    for twin in ("sd15", "dino-vits16", "clip-vit-b32", "blipdiffusion"):
        assert f"  {twin}: " in out, twin
    assert "device cpu, dtype fp32 (no CUDA device for model.device=cuda; model.dtype=fp16 is not supported on the CPU)" in out
    assert "a generated stand-in subject" in out and (root / "stand-in").is_dir()
    assert "textual-inversion: steps 3000 -> 2" in out and "dreambooth-lora: steps 500 -> 2, num_class_images -> 1" in out
    rows = phases(out)
    expected = [("load base model", ""), ("load metric backbones", ""), ("metrics", ""), ("report", "")]
    expected += [(kind, m) for m in METHODS for kind in ("fit", "sampling", "guided sampling", "inversion")]
    for key in expected:
        assert key in rows, (key, out)
        assert float(rows[key]["gib"]) > 0
    for m in ("textual-inversion", "dreambooth-lora"):  # trained, with their per-step cost measured
        assert "s/step" in rows[("fit", m)].group(0)
    assert float(rows[("guided sampling", "vanilla-sd")]["seconds"]) > 0
    assert "30 fits x 3000 steps" in rows[("fit", "textual-inversion")]["rest"]
    assert "15 classes x 6000 class-image steps" in rows[("fit", "dreambooth-lora")]["rest"]  # 200 class images x 30 steps
    assert re.search(r"full run \(DreamBench as published .*24000 images, 72000 metric passes, 50 sampling steps\)", out)
    assert re.search(r"this machine \(cpu, fp32, \d+ torch thread\(s\)\): ~[0-9.]+ h, peak memory ~[0-9.]+ GiB", out)
    assert re.search(r"GPU: ~[0-9.]+ GPU-hours, the dry run's figure", out)
    figures = json.loads((root / "shape_check.json").read_text())
    assert figures["width_divisor"] == REDUCED and {p["kind"] for p in figures["phases"]} >= {"fit", "inversion", "metrics"}
    assert json.loads((root / STORE_MARKER).read_text())["shape_check"] is True
    assert (root / "report" / "index.html").is_file() and list(root.glob("points/*/scores.parquet"))


def test_shape_check_runs_on_twins_that_fingerprint_as_twins(dreambench_check):
    _, _, root = dreambench_check
    fits = [json.loads(p.read_text()) for p in root.glob("fits/*/*/fit.json")]
    assert fits and all(f["model"].startswith("twin-") for f in fits)
    protocol = json.loads(next(root.glob("points/*/metrics_protocol.json")).read_text())
    assert "twin-" in json.dumps(protocol)  # the backbones' weights fingerprints, written next to the scores


def test_shape_check_runs_every_sweep_point_of_the_loss_term_ablation(twins, tmp_path, capsys):
    """The ablation's four guidance points on reduced twins (at 256 px to keep CI short: the shape check keeps the
    resolution the config gives)."""
    code = main(["run", str(PAPER / "ablation_loss_terms.yaml"), "--shape-check", "--shape-check-scale", str(REDUCED),
                 f"store={tmp_path}", "sampler.resolution=256", "report.wandb=disabled"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.count("point guidance-") >= 4
    rows = phases(out)
    for key in [("fit", "dreambooth-lora"), ("inversion", "dreambooth-lora"), ("guided sampling", "dreambooth-lora"), ("metrics", "")]:
        assert key in rows, (key, out)
    assert "4 point(s), 12000 images" in out and "at 256 px" in out
    runs = tmp_path / f"ablation-loss-terms-shape-check-w{REDUCED}"
    assert len(list(runs.glob("points/*/scores.parquet"))) == 4 and len(list(runs.glob("fits/dreambooth-lora/*/fit.json"))) == 1


# ---- the store guard ---------------------------------------------------------------------------------------------
REAL_RUN = ["methods=[vanilla-sd]", "guidance.name=none", "dataset.subjects=[ball1]", "dataset.max_prompts=1",
            "dataset.images_per_prompt=1", "sampler.steps=2", "metrics.names=[]", "report.wandb=disabled"]


def test_a_twin_store_refuses_a_real_run_and_a_store_of_real_runs_refuses_twins(capsys, tiny_model, tmp_path, twins):
    # a shape check makes its own, marked store; a real run pointed at it is refused before it loads anything
    assert main(["run", "--shape-check", f"store={tmp_path}", "name=toy", *REAL_RUN]) == 0
    assert (tmp_path / "toy-shape-check" / STORE_MARKER).is_file()
    capsys.readouterr()
    assert main(["run", f"model.source={tiny_model}", f"store={tmp_path}", "name=toy-shape-check", *REAL_RUN]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: store folder") and "random-weight twins" in err and "name=" in err

    # vice versa: real runs' store refuses a shape check, and a run on twins outside a shape check
    assert main(["run", f"model.source={tiny_model}", f"store={tmp_path}", "name=real-shape-check", *REAL_RUN]) == 0
    capsys.readouterr()
    assert main(["run", "--shape-check", f"store={tmp_path}", "name=real", *REAL_RUN]) == 2
    assert "holds real runs" in capsys.readouterr().err
    sd = ensure_twin("sd15", twins, width_divisor=REDUCED)
    from persobench.harness.runner import run

    cfg = load_config(None, [f"model.source={sd}", f"store={tmp_path}", "name=real-shape-check", *REAL_RUN])
    with pytest.raises(UserError, match="holds real runs"):
        run(cfg)
    assert not (tmp_path / "real-shape-check" / STORE_MARKER).exists()


# ---- fingerprints ----------------------------------------------------------------------------------------------
def test_twin_fingerprints_differ_from_a_real_model_folder_with_the_same_files(twins, tmp_path):
    """The worst case: a 'real' folder holding the twin's very bytes, less the marker. Its fingerprints (base model,
    metric backbone weights as a file and as a folder) still differ, and only the twin's say 'twin-'."""
    from persobench.core.components import fingerprint
    from persobench.reports.metrics.backbones import weights_fingerprint

    sd = ensure_twin("sd15", twins, width_divisor=REDUCED)
    real = shutil.copytree(sd, tmp_path / "sd", ignore=shutil.ignore_patterns("persobench_twin.json"))
    assert fingerprint(sd).startswith("twin-") and not fingerprint(real).startswith("twin-")
    assert fingerprint(sd).removeprefix("twin-") != fingerprint(real)
    dino = ensure_twin("dino-vits16", twins, width_divisor=REDUCED)
    copy = shutil.copytree(dino, tmp_path / "dino", ignore=shutil.ignore_patterns("persobench_twin.json"))
    for ours, theirs in [(dino / "model.safetensors", copy / "model.safetensors"), (dino, copy)]:
        assert weights_fingerprint(ours).startswith("twin-") and not weights_fingerprint(theirs).startswith("twin-")
        assert weights_fingerprint(ours).removeprefix("twin-") != weights_fingerprint(theirs)


# ---- one table of unit costs -------------------------------------------------------------------------------------
def test_the_dry_run_and_the_shape_check_read_the_same_unit_costs(capsys, tmp_path, monkeypatch):
    from persobench.harness.worklist import batch_seconds, unit_table

    checks = tmp_path / "gpu_checks.json"
    checks.write_text(json.dumps({  # benchmarks/gpu_checks.py's layout
        "device": "Test GPU", "dtype": "fp16", "steps": 30, "unit_costs": {
            "image_step": 0.123, "metric_image": 0.0456, "guided_factor": 3.5, "fit_step": {"textual-inversion": 0.789},
            "inversion_per_subject": 6.0},
        "sampling": [{"method": "vanilla-sd", "guidance": "pick-and-draw", "batch": 8, "peak_memory_gib": 11.5},
                     {"method": "vanilla-sd", "guidance": "none", "batch": 8, "peak_memory_gib": 4.0}]}))
    monkeypatch.setenv("PERSOBENCH_GPU_CHECKS", str(checks))
    table = unit_table()
    assert table["image_step"] == 0.123 and table["fit_step"] == {"textual-inversion": 0.789} and "Test GPU" in table["source"]
    cfg = load_config(None, ["sampler.steps=10"])
    assert batch_seconds(cfg, 2, "pick-and-draw") == pytest.approx(2 * 10 * 0.123 * 3.5)  # the scheduler's weights too
    from persobench.harness.worklist import work_list

    w = work_list(load_config(None, [*TOY, "sampler.steps=10", "guidance.name=pick-and-draw"]))
    assert w["gpu_seconds"]["inversion"] == pytest.approx(1 * 2 * 10 * 6.0 / 30)  # 1 subject x 2 methods, measured at 30 steps

    argv = ["run", f"store={tmp_path / 'runs'}", *TOY]
    assert main([*argv, "--dry-run"]) == 0
    dry = re.search(r"total ~([0-9.]+) GPU-hours \(SD 1.5 fp16 512 px unit costs, (.*?): (\{'image_step'.*\})\)", capsys.readouterr().out)
    assert dry and "measured: " in dry[2] and "'image_step': 0.123" in dry[3] and "'textual-inversion': 0.789" in dry[3]
    assert main([*argv, "--shape-check"]) == 0
    out = capsys.readouterr().out
    check = re.search(r"GPU: ~([0-9.]+) GPU-hours, the dry run's figure \((.*?); unit costs (\{.*\})\); peak memory 11.5 GiB", out)
    assert check, out
    assert (check[1], check[2], check[3]) == (dry[1], dry[2], dry[3])
