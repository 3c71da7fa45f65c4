"""The work list of a config, counted without loading any model (`persobench run --dry-run`).

The GPU-time estimate multiplies the counts by per-unit costs for SD 1.5 at 512 px on one GPU: `unit_table()`,
the one table every estimate reads (the dry run's GPU-hours, `--shape-check`'s GPU projection, the sharding
scheduler's weights). It holds what `benchmarks/gpu_checks.json` measured when that file is present, else the
rough A100-class figures below; the table says which, and it is printed with every estimate so nobody mistakes
it for a promise.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from pathlib import Path

from ..core.config import RunConfig

logger = logging.getLogger(__name__)

# seconds per unit on one A100-class GPU, SD 1.5 fp16, 512 px (rough; see benchmarks/RESULTS.md); a fit step's
# cost is the method's own (`fit_step_seconds` on its class, FALLBACK_FIT_STEP_SECONDS where it declares none)
UNIT_SECONDS = {"image_step": 0.045, "metric_image": 0.01,
                # a Pick-and-Draw image costs ~1.74 plain ones with the vanilla template reused (the toy world's amortised
                # figure over the four methods, benchmarks/guidance_overhead.py, RESULTS.md); a GPU's measured one replaces it
                "guided_factor": 1.74}
FALLBACK_FIT_STEP_SECONDS = 0.3

# Measured unit costs, when a GPU machine has written them (`bash benchmarks/gpu_checks.sh`, benchmarks/gpu_checks.py;
# PERSOBENCH_GPU_CHECKS names another file). Read:
#   {"device": "NVIDIA H200", "dtype": "fp16", "steps": 30,
#    "unit_costs": {"image_step": s, "metric_image": s, "guided_factor": x, "fit_step": {"<method>": s, ...},
#                   "inversion_per_subject": s (at "steps" steps)},
#    "sampling": [{"method": m, "guidance": g, "batch": b, "peak_memory_gib": GiB, ...}, ...]}
# (every key optional; a missing one keeps the estimate above).
GPU_CHECKS = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_checks.json"
GPU_CHECKS_ENV = "PERSOBENCH_GPU_CHECKS"


def gpu_checks_path() -> Path:
    return Path(os.environ.get(GPU_CHECKS_ENV) or GPU_CHECKS).expanduser()


def unit_table() -> dict:
    """The per-unit GPU costs every estimate uses: `image_step` (one image's CFG step), `metric_image`,
    `guided_factor` (a guided image in plain ones), `fit_step` ({method: s} measured; methods not in it use
    their declared `fit_step_seconds`), `peak_memory_gib` (measured per phase, {} if not), and `source`."""
    path = gpu_checks_path()
    try:
        stamp = path.stat().st_mtime_ns if path.is_file() else None
    except OSError:
        stamp = None
    return _unit_table(str(path), stamp)


@functools.lru_cache(maxsize=8)
def _unit_table(path: str, stamp: int | None) -> dict:
    table = {**UNIT_SECONDS, "fit_step": {}, "peak_memory_gib": {},
             "source": "estimate (UNIT_SECONDS: rough A100-class figures for SD 1.5 fp16 512 px, not measured here)"}
    if stamp is None:
        return table
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        logger.warning("%s is not readable JSON (%s); the GPU estimates use UNIT_SECONDS", path, e)
        return table
    measured = data.get("unit_costs") if isinstance(data, dict) else None
    if not isinstance(measured, dict):
        logger.warning("%s has no unit_costs mapping; the GPU estimates use UNIT_SECONDS", path)
        return table
    for key in UNIT_SECONDS:
        if isinstance(measured.get(key), int | float):
            table[key] = float(measured[key])
    if isinstance(measured.get("fit_step"), dict):
        table["fit_step"] = {m: float(v) for m, v in measured["fit_step"].items() if isinstance(v, int | float)}
    if isinstance(measured.get("inversion_per_subject"), int | float) and isinstance(data.get("steps"), int) and data["steps"] > 0:
        table["inversion_step"] = float(measured["inversion_per_subject"]) / data["steps"]  # one subject's inversion, per step
    for row in data.get("sampling") or []:
        if isinstance(row, dict) and isinstance(row.get("peak_memory_gib"), int | float):
            name = f"{row.get('method')}/{row.get('guidance')} batch {row.get('batch')}"
            table["peak_memory_gib"][name] = float(row["peak_memory_gib"])
    table["source"] = f"measured: {path} ({data.get('device', 'GPU')}, {data.get('dtype', 'fp16')})"
    return table


def fit_step_seconds(method: str) -> float:
    from ..methods import methods

    measured = unit_table()["fit_step"]
    if method in measured:
        return measured[method]
    return float(getattr(methods.get(method), "fit_step_seconds", FALLBACK_FIT_STEP_SECONDS))


# a fit unit that trains nothing still loads its method (and a fitted one loads its weights): not free
FIT_OVERHEAD_SECONDS = 1.0


def fit_seconds(method: str, params: dict) -> float:
    """A fit unit's estimated cost (the scheduler's weight for it across processes)."""
    from ..methods import methods

    return methods.get(method).fit_steps(params) * fit_step_seconds(method) + FIT_OVERHEAD_SECONDS


def batch_seconds(cfg: RunConfig, images: int, guidance: str) -> float:
    """A sampling batch's estimated cost: its images, a guided one weighing `guided_factor` plain ones."""
    units = unit_table()
    per_image = cfg.sampler.steps * units["image_step"] * (1.0 if guidance == "none" else units["guided_factor"])
    return images * per_image


