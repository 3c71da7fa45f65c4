import shutil

import pytest

from persobench.core.components import resolve_source
from persobench.core.errors import UserError
from persobench.harness.cli import main


def fails_with(capsys, argv, fragment):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and "\n" not in err
    assert fragment in err, err
    return err


def test_list_names_the_registries(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "vanilla-sd" in out and "toybench" in out and "ddim" in out


def test_dry_run_validates_every_sweep_point_without_loading_a_model(capsys, tmp_path):
    assert main(["run", "model.source=/nonexistent", f"store={tmp_path}", "--dry-run", "--sweep", "sampler.cfg_scale=1,3"]) == 0
    assert capsys.readouterr().out.count("point ") == 2
    fails_with(capsys, ["run", "--dry-run", "--sweep", "sampler.steps=4,-1"], "sampler.steps must be a positive")


def test_unknown_method_lists_known_ones(capsys, tiny_model, tmp_path):
    fails_with(capsys, ["run", f"model.source={tiny_model}", f"store={tmp_path}", "methods=[dreambooth-lore]"],
               "unknown method 'dreambooth-lore'; known methods: blip-diffusion, dreambooth-lora, textual-inversion, vanilla-sd")
    assert not (tmp_path / "default").exists()


def test_missing_model_folder(capsys, tmp_path):
    fails_with(capsys, ["run", f"model.source={tmp_path / 'nope'}", f"store={tmp_path}"], "does not exist")


def test_folder_that_is_not_a_pipeline(capsys, tmp_path):
    (tmp_path / "m").mkdir()
    fails_with(capsys, ["run", f"model.source={tmp_path / 'm'}", f"store={tmp_path}"], "missing model_index.json")


def test_corrupt_weights(capsys, tmp_path, tiny_model):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    next((broken / "unet").glob("*.safetensors")).write_bytes(b"garbage")
    fails_with(capsys, ["run", f"model.source={broken}", f"store={tmp_path}"], "could not be loaded")


def test_offline_hub_id_fails_at_once_naming_what_to_pass(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(UserError, match="not in the local Hugging Face cache.*model.source="):
        resolve_source("runwayml/stable-diffusion-v1-5")


def test_unknown_subject_and_empty_subject_folder(capsys, tiny_model, tmp_path):
    fails_with(capsys, ["run", f"model.source={tiny_model}", f"store={tmp_path}", "dataset.subjects=[dragon]"],
               "unknown subject(s) ['dragon']")
    (tmp_path / "empty").mkdir()
    fails_with(capsys, ["run", f"model.source={tiny_model}", f"store={tmp_path}", "dataset.name=folder",
                        f"dataset.path={tmp_path / 'empty'}", "dataset.class_noun=dog"], "has no images")


def test_yaml_error_and_unknown_key_through_the_cli(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sampler: {steps: 3\n")
    fails_with(capsys, ["run", str(bad)], "not valid YAML")
    fails_with(capsys, ["run", "sampler.stepz=3"], "unknown config key 'sampler.stepz'")
    fails_with(capsys, ["run", "sampler.steps=abc"], "'sampler.steps' must be int")


def test_fp16_on_cpu_is_refused(capsys, tiny_model, tmp_path):
    fails_with(capsys, ["run", f"model.source={tiny_model}", f"store={tmp_path}", "model.device=cpu", "model.dtype=fp16"],
               "fp16 is not supported on the CPU")


def test_report_on_a_folder_without_runs(capsys, tmp_path):
    fails_with(capsys, ["report", str(tmp_path)], "no finished run points")


def test_sample_command_writes_pngs(capsys, tiny_model, tmp_path):
    out = tmp_path / "out"
    code = main(["sample", "--subject", "ball1", "--prompt", "a {0} {1} on the beach", "--num-images", "2", "--out", str(out),
                 f"model.source={tiny_model}", f"store={tmp_path / 'runs'}", "sampler.steps=3"])
    assert code == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["000-0.png", "000-1.png"]
    assert "a ball on the beach" in capsys.readouterr().out


def test_dry_run_of_the_paper_config_counts_the_full_protocol(capsys, dreambench):
    from pathlib import Path

    paper = Path(__file__).resolve().parent.parent / "configs" / "paper" / "dreambench.yaml"
    assert main(["run", "--dry-run", str(paper), f"dataset.path={dreambench}"]) == 0
    out = capsys.readouterr().out
    # 30 subjects x 25 prompts x 4 images x (4 methods x {none, pick-and-draw}); 3 metrics each
    assert "30 subjects" in out and "24000 images x 50 steps" in out and "72000 metric passes" in out
    assert "'textual-inversion': 30" in out and "GPU-hours" in out


def test_ablation_configs_expand_to_their_grids(capsys, dreambench):
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "configs" / "paper"
    assert main(["run", "--dry-run", str(root / "ablation_loss_terms.yaml"), f"dataset.path={dreambench}"]) == 0
    assert capsys.readouterr().out.count("point ") == 4
    assert main(["run", "--dry-run", str(root / "ablation_layers.yaml"), f"dataset.path={dreambench}"]) == 0
    out = capsys.readouterr().out
    assert out.count("point ") == 15 and "guidance-appearance-layers-up-mid" in out


def _uncached_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.delenv("PERSOBENCH_DEBUG", raising=False)


def _boom(*args, **kwargs):
    raise RuntimeError("boom inside the loader")


def test_an_unexpected_loader_error_is_not_called_a_missing_model(tmp_path, monkeypatch):
    import huggingface_hub

    from persobench.methods.blip_diffusion import _resolve_weights

    monkeypatch.setattr(huggingface_hub, "snapshot_download", _boom)
    with pytest.raises(RuntimeError, match="boom inside the loader"):  # not "not in the local Hugging Face cache"
        resolve_source("some-org/some-model")
    with pytest.raises(RuntimeError, match="boom inside the loader"):
        _resolve_weights("Salesforce/blipdiffusion")


def test_an_invalid_hub_id_is_not_called_uncached(tmp_path, monkeypatch):
    _uncached_hub(tmp_path, monkeypatch)
    with pytest.raises(UserError, match="not a valid Hugging Face hub id"):
        resolve_source("some-org/not a valid id!")


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_reraises_the_original_exception(how, tmp_path, monkeypatch, capsys):
    from huggingface_hub.errors import LocalEntryNotFoundError

    _uncached_hub(tmp_path, monkeypatch)
    argv = ["run", "model.source=some-org/not-cached-model", f"store={tmp_path}"]
    fails_with(capsys, argv, "not in the local Hugging Face cache")  # without debug: one line, exit 2
    if how == "env":
        monkeypatch.setenv("PERSOBENCH_DEBUG", "1")
    with pytest.raises(UserError, match="not in the local Hugging Face cache") as raised:
        main(["--debug", *argv] if how == "flag" else argv)
    assert isinstance(raised.value.__cause__, LocalEntryNotFoundError)
    with pytest.raises(RuntimeError, match="boom"):  # other exceptions propagate in both modes
        monkeypatch.setattr("persobench.harness.cli.cmd_list", _boom)
        main(["--debug", "list"] if how == "flag" else ["list"])


def test_debug_prints_the_traceback_with_the_suppressed_original(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(tmp_path / "hf" / "hub"), "OMP_NUM_THREADS": "1"}
    bad = tmp_path / "bad.yaml"
    bad.write_text("sampler: {steps: 3\n")
    argv = [sys.executable, "-m", "persobench", "--debug", "run", str(bad)]
    root = Path(__file__).resolve().parent.parent  # this checkout's package, whatever the editable install points at
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, cwd=root)
    assert done.returncode == 1 and "Traceback" in done.stderr, done.stderr
    assert "yaml" in done.stderr and "UserError: " in done.stderr and "not valid YAML" in done.stderr, done.stderr
    assert "ScannerError" in done.stderr or "ParserError" in done.stderr, done.stderr  # the original, raised `from None` today


def test_verbose_and_debug_set_the_log_level(capsys, monkeypatch):
    import logging

    monkeypatch.delenv("PERSOBENCH_DEBUG", raising=False)
    log = logging.getLogger("persobench")
    for flags, level in (([], logging.WARNING), (["--verbose"], logging.INFO), (["--debug"], logging.DEBUG)):
        assert main([*flags, "list"]) == 0
        assert log.getEffectiveLevel() == level
    logging.getLogger("persobench.test").debug("a debug line")
    assert "a debug line" in capsys.readouterr().err
    main(["list"])
    logging.getLogger("persobench.test").info("an info line")
    assert "an info line" not in capsys.readouterr().err


def test_a_broad_catch_logs_the_original_at_debug(tmp_path, caplog):
    import logging

    from persobench.reports.metrics.backbones import _timm_dir

    caplog.set_level(logging.DEBUG, logger="persobench")
    with pytest.raises(UserError, match="could not be loaded") as raised:
        _timm_dir("dino", tmp_path, "0")
    assert raised.value.__cause__ is not None
    assert any(r.levelno == logging.DEBUG and r.exc_info for r in caplog.records), caplog.records


def test_a_method_declares_its_fit_cost_and_the_work_list_reads_it(monkeypatch):
    from persobench.core.config import load_config
    from persobench.harness.worklist import work_list
    from persobench.methods import methods

    costs = {m: methods.get(m).fit_step_seconds for m in methods.names()}
    assert costs == {"blip-diffusion": 0.0, "dreambooth-lora": 0.35, "textual-inversion": 0.25, "vanilla-sd": 0.0}
    cfg = load_config(None, ["methods=[textual-inversion]", "method_params={textual-inversion: {steps: 100}}"])
    before = work_list(cfg)["gpu_hours_estimate"]
    monkeypatch.setattr(methods.get("textual-inversion"), "fit_step_seconds", 25.0)
    assert work_list(cfg)["gpu_hours_estimate"] > before
