"""The GPU run, prepared (issue 15): one JSON of the figures a GPU user's estimates need, on random-weight twins of
the real models (`persobench/twins/`) at their real shapes.

For each of the four methods without and with Pick-and-Draw at 512 px and batch 1 / 4 / 8: images per second, the
guided/plain ratio and peak memory; fit steps per second for Textual Inversion and DreamBooth-LoRA at their paper
presets; the inversion's time per subject; metric images per second for DINO ViT-S/16 and CLIP ViT-B/32. The block
`unit_costs` is what `harness/worklist.py` reads for `--dry-run` and `--shape-check` projections when the file is
present (`benchmarks/gpu_checks.json`).

    bash benchmarks/gpu_checks.sh                                            # on a GPU: writes $OUT/gpu_checks.json
    OMP_NUM_THREADS=1 python benchmarks/gpu_checks.py --device cpu --arch toy --batches 1 --steps 2 --out /tmp/g.json
    # the SD 1.5 path on CPU with reduced twins (a smoke run of this script: ~4 min at 2 threads, session 6)
    python benchmarks/gpu_checks.py --device cpu --dtype fp32 --twin-divisor 8 --batches 1 --steps 2 --repeats 1 --fit-steps 2 \
        --metric-images 4 --out /tmp/g.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from persobench.core.components import load_components
from persobench.core.config import DatasetConfig, load_config
from persobench.core.seeding import image_seed
from persobench.datasets import datasets
from persobench.harness.guided import TemplateStore, reference_palette
from persobench.harness.runner import ImageJob, generate
from persobench.methods import methods

METHODS = ["vanilla-sd", "textual-inversion", "dreambooth-lora", "blip-diffusion"]


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _peak_gib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None


def _reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def _timed(fn, device: str) -> float:
    _sync(device)
    t = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t


def models(arch: str, cache: Path, divisor: int = 1) -> tuple[str, dict]:
    """(model.source, method_params) for the architecture: the SD 1.5 twin (BLIP-Diffusion's real backend on its
    twin) or the embedded toy world. `divisor` > 1: reduced twins of the same layout (a CPU smoke run of this script)."""
    if arch == "toy":
        return "toyworld", {}
    from persobench.twins import ensure_twin

    sd = ensure_twin("sd15", cache, width_divisor=divisor)
    blip = ensure_twin("blipdiffusion", cache, width_divisor=divisor)
    return str(sd), {"blip-diffusion": {"backend": "real", "weights": str(blip), "qformer_tokenizer": str(blip / "qformer_tokenizer")}}


def sampling(cfg, fitted: dict, subject, batches: list[int], device: str, repeats: int) -> list[dict]:
    rows = []
    template = "a {0} {1} on the beach"
    for batch in batches:
        jobs = [ImageJob("bench", subject, 0, template, i, image_seed(0, subject.name, template, i), Path("unused")) for i in range(batch)]
        for m, f in fitted.items():
            palette = reference_palette(f, cfg, "gpu", Path(tempfile.mkdtemp()))
            store = TemplateStore(Path(tempfile.mkdtemp()))
            generate(fitted["vanilla-sd"], cfg, jobs, "none", templates=store)  # records the template the others reuse
            for guidance in ("none", "pick-and-draw"):
                generate(f, cfg, jobs, guidance, palette, templates=store)  # warm-up
                _reset_peak(device)
                run = lambda f=f, j=jobs, g=guidance, p=palette, s=store: generate(f, cfg, j, g, p, templates=s)  # noqa: E731
                times = [_timed(run, device) for _ in range(repeats)]
                rows.append({"method": m, "guidance": guidance, "batch": batch, "seconds_per_image": statistics.median(times) / batch,
                             "images_per_s": batch / statistics.median(times), "peak_memory_gib": _peak_gib(device)})
    return rows


PRIOR_SMOKE = {"num_class_images": 2, "class_steps": 2}  # prior preservation kept (it doubles a step's batch), its class images few


def fit_rates(c, cfg, subject, device: str, steps: int) -> dict:
    """Seconds per fit step at the paper presets: a fit of `steps` steps minus a fit of one step, over steps - 1, so
    the fit's fixed costs (encoding the references, DreamBooth's class images) do not count as steps."""
    out = {}
    for m in ("textual-inversion", "dreambooth-lora"):
        base = {"preset": "paper"} if c.latent_shape[1] >= 64 else {}
        base.update(PRIOR_SMOKE if m == "dreambooth-lora" else {})
        timed = {}
        for n in (1, max(2, steps)):
            method = methods.get(m)({**base, "steps": n}, c)
            timed[n] = _timed(lambda method=method: method.fit(subject, Path(tempfile.mkdtemp()), 0), device)
        n = max(2, steps)
        per_step = max(1e-9, (timed[n] - timed[1]) / (n - 1))
        out[m] = {"steps": n, "steps_per_s": 1 / per_step, "seconds_per_step": per_step, "fixed_seconds": max(0.0, timed[1] - per_step)}
    return out


def metric_rates(device: str, n: int, arch: str, cache: Path, divisor: int = 1) -> dict:
    from PIL import Image

    from persobench.reports.metrics.backbones import get_backbone

    images = [Image.new("RGB", (512, 512), (i * 7 % 255, 90, 160)) for i in range(n)]
    out = {}
    names = {"toy": [("toy-dino", None), ("toy-clip", None)]}.get(arch)
    if names is None:
        from persobench.twins import ensure_twin

        dino, clip = (ensure_twin(n, cache, width_divisor=divisor) for n in ("dino-vits16", "clip-vit-b32"))
        # a reduced twin cannot pass the real backbones' strict shape check: its folder form loads it
        names = [("dino-vits16", dino), ("clip-vit-b32", clip)] if divisor == 1 else [(f"dino:{dino}", None), (f"clip:{clip}", None)]
    for name, weights in names:
        backbone = get_backbone(name, weights)
        backbone.model.to(device)
        backbone.embed_images(images[:8], torch.device(device), 64)  # warm-up
        seconds = _timed(lambda b=backbone: b.embed_images(images, torch.device(device), 64), device)
        out[name] = {"images_per_s": n / seconds}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/gpu_checks.json"))
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="fp16")
    p.add_argument("--arch", choices=["sd15", "toy"], default="sd15")
    p.add_argument("--batches", default="1,4,8")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--fit-steps", type=int, default=20)
    p.add_argument("--metric-images", type=int, default=256)
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "persobench-twins")
    p.add_argument("--twin-divisor", type=int, default=1, help="reduced twins (8: a CPU smoke run of this script)")
    a = p.parse_args()
    source, method_params = models(a.arch, a.cache, a.twin_divisor)
    cfg = load_config(None, [f"model.source={source}", f"model.device={a.device}", f"model.dtype={a.dtype}",
                             f"sampler.steps={a.steps}", "guidance.name=pick-and-draw"])
    c = load_components(cfg.model)
    subject = next(s for s in datasets.get("toybench")(DatasetConfig()).subjects if s.name == "ball1")
    # fits to sample from: their sampling cost does not depend on how they were trained, so two steps at batch 1
    fit_params = {"textual-inversion": {"steps": 2, "batch_size": 1}, "dreambooth-lora": {"steps": 2, "batch_size": 1}}
    fitted = {m: methods.get(m)({**fit_params.get(m, {}), **method_params.get(m, {})}, c).fit(subject, Path(tempfile.mkdtemp()), 0)
              for m in METHODS}
    res = cfg.sampler.resolution or c.latent_shape[1] * c.vae_scale
    rows = sampling(cfg, fitted, subject, [int(b) for b in a.batches.split(",")], a.device, a.repeats)
    ratio = {m: {str(r["batch"]): next(g["seconds_per_image"] for g in rows if g["method"] == m and g["batch"] == r["batch"]
                                       and g["guidance"] != "none") / r["seconds_per_image"]
                 for r in rows if r["method"] == m and r["guidance"] == "none"} for m in METHODS}
    inversion = _timed(lambda: reference_palette(fitted["vanilla-sd"], cfg, "inv", Path(tempfile.mkdtemp())), a.device)
    fits = fit_rates(c, cfg, subject, a.device, a.fit_steps)
    metric = metric_rates(a.device, a.metric_images, a.arch, a.cache, a.twin_divisor)
    largest = max(int(b) for b in a.batches.split(","))
    plain = [r for r in rows if r["guidance"] == "none" and r["batch"] == largest]
    unit = {"image_step": statistics.median(r["seconds_per_image"] for r in plain) / a.steps,
            "guided_factor": statistics.median(ratio[m][str(largest)] for m in METHODS),
            "fit_step": {m: f["seconds_per_step"] for m, f in fits.items()},
            "metric_image": sum(1 / v["images_per_s"] for v in metric.values()) / len(metric),
            "inversion_per_subject": inversion}
    name = torch.cuda.get_device_name() if a.device == "cuda" else "cpu"
    result = {"device": name, "dtype": a.dtype, "arch": a.arch, "resolution": res, "steps": a.steps, "torch": torch.__version__,
              "sampling": rows, "guided_over_plain": ratio, "fit": fits, "inversion_seconds_per_subject": inversion,
              "metrics": metric, "unit_costs": unit}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("device", "guided_over_plain", "fit", "inversion_seconds_per_subject", "metrics",
                                            "unit_costs")}, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
