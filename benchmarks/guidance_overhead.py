"""Pick-and-Draw's cost over plain sampling, per method and amortised over a comparison run (issue 17).

Per method (vanilla SD, Textual Inversion, DreamBooth-LoRA, BLIP-Diffusion; the same batch of one subject's
images): plain and guided seconds per image, the guided one reading the vanilla template recorded once
(`harness/guided.py::TemplateStore`: vanilla's plain pass records it as it samples) and, for contrast, one
running the template itself (the path without a store). Amortised: all four methods' guided time, plus
what recording costs vanilla's plain pass, over their plain time. Inversion (the reference palette) is
per subject and reported apart, then folded into an end-to-end ratio for N images per subject.
Three repeats, the variants interleaved within each; medians.

    OMP_NUM_THREADS=1 python benchmarks/guidance_overhead.py                 # embedded toy model, CPU
    python benchmarks/guidance_overhead.py --arch sd15 --device cuda         # SD 1.5 / BLIP-Diffusion twins, 512 px
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from persobench.core.components import EMBEDDED
from persobench.core.config import DatasetConfig, SamplerConfig, load_config
from persobench.core.seeding import image_seed
from persobench.datasets import datasets
from persobench.harness.runner import ImageJob, generate
from persobench.methods import methods


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--arch", choices=["toy", "sd15"], default="toy")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--batch", type=int, default=SamplerConfig().batch_size, help="default: sampler.batch_size's default")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--methods", default="vanilla-sd,textual-inversion,dreambooth-lora,blip-diffusion")
    p.add_argument("--images-per-subject", type=int, default=100, help="for the end-to-end ratio (DreamBench: 25 prompts x 4)")
    p.add_argument("--twin-divisor", type=int, default=1, help="--arch sd15 with reduced twins (8: a CPU smoke run)")
    a = p.parse_args()
    method_params: dict = {}
    if a.arch == "sd15":  # random-weight twins of SD 1.5 and BLIP-Diffusion at their real shapes
        from gpu_checks import models

        source, method_params = models("sd15", Path(tempfile.gettempdir()) / "persobench-twins", a.twin_divisor)
    elif (EMBEDDED["toyworld"] / "model_index.json").exists():
        source = "toyworld"
    else:
        from persobench.toyworld.training.architectures import save_random_pipeline

        source = str(save_random_pipeline(Path(tempfile.mkdtemp()) / "sd", tiny=False))
    base = [f"model.source={source}", f"model.device={a.device}", f"model.dtype={a.dtype}", f"sampler.steps={a.steps}",
            "guidance.name=pick-and-draw"]
    cfg = load_config(None, base)
    from persobench.core.components import load_components
    from persobench.guidance.pick_and_draw import template_bytes
    from persobench.harness.guided import TemplateStore, reference_palette

    c = load_components(cfg.model)
    subject = next(s for s in datasets.get("toybench")(DatasetConfig()).subjects if s.name == "ball1")
    names = a.methods.split(",")
    if names[0] != "vanilla-sd":
        raise SystemExit("--methods must start with vanilla-sd: its plain pass records the template the others reuse")
    fit_params = {"textual-inversion": {"steps": 5}, "dreambooth-lora": {"steps": 5}}  # sampling cost does not depend on it
    fitted = {m: methods.get(m)({**fit_params.get(m, {}), **method_params.get(m, {})}, c).fit(subject, Path(tempfile.mkdtemp()), 0)
              for m in names}
    template = "a {0} {1} on the beach"
    jobs = [ImageJob("bench", subject, 0, template, i, image_seed(0, "ball1", template, i), Path("unused")) for i in range(a.batch)]

    def sync() -> None:
        if a.device == "cuda":
            torch.cuda.synchronize()

    def timed(fn) -> float:
        sync()
        t = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t

    palettes, inversion = {}, {}
    for m in names:  # the palette: inverted once per subject (and fit), reused by every prompt and seed
        inversion[m] = timed(lambda m=m: palettes.__setitem__(m, reference_palette(fitted[m], cfg, "bench", Path(tempfile.mkdtemp()))))
    generate(fitted[names[0]], cfg, jobs, "none"), generate(fitted[names[0]], cfg, jobs, "pick-and-draw", palettes[names[0]])  # warm-up
    if a.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    runs: dict[str, list[float]] = {}
    store_root = None
    for _ in range(a.repeats):
        store_root = Path(tempfile.mkdtemp())
        store = TemplateStore(store_root)
        runs.setdefault("vanilla-sd/plain-unrecorded", []).append(timed(lambda: generate(fitted["vanilla-sd"], cfg, jobs, "none")))
        for m in names:
            f = fitted[m]
            runs.setdefault(f"{m}/plain", []).append(timed(lambda f=f, s=store: generate(f, cfg, jobs, "none", templates=s)))
            runs.setdefault(f"{m}/guided", []).append(timed(lambda f=f, m=m, s=store: generate(f, cfg, jobs, "pick-and-draw",
                                                                                                palettes[m], templates=s)))
            runs.setdefault(f"{m}/guided-own-template", []).append(timed(lambda f=f, m=m: generate(f, cfg, jobs, "pick-and-draw",
                                                                                                   palettes[m])))
    per = {k: statistics.median(v) / a.batch for k, v in runs.items()}
    print(f"arch={a.arch} device={a.device} dtype={a.dtype} batch={a.batch} steps={a.steps} guided steps={cfg.guidance.steps} "
          f"threads={torch.get_num_threads()} repeats={a.repeats}")
    print(f"{'method':<20} {'plain s/img':>11} {'guided':>8} {'ratio':>6} {'own template':>13} {'ratio':>6} {'inversion s':>12}")
    plain_total = guided_total = own_total = 0.0
    for m in names:
        plain = per["vanilla-sd/plain-unrecorded"] if m == "vanilla-sd" else per[f"{m}/plain"]
        g, own = per[f"{m}/guided"], per[f"{m}/guided-own-template"]
        plain_total, guided_total, own_total = plain_total + plain, guided_total + g, own_total + own
        print(f"{m:<20} {plain:>11.3f} {g:>8.3f} {g / plain:>6.2f} {own:>13.3f} {own / plain:>6.2f} {inversion[m]:>12.2f}")
    recording = max(per["vanilla-sd/plain"] - per["vanilla-sd/plain-unrecorded"], 0.0)  # what recording adds to vanilla's plain pass
    amortised = (guided_total + recording) / plain_total
    print(f"template recording adds {recording:.4f} s/image to vanilla's plain pass "
          f"({recording / per['vanilla-sd/plain-unrecorded']:.1%})")
    print(f"amortised guided/plain over {len(names)} methods = {amortised:.2f} (goal <= 1.85); "
          f"each method running its own template: {own_total / plain_total:.2f}")
    n = a.images_per_subject
    e2e = (n * (guided_total + recording) + sum(inversion.values())) / (n * plain_total)
    print(f"inversion adds {sum(inversion.values()) / len(names):.2f} s per subject and method; end-to-end with it, "
          f"{n} images per subject: {e2e:.2f}")
    sizes = [template_bytes(torch.load(f, weights_only=True)) for f in sorted(store_root.glob("*.pt"))]
    print(f"stored template per image: {max(sizes) / 1e6:.3f} MB")
    if a.device == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