DEFAULT_INVERSION_REFERENCES = 4  # DreamBench's subjects have 4-6 images; a palette term without num_references reads all


def setup_seconds(cfg: RunConfig) -> float:
    """What a process pays once per (method, subject) whose batches it samples: loading the fit
    (FIT_OVERHEAD_SECONDS), and with a guided row whose terms read the palette, the references' inversion (measured
    per subject when the GPU checks ran, else one CFG step per reference per sampling step, times 1 + the null-text
    iterations with guidance.inversion=null_text). The sharding scheduler's setup weight (`distributed.affine`)."""
    seconds = FIT_OVERHEAD_SECONDS
    g = cfg.guidance
    if g.name != "none" and g.palette_term() is not None:
        units = unit_table()
        if "inversion_step" in units:  # measured with DDIM inversion
            per_step = units["inversion_step"]
        else:
            refs = getattr(g.palette_term()[1], "num_references", None) or DEFAULT_INVERSION_REFERENCES
            per_step = refs * units["image_step"]
        per_step *= 1 + (g.null_text_iterations if g.inversion == "null_text" else 0)
        seconds += cfg.sampler.steps * per_step
    return seconds


def unit_costs(method_names: list[str]) -> dict[str, object]:
    """The unit costs an estimate used, as the dry run and the shape check print them (fit steps for these methods)."""
    units = unit_table()
    return {"image_step": units["image_step"], "fit_step": {m: fit_step_seconds(m) for m in method_names},
            "metric_image": units["metric_image"], "guided_factor": units["guided_factor"]}


def prior_image_steps(method: str, params: dict) -> int:
    """Image-steps of the prior-preservation class images one fit samples before it trains (DreamBooth-LoRA with
    prior_preservation: num_class_images x class_steps), cached per class noun; 0 for every other method."""
    if method != "dreambooth-lora":
        return 0
    from ..methods.dreambooth_lora import PRESETS, LoraParams
    from ..methods.training import resolve_params

    p = resolve_params(LoraParams, PRESETS, params, method)
    return p.num_class_images * p.class_steps if p.prior_preservation else 0


def guidance_rows(cfg: RunConfig) -> list[str]:
    """The guidance settings every method is sampled with: the rows of the results table per method."""
    name = cfg.guidance.name
    return ["none"] if name == "none" else (["none", name] if cfg.guidance.compare_unguided else [name])


