"""The toy world's training stages by name, with their full and smoke configurations."""

from __future__ import annotations

from pathlib import Path

from .blip import train_blip
from .evaluators import EvaluatorConfig, train_clip, train_dino, train_oracle
from .t2i import T2iConfig, train_t2i
from .vae import DecoderConfig, VaeConfig, train_vae, train_vae_decoder

ORDER = ("vae", "t2i", "vae-decoder", "clip", "dino", "oracle", "blip")  # blip needs t2i and dino; vae-decoder keeps latents
EVALUATORS = {
    "clip": (train_clip, EvaluatorConfig(steps=3000)),
    "dino": (train_dino, EvaluatorConfig(steps=2000)),
    "oracle": (train_oracle, EvaluatorConfig(steps=4000)),  # 1,500 steps read secondary colours at 0.87
    "blip": (train_blip, EvaluatorConfig(steps=1000, batch_size=16, lr=1e-3)),
}


def run_stages(stage: str, out: Path, work: Path, smoke: bool = False, max_steps: int | None = None) -> None:
    """Run one stage, a comma list, or `all`; each resumes from `<work>/<stage>.ckpt`."""
    names = ORDER if stage == "all" else tuple(stage.split(","))
    unknown = [n for n in names if n not in ORDER]
    if unknown:
        raise ValueError(f"unknown toy-world stage(s) {unknown}; choose from {', '.join(ORDER)} or all")
    for name in names:
        if name == "vae":
            cfg = VaeConfig(steps=30, n_images=256, tiny=True, checkpoint_every=10) if smoke else VaeConfig()
            train_vae(out, work, cfg)
        elif name == "vae-decoder":
            smoke_cfg = DecoderConfig(steps=20, wide_steps=10, polish_steps=4, n_images=256, tiny=True, checkpoint_every=10,
                                     export_every=10)
            train_vae_decoder(out, work, smoke_cfg if smoke else DecoderConfig())
        elif name == "t2i":
            cfg = T2iConfig(steps=30, n_images=256, batch_size=8, tiny=True, checkpoint_every=10, export_every=15,
                            attention_loss_from=15) if smoke else T2iConfig()
            cfg.max_steps_this_run = max_steps
            train_t2i(out, work, cfg)
        else:
            train, full = EVALUATORS[name]
            smoke_cfg = EvaluatorConfig(steps=20, n_images=128, batch_size=16, tiny=True, checkpoint_every=10)
            train(out, work, smoke_cfg if smoke else full)
