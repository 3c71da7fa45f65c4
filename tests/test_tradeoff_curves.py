"""Trade-off curves (issue 13, "Curves") and a sweep's W&B summary run.

- a one-dimensional sweep of a continuous knob: one curve per method, its points in the swept value's numeric
  order (not the order the points ran in), each annotated with its value; a setting whose guidance does nothing
  (every term weight 0, or a step size of 0) drawn and labelled as unguided;
- a factorial sweep (2+ fields) or a categorical one: labelled points, never joined by a line;
- the Pareto front over every drawn row: all points, all methods, guided and unguided;
- a sweep's W&B summary run: the combined / ablation tables and a native line plot per trade-off axis metric
  (x = the swept value, one series per method), read back from the offline run files.

The figures are inspected on their matplotlib Axes (lines' gids and data, annotations), not as pixels."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from persobench.harness.cli import main  # noqa: E402
from persobench.reports.metrics.spec import Column, MetricSpec, metrics  # noqa: E402
from persobench.reports.tradeoff import draw_tradeoff, write_tradeoff  # noqa: E402

from .wandb_records import read_records  # noqa: E402


def guided_config(step_size=(20.0, 10.0), appearance=1.0, layout=1.0, layers=("up",), cfg_scale=5.0, name="pick-and-draw"):
    return {"name": "x", "store": "runs", "sampler": {"scheduler": "ddim", "cfg_scale": cfg_scale},
            "guidance": {"name": name, "compare_unguided": True, "step_size": list(step_size),
                         "appearance": {"enabled": True, "weight": appearance, "layers": list(layers)},
                         "layout": {"enabled": True, "weight": layout}}}


def frame(rows):
    return pd.DataFrame([{"split": "all", "clip_i": 0.5, **r} for r in rows])


def curve_lines(ax):
    return {line.get_gid(): line for line in ax.lines if (line.get_gid() or "").startswith("curve:")}


def joined(ax):
    """Lines that join two or more points (a linestyle), the Pareto front aside."""
    return [line for line in ax.lines if line.get_linestyle() not in ("None", "", " ") and line.get_gid() != "pareto"]


def texts(ax):
    return [t.get_text() for t in ax.texts]


def markers(ax, gid_prefix):
    return [line for line in ax.lines if (line.get_gid() or "").startswith(gid_prefix)]


# step size s -> (text fidelity, subject fidelity) per method: guidance trades CLIP-T for DINO
RUN_ORDER = [20.0, 0.0, 5.0, 40.0, 10.0]  # the order the points ran in: not the swept value's
BASE = {"vanilla-sd": 0.3, "dreambooth-lora": 0.6}


def step_sweep():
    configs = {f"guidance-step-size-{s:g}": guided_config((s, s / 2)) for s in RUN_ORDER}
    rows = []
    for point, s in zip(configs, RUN_ORDER):
        for method, base in BASE.items():
            rows.append({"point": point, "method": method, "guidance": "none", "clip_t": 0.701, "dino": base - 0.01})
            rows.append({"point": point, "method": method, "guidance": "pick-and-draw", "clip_t": 0.7 - s / 400, "dino": base + s / 100})
    return frame(rows), configs


def test_a_step_size_sweep_is_one_curve_per_method_in_value_order_annotated_with_each_value():
    table, configs = step_sweep()
    fig, ax = plt.subplots()
    drawn = draw_tradeoff(ax, table, "dino", "clip_t", configs)
    lines = curve_lines(ax)
    assert sorted(lines) == ["curve:dreambooth-lora:pick-and-draw", "curve:vanilla-sd:pick-and-draw"]  # one per method
    order = sorted(RUN_ORDER)
    for method, base in BASE.items():
        line = lines[f"curve:{method}:pick-and-draw"]
        assert line.get_linestyle() == "-"
        assert np.allclose(line.get_xdata(), [0.7 - s / 400 for s in order])  # by step size, not by run order
        assert np.allclose(line.get_ydata(), [base + s / 100 for s in order])
    notes = texts(ax)
    for label in ("[5, 2.5]", "[10, 5]", "[20, 10]", "[40, 20]"):
        assert notes.count(label) == 2  # each method's point at that value
    assert notes.count("[0, 0] (unguided)") == 2  # a step size of 0 applies nothing: labelled unguided
    assert notes.count("unguided") == 2  # a guidance sweep's unguided rows are the same images at every point: once
    assert len(markers(ax, "point:vanilla-sd:none")) == 1
    zero = drawn[(drawn["curve"] != "") & (drawn["rank"] == 0)]
    assert set(zero["label"]) == {"unguided (step size 0)"} and zero["unguided"].all()
    assert "pick-and-draw" not in set(drawn.loc[drawn["unguided"], "label"])
    plt.close(fig)


def test_a_weight_sweep_draws_its_all_terms_off_point_as_unguided_and_a_scalar_knob_in_numeric_order():
    weights = [1.0, 0.0, 0.5, 2.0]
    configs = {f"guidance-appearance-weight-{w:g}": guided_config(appearance=w, layout=0.0) for w in weights}
    table = frame([{"point": p, "method": "vanilla-sd", "guidance": "pick-and-draw", "clip_t": 0.7 - w / 10, "dino": 0.3 + w / 10}
                   for p, w in zip(configs, weights)])
    fig, ax = plt.subplots()
    drawn = draw_tradeoff(ax, table, "dino", "clip_t", configs)
    (line,) = curve_lines(ax).values()
    assert np.allclose(line.get_xdata(), [0.7, 0.65, 0.6, 0.5])
    assert texts(ax) == ["1", "0 (unguided)", "0.5", "2"]
    off = drawn[drawn["unguided"]]
    assert list(off["label"]) == ["unguided (all terms off)"]
    (zero,) = [m for m in markers(ax, "point:") if m.get_xdata()[0] == 0.7]
    assert zero.get_marker() == "o" and zero.get_markerfacecolor() == "white"  # drawn as unguided, not as a guided star
    plt.close(fig)
    # a knob outside guidance (CFG): the unguided rows move with it too, so each arm is a curve (10 after 9: numeric)
    scales = [10.0, 3.0, 9.0]
    configs = {f"sampler-cfg-scale-{c:g}": guided_config(cfg_scale=c) for c in scales}
    table = frame([{"point": p, "method": "vanilla-sd", "guidance": g, "clip_t": c / 100 + (g != "none") * 0.001, "dino": 0.5}
                   for p, c in zip(configs, scales) for g in ("none", "pick-and-draw")])
    fig, ax = plt.subplots()
    draw_tradeoff(ax, table, "dino", "clip_t", configs)
    lines = curve_lines(ax)
    assert sorted(lines) == ["curve:vanilla-sd:none", "curve:vanilla-sd:pick-and-draw"]
    assert np.allclose(lines["curve:vanilla-sd:none"].get_xdata(), [0.03, 0.09, 0.10])
    assert texts(ax).count("10") == 2 and texts(ax).count("3") == 2
    plt.close(fig)


def test_a_factorial_sweep_is_labelled_points_never_joined():
    configs = {f"guidance-appearance-weight-{a:g}__guidance-layout-weight-{b:g}": guided_config(appearance=a, layout=b)
               for a in (0.0, 1.0) for b in (0.0, 1.0)}
    rows = []
    for k, point in enumerate(configs):
        for method in BASE:
            rows.append({"point": point, "method": method, "guidance": "pick-and-draw", "clip_t": 0.6 + k / 50, "dino": 0.5 - k / 40})
    fig, ax = plt.subplots()
    drawn = draw_tradeoff(ax, frame(rows), "dino", "clip_t", configs)
    assert joined(ax) == [] and not curve_lines(ax)  # no order among settings: no line through them
    assert len(markers(ax, "point:")) == 8  # one labelled marker per (setting, method)
    notes = texts(ax)
    assert notes.count("appearance ✗, layout ✗ (unguided)") == 2
    for label in ("appearance ✓, layout ✗", "appearance ✗, layout ✓", "appearance ✓, layout ✓"):
        assert notes.count(label) == 2
    assert set(drawn.loc[drawn["unguided"], "label"]) == {"unguided (all terms off)"}
    plt.close(fig)
    # a one-dimensional sweep of a categorical field (layers) is not a curve either
    configs = {f"guidance-appearance-layers-{name}": guided_config(layers=(name,)) for name in ("up", "down", "mid")}
    table = frame([{"point": p, "method": "vanilla-sd", "guidance": "pick-and-draw", "clip_t": 0.6 + k / 50, "dino": 0.5 - k / 40}
                   for k, p in enumerate(configs)])
    fig, ax = plt.subplots()
    draw_tradeoff(ax, table, "dino", "clip_t", configs)
    assert joined(ax) == [] and texts(ax) == ["layers=up", "layers=down", "layers=mid"]
    plt.close(fig)


def test_the_pareto_front_spans_every_point_method_and_guided_and_unguided_row(tmp_path):
    configs = {f"guidance-step-size-{s:g}": guided_config((s, s / 2)) for s in (10.0, 20.0)}
    p10, p20 = configs
    rows = [  # the front: a's unguided row (best CLIP-T), b guided at step 10, a guided at step 20 (best DINO)
        {"point": p10, "method": "a", "guidance": "none", "clip_t": 0.90, "dino": 0.20},
        {"point": p20, "method": "a", "guidance": "none", "clip_t": 0.90, "dino": 0.20},
        {"point": p10, "method": "a", "guidance": "pick-and-draw", "clip_t": 0.60, "dino": 0.50},  # dominated by b's
        {"point": p20, "method": "a", "guidance": "pick-and-draw", "clip_t": 0.50, "dino": 0.90},
        {"point": p10, "method": "b", "guidance": "none", "clip_t": 0.80, "dino": 0.20},  # dominated by a's unguided
        {"point": p20, "method": "b", "guidance": "none", "clip_t": 0.80, "dino": 0.20},
        {"point": p10, "method": "b", "guidance": "pick-and-draw", "clip_t": 0.70, "dino": 0.60},
        {"point": p20, "method": "b", "guidance": "pick-and-draw", "clip_t": 0.55, "dino": 0.55},  # dominated by b's step 10
    ]
    table = frame(rows)
    fig, ax = plt.subplots()
    drawn = draw_tradeoff(ax, table, "dino", "clip_t", configs)
    (front,) = markers(ax, "pareto")
    assert np.allclose(front.get_xdata(), [0.50, 0.70, 0.90]) and np.allclose(front.get_ydata(), [0.90, 0.60, 0.20])
    on = drawn[drawn["on_front"]]
    assert sorted(zip(on["method"], on["guidance"], on["point"])) == [
        ("a", "none", p10), ("a", "pick-and-draw", p20), ("b", "pick-and-draw", p10)]
    plt.close(fig)
    paths = write_tradeoff(table, configs, tmp_path)
    assert {p.name for p in paths} >= {"tradeoff-dino.png", "tradeoff-dino.svg", "tradeoff-clip_i.png"}
    csv = pd.read_csv(tmp_path / "tradeoff.csv")
    assert list(csv.columns[:5]) == ["point", "method", "guidance", "label", "guidance.step_size"]
    front_rows = csv[csv["front:dino-vs-clip_t"]]
    assert sorted(zip(front_rows["method"], front_rows["guidance"])) == [("a", "none"), ("a", "pick-and-draw"), ("b", "pick-and-draw")]
    assert sorted(csv.loc[csv["curve"].notna(), "guidance.step_size"].unique()) == ["[10, 5]", "[20, 10]"]
    assert set(csv.loc[csv["guidance"] == "none", "guidance.step_size"]) == {"–"}  # drawn once, for no step size


# ---------------------------------------------------------------------------------------------------
# W&B: a tiny offline sweep run


def fidelity(ctx, frame: pd.DataFrame) -> pd.DataFrame:
    """Two trade-off axes from the images: a 'subject' one (mean pixel value) and a 'text' one (its spread)."""
    pixels = [np.asarray(im.convert("L"), dtype=float) / 255 for im in ctx.images]
    return pd.DataFrame({"subject_probe": [float(p.mean()) for p in pixels], "text_probe": [float(p.std()) for p in pixels]})


FIDELITY = MetricSpec("fidelity", fidelity, (Column("subject_probe", "SubjectProbe", axis="subject"),
                                             Column("text_probe", "TextProbe", axis="text")))


@pytest.fixture(scope="module")
def sweep_run(tiny_model, tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    with metrics.registered("fidelity", FIDELITY, "two trade-off axes from the pixels (tests)"):
        argv = ["run", f"model.source={tiny_model}", f"store={store}", "dataset.subjects=[ball1]", "dataset.max_prompts=1",
                "dataset.images_per_prompt=2", "sampler.steps=2", "methods=[vanilla-sd, textual-inversion]",
                "method_params={textual-inversion: {steps: 2, batch_size: 2}}", "guidance.name=pick-and-draw",
                "guidance.compare_unguided=true", "metrics.names=[fidelity]", "metrics.bootstrap=10", "report.wandb=offline",
                "--sweep", "guidance.step_size=[4, 2],[0, 0],[8, 4]"]
        assert main(argv) == 0
    return store / "default"


def run_record(path):
    return next(r.run for r in read_records(path) if r.WhichOneof("record_type") == "run")


def nested_updates(path, kind):
    """{dotted nested key: value_json} of a run file's config (the run record's, then config records) or summary."""
    out = {}
    for rec in read_records(path):
        which = rec.WhichOneof("record_type")
        updates = rec.run.config.update if kind == "config" and which == "run" else \
            getattr(rec, kind).update if which == kind else []
        for u in updates:
            out[".".join(u.nested_key) if u.nested_key else u.key] = u.value_json
    return out


def test_a_sweep_gets_a_wandb_summary_run_with_its_tables_and_native_line_plots(sweep_run):
    files = sorted((sweep_run / "wandb").glob("offline-run-*/*.wandb"))
    summaries = [f for f in files if run_record(f).job_type == "sweep-summary"]
    assert len(files) == 3 * 4 + 1 and len(summaries) == 1  # one run per operating point, plus the sweep's summary
    (path,) = summaries
    record = run_record(path)
    assert record.display_name == "default/sweep" and record.run_group == "default"
    config = nested_updates(path, "config")
    sweep = json.loads(config["sweep_summary"])
    assert sweep["fields"] == ["guidance.step_size"] and sweep["kind"] == "curve"
    assert json.loads(config["guidance"])["step_size"] == [[0.0, 0.0], [4.0, 2.0], [8.0, 4.0]]
    summary = nested_updates(path, "summary")
    for key in ("combined", "ablation", "tradeoff_points"):
        assert json.loads(summary[f"{key}._type"]) == "table-file"
    assert json.loads(summary["figure/tradeoff-subject_probe._type"]) == "image-file"
    for metric in ("subject_probe", "text_probe"):  # a native W&B line plot per trade-off axis metric
        panel = json.loads(config[f"_wandb.visualize.curve/{metric}"])
        assert panel["panel_config"]["panelDefId"] == "wandb/lineseries/v0"
        assert panel["panel_config"]["stringSettings"]["xname"] == "guidance.step_size[0]"
        (table_file,) = path.parent.glob(f"files/media/table/curve/{metric}_table_*.table.json")
        data = json.loads(table_file.read_text())["data"]
        series = {}
        for step, key, value in data:  # columns: step, lineKey, lineVal
            series.setdefault(key, []).append((step, value))
        assert sorted(series) == ["textual-inversion", "vanilla-sd"]  # one series per method
        assert all([s for s, _ in points] == [0.0, 4.0, 8.0] for points in series.values())  # x = the step size, in order
    combined = next(path.parent.glob("files/media/table/combined_*.table.json"))
    table = json.loads(combined.read_text())
    assert table["columns"][:4] == ["point", "guidance.step_size", "method", "guidance"]
    assert {row[1] for row in table["data"] if row[3] != "none"} == {"[0, 0]", "[4, 2]", "[8, 4]"}
    assert {row[1] for row in table["data"] if row[3] == "none"} == {"–"}  # a guidance field does not apply unguided
    ablation = json.loads(next(path.parent.glob("files/media/table/ablation_*.table.json")).read_text())
    assert ablation["columns"][:3] == ["guidance.step_size", "Method", "Guidance"]
    report = sweep_run / "report"
    assert (report / "tradeoff-subject_probe.png").is_file() and (report / "tradeoff.csv").is_file()