def work_list(cfg: RunConfig, subjects: list[tuple[str, int]] | None = None) -> dict[str, object]:
    """The run's counts after the same pre-flight checks as a run (every image decoded, the metrics the data can
    score), except the metric backbones' weights: a dry run plans a GPU run on a machine that may lack them.

    `subjects`: (class noun, prompt count) per subject, to count a dataset that is not on this machine (the shape
    check's projection of DreamBench as published); the config's max_prompts still applies. `gpu_seconds` splits
    the GPU estimate by phase, each from `unit_table()`."""
    if subjects is None:
        from .runner import preflight

        cfg, bench, chosen = preflight(cfg, weights=False)
        subjects = [(s.class_noun, len(bench.prompts_for(s))) for s in chosen]
    images_per_method = 0
    for _, prompts in subjects:
        n = prompts if cfg.dataset.max_prompts is None else min(prompts, cfg.dataset.max_prompts)
        images_per_method += n * cfg.dataset.images_per_prompt
    from ..methods import methods

    units = unit_table()
    fit_steps = {m: methods.get(m).fit_steps(cfg.method_params.get(m, {})) for m in cfg.methods}
    fits = {m: len(subjects) if fit_steps[m] else 0 for m in cfg.methods}
    classes = len({c for c, _ in subjects})
    settings = guidance_rows(cfg)
    rows = [f"{m}/{g}" for m in cfg.methods for g in settings]
    images = images_per_method * len(rows)
    metric_passes = images * len(cfg.metrics.names)
    cfg_factor = (2 if cfg.sampler.cfg_scale > 1 else 1) / 2  # image_step is a CFG step (two UNet passes)
    gpu: dict[str, float] = {}
    for m in cfg.methods:
        if fits[m]:
            gpu[f"fit {m}"] = fits[m] * fit_steps[m] * fit_step_seconds(m)
        prior = prior_image_steps(m, cfg.method_params.get(m, {}))
        if fits[m] and prior:  # sampled at CFG 5 (a CFG step each), once per class noun
            gpu[f"class images {m}"] = classes * prior * units["image_step"]
    for g in settings:
        kind = "sampling" if g == "none" else "guided sampling"
        factor = 1.0 if g == "none" else units["guided_factor"]
        gpu[kind] = images_per_method * len(cfg.methods) * factor * cfg.sampler.steps * units["image_step"] * cfg_factor
    if "inversion_step" in units and cfg.guidance.name != "none" and cfg.guidance.palette_term() is not None:
        gpu["inversion"] = len(subjects) * len(cfg.methods) * cfg.sampler.steps * units["inversion_step"]  # measured only
    gpu["metrics"] = metric_passes * units["metric_image"]
    seconds = sum(gpu.values())
    from ..core.config import stable_hash

    fit_ids = {m: stable_hash({"method": m, "params": cfg.method_params.get(m, {}), "seed": cfg.seed, "model": cfg.model.source})
               for m in cfg.methods}  # what a fit key depends on besides the subject: points sharing it share the fit
    return {"subjects": len(subjects), "classes": classes, "methods": list(cfg.methods), "rows": rows, "fits": fits,
            "fit_steps": fit_steps, "images": images, "metric_passes": metric_passes, "gpu_seconds": gpu, "fit_ids": fit_ids,
            "gpu_hours_estimate": round(seconds / 3600, 2), "unit_source": units["source"]}


def combined_gpu_seconds(lists: list[dict]) -> dict[str, float]:
    """The GPU estimate by phase of several points run into one store (a sweep): a fit and its class images that points
    share (same method, parameters, seed and model) count once, as the store fits them once."""
    out: dict[str, float] = {}
    seen = set()
    for w in lists:
        for phase, seconds in w["gpu_seconds"].items():
            if phase.startswith(("fit ", "class images ")):
                key = (phase, w["fit_ids"][phase.rsplit(" ", 1)[1]])
                if key in seen:
                    continue
                seen.add(key)
            out[phase] = out.get(phase, 0.0) + seconds
    return out

