"""Harness sampling loop vs `StableDiffusionPipeline.__call__` on the same model and settings.

Prints seconds per batch for both and the ratio harness / diffusers (goal <= 1.00). Both decode to
uint8 images; both use the same latents, scheduler, steps and CFG.

    OMP_NUM_THREADS=1 python benchmarks/sampling_overhead.py [--model toyworld|PATH] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

from persobench.core.components import EMBEDDED, load_components
from persobench.core.config import ModelConfig
from persobench.core.sampling import Conditioning, decode, denoise, encode_text
from persobench.core.schedulers import build_scheduler
from persobench.core.seeding import initial_noise


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="toyworld")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    source = args.model
    if source == "toyworld" and not (EMBEDDED["toyworld"] / "model_index.json").exists():
        from persobench.toyworld.training.architectures import save_random_pipeline

        source = str(save_random_pipeline(Path(tempfile.mkdtemp()) / "sd", tiny=False))
        print("embedded model not trained yet: using a random model of the same architecture")
    c = load_components(ModelConfig(source=source, device="cpu"))
    pipe = StableDiffusionPipeline(c.vae, c.text_encoder, c.tokenizer, c.unet, build_scheduler("ddim", c.scheduler_config),
                                   None, None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    prompts = ["a red ball in the snow"] * args.batch
    res = c.latent_shape[1] * c.vae_scale

    def ours():
        text, empty = encode_text(c.tokenizer, c.text_encoder, prompts), encode_text(c.tokenizer, c.text_encoder, [""] * len(prompts))
        cond = Conditioning(text, empty)
        out = denoise(c.unet, build_scheduler("ddim", c.scheduler_config), initial_noise(list(range(args.batch)), c.latent_shape),
                      cond, args.steps, 5.0)
        return decode(c.vae, out)

    def theirs():
        return pipe(prompts, latents=initial_noise(list(range(args.batch)), c.latent_shape), num_inference_steps=args.steps,
                    guidance_scale=5.0, height=res, width=res, output_type="pil").images

    times: dict[str, list[float]] = {"harness": [], "diffusers": []}
    with torch.no_grad():
        ours(), theirs()  # warm-up
        for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits both alike
            for name, fn in (("harness", ours), ("diffusers", theirs)):
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
    h, d = statistics.median(times["harness"]), statistics.median(times["diffusers"])
    print(f"model={source} batch={args.batch} steps={args.steps} threads={torch.get_num_threads()}")
    print(f"harness   {h:.3f} s/batch (median of {args.repeats})")
    print(f"diffusers {d:.3f} s/batch (median of {args.repeats})")
    print(f"ratio harness/diffusers = {h / d:.3f}  (goal <= 1.00)")


if __name__ == "__main__":
    main()
