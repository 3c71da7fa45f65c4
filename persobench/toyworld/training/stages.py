"""The toy world's training stages by name: each is its training function (its loss and exports, run by
`loop.train`) and its config, full (what trained the shipped models) and smoke (the same code, tiny)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from .blip import train_blip
from .evaluators import EvaluatorConfig, train_clip, train_dino, train_oracle
from .loop import LoopConfig
from .t2i import T2iConfig, train_t2i
from .vae import DecoderConfig, VaeConfig, train_vae, train_vae_decoder

ORDER = ("vae", "t2i", "vae-decoder", "clip", "dino", "oracle", "blip")  # blip needs t2i and dino; vae-decoder keeps latents


@dataclasses.dataclass(frozen=True)
class StageSpec:
    train: Callable[[Path, Path, LoopConfig], Path]  # (out, work, config) -> the exported model folder
    full: LoopConfig
    smoke: LoopConfig


_EVAL_SMOKE = EvaluatorConfig(steps=20, n_images=128, batch_size=16, tiny=True, checkpoint_every=10)
STAGES: dict[str, StageSpec] = {
    "vae": StageSpec(train_vae, VaeConfig(), VaeConfig(steps=30, n_images=256, tiny=True, checkpoint_every=10)),
    "t2i": StageSpec(train_t2i, T2iConfig(), T2iConfig(steps=30, n_images=256, batch_size=8, tiny=True, checkpoint_every=10,
                                                       export_every=15, attention_loss_from=15)),
    "vae-decoder": StageSpec(train_vae_decoder, DecoderConfig(),
                             DecoderConfig(steps=20, wide_steps=10, polish_steps=4, n_images=256, tiny=True, checkpoint_every=10,
                                           export_every=10)),
    "clip": StageSpec(train_clip, EvaluatorConfig(steps=3000), _EVAL_SMOKE),
    "dino": StageSpec(train_dino, EvaluatorConfig(steps=2000), _EVAL_SMOKE),
    "oracle": StageSpec(train_oracle, EvaluatorConfig(steps=4000), _EVAL_SMOKE),  # 1,500 steps read secondary colours at 0.87
    "blip": StageSpec(train_blip, EvaluatorConfig(steps=1000, batch_size=16, lr=1e-3), _EVAL_SMOKE),
}
assert tuple(STAGES) == ORDER


def stage_config(name: str, smoke: bool = False, **overrides) -> LoopConfig:
    """A copy of stage `name`'s full (or smoke) config with `overrides` applied."""
    spec = STAGES[name]
    return dataclasses.replace(spec.smoke if smoke else spec.full, **overrides)


def run_stages(stage: str, out: Path, work: Path, smoke: bool = False, max_steps: int | None = None) -> None:
    """Run one stage, a comma list, or `all`; each resumes from its checkpoints under `<work>/<stage>/`.
    `max_steps` stops the t2i stage after that many steps this run (time-boxed sessions)."""
    names = ORDER if stage == "all" else tuple(stage.split(","))
    unknown = [n for n in names if n not in ORDER]
    if unknown:
        raise ValueError(f"unknown toy-world stage(s) {unknown}; choose from {', '.join(ORDER)} or all")
    for name in names:
        cfg = stage_config(name, smoke, **({"max_steps_this_run": max_steps} if name == "t2i" else {}))
        STAGES[name].train(out, work, cfg)
