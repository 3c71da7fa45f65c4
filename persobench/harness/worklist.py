"""The work list of a config, counted without loading any model (`persobench run --dry-run`).

The GPU-time estimate multiplies the counts by per-unit costs measured or published for SD 1.5 at
512 px on one A100-class GPU; they are printed with the estimate so nobody mistakes it for a promise.
"""

from __future__ import annotations

from ..core.config import RunConfig

# seconds per unit on one A100-class GPU, SD 1.5 fp16, 512 px (rough; see benchmarks/RESULTS.md); a fit step's
# cost is the method's own (`fit_step_seconds` on its class, FALLBACK_FIT_STEP_SECONDS where it declares none)
UNIT_SECONDS = {"image_step": 0.045, "metric_image": 0.01,
                "guided_factor": 2.2}  # a Pick-and-Draw image costs ~2.2 plain ones (measured on the toy world, RESULTS.md)
FALLBACK_FIT_STEP_SECONDS = 0.3


def fit_step_seconds(method: str) -> float:
    from ..methods import methods

    return float(getattr(methods.get(method), "fit_step_seconds", FALLBACK_FIT_STEP_SECONDS))


# a fit unit that trains nothing still loads its method (and a fitted one loads its weights): not free
FIT_OVERHEAD_SECONDS = 1.0


def fit_seconds(method: str, params: dict) -> float:
    """A fit unit's estimated cost (the scheduler's weight for it across processes)."""
    from ..methods import methods

    return methods.get(method).fit_steps(params) * fit_step_seconds(method) + FIT_OVERHEAD_SECONDS


def batch_seconds(cfg: RunConfig, images: int, guidance: str) -> float:
    """A sampling batch's estimated cost: its images, a guided one weighing `guided_factor` plain ones."""
    per_image = cfg.sampler.steps * UNIT_SECONDS["image_step"] * (1.0 if guidance == "none" else UNIT_SECONDS["guided_factor"])
    return images * per_image


def unit_costs(method_names: list[str]) -> dict[str, object]:
    """The unit costs an estimate used, as the dry run prints them (fit steps for these methods)."""
    return {"image_step": UNIT_SECONDS["image_step"], "fit_step": {m: fit_step_seconds(m) for m in method_names},
            "metric_image": UNIT_SECONDS["metric_image"], "guided_factor": UNIT_SECONDS["guided_factor"]}


def guidance_rows(cfg: RunConfig) -> list[str]:
    """The guidance settings every method is sampled with: the rows of the results table per method."""
    name = cfg.guidance.name
    return ["none"] if name == "none" else (["none", name] if cfg.guidance.compare_unguided else [name])


def work_list(cfg: RunConfig) -> dict[str, object]:
    """The run's counts after the same pre-flight checks as a run (every image decoded, the metrics the data can
    score), except the metric backbones' weights: a dry run plans a GPU run on a machine that may lack them."""
    from .runner import preflight

    cfg, bench, subjects = preflight(cfg, weights=False)
    images_per_method = 0
    for s in subjects:
        prompts = bench.prompts_for(s)
        n = len(prompts) if cfg.dataset.max_prompts is None else min(len(prompts), cfg.dataset.max_prompts)
        images_per_method += n * cfg.dataset.images_per_prompt
    from ..methods import methods

    fit_steps = {m: methods.get(m).fit_steps(cfg.method_params.get(m, {})) for m in cfg.methods}
    fits = {m: len(subjects) if fit_steps[m] else 0 for m in cfg.methods}
    settings = guidance_rows(cfg)
    rows = [f"{m}/{g}" for m in cfg.methods for g in settings]
    images = images_per_method * len(rows)
    metric_passes = images * len(cfg.metrics.names)
    plain_equivalents = images_per_method * len(cfg.methods) * sum(1.0 if g == "none" else UNIT_SECONDS["guided_factor"] for g in settings)
    seconds = plain_equivalents * cfg.sampler.steps * UNIT_SECONDS["image_step"] * (2 if cfg.sampler.cfg_scale > 1 else 1) / 2
    seconds += sum(fits[m] * fit_steps[m] * fit_step_seconds(m) for m in cfg.methods)
    seconds += metric_passes * UNIT_SECONDS["metric_image"]
    return {"subjects": len(subjects), "methods": list(cfg.methods), "rows": rows, "fits": fits, "fit_steps": fit_steps,
            "images": images, "metric_passes": metric_passes, "gpu_hours_estimate": round(seconds / 3600, 2)}

