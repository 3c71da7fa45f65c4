"""The demo (`make demo` = `persobench run` = persobench/configs/default.yaml) is the main job: every method
without and with Pick-and-Draw on a few ToyBench subjects, ending with the results table and the report's paths."""

from pathlib import Path

from persobench.core.config import load_config
from persobench.harness.cli import DEFAULT_CONFIG, main
from persobench.harness.worklist import work_list
from persobench.methods import methods


def test_the_default_config_is_every_method_with_and_without_pick_and_draw():
    cfg = load_config(DEFAULT_CONFIG)
    assert sorted(cfg.methods) == sorted(methods.names())
    assert cfg.guidance.name == "pick-and-draw" and cfg.guidance.compare_unguided
    w = work_list(cfg)
    assert w["subjects"] >= 3
    assert w["rows"] == [f"{m}/{g}" for m in cfg.methods for g in ("none", "pick-and-draw")]
    for m in ("textual-inversion", "dreambooth-lora"):  # toy presets, fits long enough to beat vanilla SD
        assert cfg.method_params[m]["preset"] == "toy" and cfg.method_params[m]["steps"] >= 150
    assert cfg.metrics.names == ["dino", "clip-i", "clip-t", "oracle"]


def test_run_ends_with_the_results_table_and_the_report_paths(capsys, tiny_model, tmp_path):
    argv = ["run", f"model.source={tiny_model}", f"store={tmp_path}", "dataset.subjects=[ball1]", "dataset.max_prompts=1",
            "dataset.images_per_prompt=1", "sampler.steps=3", "methods=[vanilla-sd, textual-inversion]",
            "method_params={textual-inversion: {steps: 2, batch_size: 2}}", "guidance.name=pick-and-draw",
            "guidance.compare_unguided=true", "metrics.names=[dino, clip-i, clip-t, oracle]", "report.wandb=disabled"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    tail = out[out.index("| Method |"):].splitlines()
    header = tail[0]
    for column in ("Guidance", "DINO", "CLIP-I", "CLIP-T", "Oracle-ID"):
        assert f"| {column} |" in header, header
    rows = [line for line in tail[2:] if line.startswith("| ")]
    assert [r.split(" | ")[:2] for r in rows] == [["| vanilla-sd", "none"], ["| vanilla-sd", "pick-and-draw"],
                                                   ["| textual-inversion", "none"], ["| textual-inversion", "pick-and-draw"]]
    assert "(+" in rows[1] or "(-" in rows[1] or "(±" in rows[1]  # guided rows carry the change vs unguided
    report = tmp_path / "default" / "report"
    named = {Path(p) for line in tail for p in line.split() if p.endswith((".png", ".html"))}
    assert report / "tradeoff-dino.png" in named and report / "index.html" in named, tail
    assert all(p.is_file() for p in named)
