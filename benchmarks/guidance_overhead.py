"""Time per image with and without Pick-and-Draw guidance, and the ratio (goal <= 2.2 at the defaults).

Counting FLOPs a guided step costs ~3x a plain CFG step (forward with grad, backward, template
forward), so guiding half the steps has a floor near 2.0 when the palette is cached.

    OMP_NUM_THREADS=1 python benchmarks/guidance_overhead.py                 # embedded toy model, CPU
    python benchmarks/guidance_overhead.py --arch sd15 --device cuda         # SD1.5-shaped random UNet, 512 px
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


def sd15_shaped(out: Path) -> Path:
    """A randomly initialised pipeline with SD 1.5's UNet/VAE/text-encoder shapes (no weights needed)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from persobench.toyworld.tokenizer import build_tokenizer_files

    tok = CLIPTokenizer.from_pretrained(build_tokenizer_files(out / "tokenizer"))
    tok.model_max_length = 77
    te = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                      num_attention_heads=12, max_position_embeddings=77))
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4, sample_size=512)
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1)
    StableDiffusionPipeline(vae, te, tok, unet, sched, None, None, requires_safety_checker=False).save_pretrained(out)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--arch", choices=["toy", "sd15"], default="toy")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--batch", type=int, default=SamplerConfig().batch_size, help="default: sampler.batch_size's default")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    if a.arch == "sd15":
        source = str(sd15_shaped(Path(tempfile.mkdtemp()) / "sd15"))
    elif (EMBEDDED["toyworld"] / "model_index.json").exists():
        source = "toyworld"
    else:
        from persobench.toyworld.training.architectures import save_random_pipeline

        source = str(save_random_pipeline(Path(tempfile.mkdtemp()) / "sd", tiny=False))
    base = [f"model.source={source}", f"model.device={a.device}", f"model.dtype={a.dtype}", f"sampler.steps={a.steps}",
            "guidance.name=pick-and-draw"]
    cfg = load_config(None, base)
    from persobench.core.components import load_components
    from persobench.harness.guided import reference_palette

    c = load_components(cfg.model)
    subject = next(s for s in datasets.get("toybench")(DatasetConfig()).subjects if s.name == "ball1")
    fitted = methods.get("vanilla-sd")({}, c).fit(subject, Path(tempfile.mkdtemp()), 0)
    template = "a {0} {1} on the beach"
    jobs = [ImageJob("vanilla-sd", subject, 0, template, i, image_seed(0, "ball1", template, i), Path("unused")) for i in range(a.batch)]
    palette = reference_palette(fitted, cfg, "bench", Path(tempfile.mkdtemp()))  # inverted once, reused (as in a run)

    def timed(guidance: str) -> float:
        if a.device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        generate(fitted, cfg, jobs, guidance, palette)
        if a.device == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t) / a.batch

    timed("none"), timed("pick-and-draw")  # warm-up
    if a.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    plain, guided = [], []
    for _ in range(a.repeats):
        plain.append(timed("none"))
        guided.append(timed("pick-and-draw"))
    p_, g_ = statistics.median(plain), statistics.median(guided)
    print(f"arch={a.arch} device={a.device} dtype={a.dtype} batch={a.batch} steps={a.steps} guided steps={cfg.guidance.steps} "
          f"threads={torch.get_num_threads()}")
    print(f"plain   {p_:.3f} s/image")
    print(f"guided  {g_:.3f} s/image")
    print(f"ratio guided/plain = {g_ / p_:.2f}  (goal <= 2.2)")
    if a.device == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
