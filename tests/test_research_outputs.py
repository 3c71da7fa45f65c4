"""Research outputs (issue 13): hierarchical intervals in the tables, paired deltas (guided - unguided and
method vs a baseline method) in deltas.csv / the tables / W&B / the terminal, and a sweep's ablation table.

The toy runs score a `probe` metric registered here: a function of each image's record (its seed, method and
guidance), so the true paired deltas are known exactly and no image model is needed to score."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from persobench.core.config import load_config
from persobench.core.errors import UserError
from persobench.harness.cli import main
from persobench.reports.metrics.spec import Column, MetricSpec, metrics

from .wandb_records import summary_of

GUIDED_SHIFT, METHOD_SHIFT = 0.25, 0.5


def probe(ctx, frame: pd.DataFrame) -> pd.DataFrame:
    """A per-image value that differs from image to image (its seed), plus known guidance and method effects."""
    base = (frame["seed"].to_numpy() % 997) / 997
    guided = (frame["guidance"] != "none").to_numpy() * GUIDED_SHIFT
    method = (frame["method"] == "textual-inversion").to_numpy() * METHOD_SHIFT
    return pd.DataFrame({"probe": base + guided + method})


PROBE = MetricSpec("probe", probe, (Column("probe", "Probe"),))
LOSS = MetricSpec("loss", lambda ctx, frame: pd.DataFrame({"loss": np.zeros(len(frame))}),
                  (Column("loss", "Loss", higher_is_better=False),))


@pytest.fixture(scope="module")
def registered():
    with metrics.registered("probe", PROBE, "a function of the record (tests)"), \
            metrics.registered("loss", LOSS, "lower is better (tests)"):
        yield


def score_frame(rng, subjects=5, prompts=3, images=2, unbalanced=False):
    """Two methods x (none, pick-and-draw): pick-and-draw = none + 0.1 on `dino`, method b = a + 0.05, image by image."""
    rows = []
    for s in range(subjects):
        for p in range(prompts + (unbalanced and s == 0) * 3):
            for i in range(images):
                base = rng.normal()
                for method, shift in (("a", 0.0), ("b", 0.05)):
                    for guidance, gshift in (("none", 0.0), ("pick-and-draw", 0.1)):
                        rows.append({"method": method, "guidance": guidance, "subject": f"s{s}", "kind": "live" if s < 2 else "object",
                                     "prompt_template": f"a {{0}} {{1}} #{p}", "index": i, "seed": 1000 * s + 10 * p + i,
                                     "dino": base + shift + gshift, "clip_t": 0.3 + 0.01 * base})
    return pd.DataFrame(rows).sample(frac=1.0, random_state=0).reset_index(drop=True)  # row order must not matter


# ---------------------------------------------------------------------------------------------------
# tables: means unchanged, hierarchical intervals


def test_table_means_stay_the_mean_over_cells_and_intervals_are_hierarchical():
    from persobench.reports.stats import hierarchical_bootstrap
    from persobench.reports.tables import aggregate

    for unbalanced in (False, True):
        frame = score_frame(np.random.default_rng(1), unbalanced=unbalanced)
        table = aggregate(frame, bootstrap=300)
        for row in table.to_dict("records"):
            arm = frame[(frame["method"] == row["method"]) & (frame["guidance"] == row["guidance"])]
            arm = arm if row["split"] == "all" else arm[arm["kind"] == row["split"]]
            cells = arm.groupby(["subject", "prompt_template"])["dino"].mean()
            assert row["dino"] == pytest.approx(cells.mean(), abs=1e-12)  # the gate's number: the mean over cells
            if not unbalanced:  # balanced: exactly the subjects-then-prompts bootstrap of stats.py
                mean, lo, hi = hierarchical_bootstrap(arm, "dino", n=300, seed=0)
                assert row["dino"] == pytest.approx(mean, abs=1e-12)
                assert (row["dino_lo"], row["dino_hi"]) == pytest.approx((lo, hi), abs=1e-12)
            assert row["dino_lo"] < row["dino"] < row["dino_hi"]
        assert set(table["subjects"]) == {5, 3, 2}


def test_cell_weighting_is_the_all_cells_mean_and_equals_subject_weighting_when_balanced():
    from persobench.reports.stats import bootstrap_distribution, cell_means

    frame = score_frame(np.random.default_rng(5), unbalanced=True)
    arm = frame[(frame["method"] == "a") & (frame["guidance"] == "none")]
    est, reps, _ = bootstrap_distribution(arm, "dino", n=400, seed=3, weights="cell")
    assert est == pytest.approx(cell_means(arm, "dino").mean(), abs=1e-12)
    subject_est, subject_reps, _ = bootstrap_distribution(arm, "dino", n=400, seed=3)
    assert abs(est - subject_est) > 1e-3  # unbalanced: s0 has 6 prompts, the others 3
    balanced = arm[~arm["prompt_template"].str.endswith(("#3", "#4", "#5"))]
    a, ra, _ = bootstrap_distribution(balanced, "dino", n=400, seed=3, weights="cell")
    b, rb, _ = bootstrap_distribution(balanced, "dino", n=400, seed=3)
    assert a == pytest.approx(b, abs=1e-12) and np.allclose(ra, rb, atol=1e-12)
    with pytest.raises(ValueError, match="weights"):
        bootstrap_distribution(arm, "dino", weights="image")


# ---------------------------------------------------------------------------------------------------
# paired deltas on a hand-made frame


def test_constant_shift_gives_that_delta_with_a_zero_width_interval():
    from persobench.reports.tables import paired_delta_table

    deltas, notes = paired_delta_table(score_frame(np.random.default_rng(2)), bootstrap=500, baseline_method="a")
    assert notes == []
    assert {"method", "metric", "delta", "lo", "hi", "n_subjects", "comparison"} <= set(deltas.columns)
    dino = deltas[deltas["metric"] == "dino"].set_index(["comparison", "method", "guidance", "split"])
    for method in ("a", "b"):
        row = dino.loc[("guided - unguided", method, "pick-and-draw", "all")]
        assert row["delta"] == pytest.approx(0.1, abs=1e-12) and row["hi"] - row["lo"] < 1e-9
        assert row["excludes_zero"] and row["text"].endswith("*") and row["n_subjects"] == 5 and row["n_pairs"] == 30
    for guidance in ("none", "pick-and-draw"):
        row = dino.loc[("vs a", "b", guidance, "all")]
        assert row["delta"] == pytest.approx(0.05, abs=1e-12) and row["hi"] - row["lo"] < 1e-9 and row["excludes_zero"]
    assert ("vs a", "a", "none", "all") not in dino.index  # the baseline is not compared with itself
    assert set(dino.reset_index()["split"]) == {"all", "live", "object"}
    clip_t = deltas[deltas["metric"] == "clip_t"]
    assert (clip_t["delta"] == 0).all() and not clip_t["excludes_zero"].any()  # no change: not marked


def test_no_unguided_twin_means_no_guided_deltas_and_a_note():
    from persobench.reports.tables import paired_delta_table

    frame = score_frame(np.random.default_rng(3))
    guided_only, notes = paired_delta_table(frame[frame["guidance"] != "none"], bootstrap=50)
    assert guided_only.empty and "no unguided twin" in notes[0]
    unguided_only, notes = paired_delta_table(frame[frame["guidance"] == "none"], bootstrap=50)
    assert unguided_only.empty and "guidance.name none" in notes[0]


def test_baseline_method_must_be_one_of_the_runs_methods():
    with pytest.raises(UserError, match=r"metrics.baseline_method 'dreambooth-lora'.*vanilla-sd, textual-inversion"):
        load_config(None, ["methods=[vanilla-sd, textual-inversion]", "metrics.baseline_method=dreambooth-lora"])
    cfg = load_config(None, ["methods=[vanilla-sd, textual-inversion]", "metrics.baseline_method=vanilla-sd"])
    assert cfg.metrics.baseline_method == "vanilla-sd" and load_config(None, []).metrics.baseline_method is None


# ---------------------------------------------------------------------------------------------------
# sweeps: labels, swept columns, ablation table

WEIGHT_POINTS = [(a, b) for a in (0, 1) for b in (0, 1)]


def point_name(a, b):
    return f"guidance-appearance-weight-{a}__guidance-layout-weight-{b}"


def guided_config(appearance=1.0, layout=1.0, **extra):
    return {"name": "x", "guidance": {"name": "pick-and-draw", "compare_unguided": False, "steps": [0.0, 0.5],
                                      "appearance": {"enabled": True, "weight": appearance, "layers": ["up-mid"]},
                                      "layout": {"enabled": True, "weight": layout}}, **extra}


def test_a_point_with_every_guidance_term_off_is_labelled_unguided():
    from persobench.reports.ablation import UNGUIDED, guidance_label, is_unguided

    assert guidance_label("pick-and-draw", guided_config(0.0, 0)) == UNGUIDED
    off = guided_config()
    off["guidance"]["appearance"]["enabled"] = False
    off["guidance"]["layout"]["weight"] = 0.0
    assert guidance_label("pick-and-draw", off) == UNGUIDED and "unguided" in UNGUIDED and "pick" not in UNGUIDED
    assert guidance_label("pick-and-draw", guided_config(0.0, 1.0)) == "pick-and-draw"  # one term on: guided
    assert guidance_label("none", guided_config()) == "none"
    assert is_unguided({"guidance": {"name": "none", "appearance": {"weight": 1.0}}})


def test_an_all_zero_point_table_names_its_rows_unguided(tmp_path):
    from persobench.reports.tables import write_point_tables

    frame = score_frame(np.random.default_rng(4))
    frame = frame[frame["guidance"] != "none"]
    table, deltas, notes = write_point_tables(tmp_path, frame, 20, config=guided_config(0.0, 0.0))
    assert set(table["guidance_label"]) == {"unguided (all terms off)"} and set(table["guidance"]) == {"pick-and-draw"}
    md = (tmp_path / "table.md").read_text()
    assert "| a | unguided (all terms off) |" in md and "| pick-and-draw |" not in md
    assert deltas.empty and "no unguided twin" in md and (tmp_path / "deltas.csv").is_file()


def sweep_table(registered_metrics=("dino", "loss")):
    """A sweep's combined overall table: 4 points of (appearance weight, layout weight); dino best at (1, 0),
    loss (lower is better) best at (0, 1)."""
    dino = {(0, 0): 0.50, (0, 1): 0.55, (1, 0): 0.70, (1, 1): 0.65}
    loss = {(0, 0): 0.40, (0, 1): 0.10, (1, 0): 0.30, (1, 1): 0.20}
    rows = [{"method": "m", "guidance": "pick-and-draw", "split": "all", "point": point_name(a, b),
             "dino": dino[a, b], "dino_lo": dino[a, b] - 0.01, "dino_hi": dino[a, b] + 0.01, "loss": loss[a, b],
             "loss_lo": np.nan, "loss_hi": np.nan} for a, b in WEIGHT_POINTS]
    return pd.DataFrame(rows), {point_name(a, b): guided_config(float(a), float(b)) for a, b in WEIGHT_POINTS}


def test_ablation_table_has_swept_columns_check_marks_and_bold_best(registered, tmp_path):
    from persobench.reports.ablation import ablation_table, swept_fields, write_ablation

    table, configs = sweep_table()
    assert swept_fields(list(configs.items())) == ["guidance.appearance.weight", "guidance.layout.weight"]
    data, layout = ablation_table(table, configs)
    assert list(layout.columns) == ["appearance", "layout", "Guidance", "DINO", "Loss"]
    assert layout[["appearance", "layout"]].values.tolist() == [["✗", "✗"], ["✗", "✓"], ["✓", "✗"], ["✓", "✓"]]
    assert layout["Guidance"].tolist() == ["unguided (all terms off)"] + ["pick-and-draw"] * 3
    assert layout["DINO"].tolist() == ["0.500 ± 0.010", "0.550 ± 0.010", "**0.700** ± 0.010", "0.650 ± 0.010"]
    assert layout["Loss"].tolist() == ["0.400", "**0.100**", "0.300", "0.200"]  # lower is better; no interval
    assert data["dino_best"].tolist() == [False, False, True, False] and data["loss_best"].tolist() == [False, True, False, False]
    assert data["guidance.appearance.weight"].tolist() == [0.0, 0.0, 1.0, 1.0]
    write_ablation(tmp_path, table, configs, "method note")
    md, tex = (tmp_path / "ablation.md").read_text(), (tmp_path / "ablation.tex").read_text()
    assert "| appearance | layout | Guidance | DINO | Loss |" in md and "| ✗ | ✗ | unguided (all terms off) |" in md
    assert r"\textbf{0.700} $\pm$ 0.010" in tex and r"$\times$ & $\checkmark$" in tex and r"\begin{tabular}{lllcc}" in tex
    assert pd.read_csv(tmp_path / "ablation.csv")["loss_best"].tolist() == [False, True, False, False]


def test_swept_fields_other_than_switches_show_their_values():
    from persobench.reports.ablation import settings

    points = []
    for layers in ("up-mid", "all"):
        for cfg_scale in (3, 5):
            config = guided_config(sampler={"cfg_scale": float(cfg_scale)})
            config["guidance"]["appearance"]["layers"] = [layers]
            points.append((f"guidance-appearance-layers-{layers}__sampler-cfg-scale-{cfg_scale}", config))
    fields, shown = settings(points)
    assert fields == ["guidance.appearance.layers", "sampler.cfg_scale"]
    assert [tuple(shown[n].values()) for n, _ in points] == [("up-mid", "3"), ("up-mid", "5"), ("all", "3"), ("all", "5")]
    one = [("guidance-appearance-weight-0-5", guided_config(0.5))]  # a one-value sweep: found from the point's name
    assert settings(one) == (["guidance.appearance.weight"], {one[0][0]: {"appearance": "✓"}})


# ---------------------------------------------------------------------------------------------------
# tiny toy runs


def _run_args(tiny_model, store, *extra):
    return ["run", f"model.source={tiny_model}", f"store={store}", "dataset.subjects=[ball1, cat1]", "dataset.max_prompts=2",
            "dataset.images_per_prompt=2", "sampler.steps=2", "metrics.names=[probe]", "metrics.bootstrap=50", *extra]


def test_toy_run_writes_paired_deltas_prints_them_and_logs_them(registered, tiny_model, tmp_path, capsys):
    argv = _run_args(tiny_model, tmp_path, "methods=[vanilla-sd, textual-inversion]",
                     "method_params={textual-inversion: {steps: 2, batch_size: 2}}", "guidance.name=pick-and-draw",
                     "guidance.compare_unguided=true", "metrics.baseline_method=vanilla-sd", "report.wandb=offline")
    assert main(argv) == 0
    out = capsys.readouterr().out
    point = tmp_path / "default" / "points" / "main"
    deltas = pd.read_csv(point / "deltas.csv")
    scores = pd.read_parquet(point / "scores.parquet")
    overall = deltas[deltas["split"] == "all"].set_index(["comparison", "method", "guidance"])
    for method in ("vanilla-sd", "textual-inversion"):  # paired image by image: exactly the guidance effect
        row = overall.loc[("guided - unguided", method, "pick-and-draw")]
        assert row["delta"] == pytest.approx(GUIDED_SHIFT, abs=1e-12) and row["hi"] - row["lo"] < 1e-9
        assert row["excludes_zero"] and row["n_subjects"] == 2 and row["n_pairs"] == 8
    for guidance in ("none", "pick-and-draw"):
        row = overall.loc[("vs vanilla-sd", "textual-inversion", guidance)]
        assert row["delta"] == pytest.approx(METHOD_SHIFT, abs=1e-12) and row["hi"] - row["lo"] < 1e-9
    # the pairing is (subject, prompt, image index, seed): the per-image seeds are the run's, shared by every arm
    keyed = scores.set_index(["method", "guidance", "subject", "prompt_template", "index", "seed"])["probe"]
    assert len(keyed) == 32 and keyed.index.is_unique
    assert "(+0.250*)" in out and "paired change vs the same method unguided" in out
    md = (point / "table.md").read_text()
    assert "**Paired deltas**" in md and "+0.250 [+0.250, +0.250]*" in md and "two-stage" in md
    assert "+0.250 [+0.250, +0.250]*" in (tmp_path / "default" / "report" / "index.html").read_text()
    assert "Comparison" in (point / "table.tex").read_text()
    summaries = {}
    for path in (tmp_path / "default" / "wandb").glob("offline-run-*/*.wandb"):
        summary = summary_of(path)
        summaries[(json.loads(summary.get("probe", "null")), "delta_vs_unguided/probe" in summary)] = summary
    guided = [s for (_, has), s in summaries.items() if has]
    assert len(guided) == 2 and all(float(s["delta_vs_unguided/probe"]) == pytest.approx(GUIDED_SHIFT) for s in guided)
    assert any(float(s.get("delta_vs_vanilla-sd/probe", "nan")) == pytest.approx(METHOD_SHIFT) for s in summaries.values())


def test_toy_sweep_writes_the_ablation_table(registered, tiny_model, tmp_path, capsys):
    argv = _run_args(tiny_model, tmp_path, "methods=[vanilla-sd]", "dataset.subjects=[ball1]", "dataset.max_prompts=1",
                     "dataset.images_per_prompt=1", "guidance.name=pick-and-draw", "guidance.compare_unguided=false",
                     "report.wandb=disabled", "--sweep", "guidance.appearance.weight=0,1", "--sweep", "guidance.layout.weight=0,1")
    assert main(argv) == 0
    out = capsys.readouterr().out
    run = tmp_path / "default"
    md = (run / "report" / "ablation.md").read_text()
    assert md.splitlines()[0] == "| appearance | layout | Guidance | Probe |"
    rows = [line for line in md.splitlines()[2:] if line.startswith("| ")]
    assert rows[0].startswith("| ✗ | ✗ | unguided (all terms off) |") and len(rows) == 4
    assert all("pick-and-draw" in r for r in rows[1:]) and "**" in md
    assert (run / "report" / "ablation.csv").is_file() and r"$\checkmark$" in (run / "report" / "ablation.tex").read_text()
    assert "no unguided twin" in out and "ablation table:" in out and "| appearance | layout |" in out
    assert pd.read_csv(run / "points" / point_name(0, 0) / "deltas.csv").empty
    assert main(["report", str(run), "--wandb", "disabled"]) == 0  # rebuilt from the store, the same table
    assert (run / "report" / "ablation.md").read_text() == md and "ablation table:" in capsys.readouterr().out


def test_a_zero_step_size_is_labelled_unguided_in_tables_and_figures():
    from persobench.reports.ablation import ZERO_STEP, guidance_label
    from persobench.reports.tradeoff import drawn_label

    zero = {"guidance": {"name": "pick-and-draw", "step_size": [0, 0.0]}}
    some = {"guidance": {"name": "pick-and-draw", "step_size": [0, 5]}}
    assert guidance_label("pick-and-draw", zero) == drawn_label("pick-and-draw", zero) == ZERO_STEP
    assert guidance_label("pick-and-draw", some) == "pick-and-draw"
