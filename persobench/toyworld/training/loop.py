"""The one resumable training loop of the toy world's stages, on accelerate / diffusers primitives.

A stage is its config (a `LoopConfig`: steps, batch, lr, warmup, EMA decay, seed, ...) and a `Stage`: the
modules it trains, its `batch(step)` and `loss(step, batch)` functions, and optional hooks (exports). `train`
runs it: AdamW, diffusers' cosine schedule with warmup, diffusers' `EMAModel` for the modules that keep one,
and `Accelerator.save_state` / `load_state` checkpoints under `<work>/<folder>/checkpoint-<step>` that a
killed run resumes from (model, EMA, optimizer, scheduler and RNG states), so an interrupted run reaches
the same weights as an uninterrupted one. Batches depend only on (seed, step), as before.

Modelled on diffusers' examples/text_to_image/train_text_to_image.py (huggingface/diffusers, read at commit
000280f56a6a81e355313e77ec831575ad571d8b): `EMAModel(unet.parameters(), ...)` stepped after each optimizer
step and copied into the exported model (`ema_unet.copy_to`), `get_scheduler(...)` stepped with the
optimizer, `accelerator.save_state(f"{output_dir}/checkpoint-{global_step}")` every `checkpointing_steps`
with `checkpoints_total_limit` pruning, and `resume_from_checkpoint="latest"`: the checkpoint with the
highest step, `accelerator.load_state(path)`, `global_step = int(path.split("-")[1])`. Differences: the EMA is
registered with `accelerator.register_for_checkpointing` (EMAModel has `state_dict` / `load_state_dict`)
instead of the script's save/load hooks; a checkpoint is written to `checkpoint-<step>.tmp` and renamed, so a
kill mid-save leaves the previous one intact; the toy world trains on the CPU (`Accelerator(cpu=True)`).

What differs numerically from the hand-written loops that trained the SHIPPED checkpoints (stages.py's
`ORDER`: vae, t2i, vae-decoder, clip, dino, oracle, blip; `persobench/assets/toyworld/` was not retrained with
this loop, so its weights came from the previous loops, with these differences):
- LR warmup: diffusers' `get_cosine_schedule_with_warmup` runs warmup step s at s / warmup of the peak; the
  old `cosine_lr` ran it at (s + 1) / warmup. Step 0 now has lr 0 (Adam's moments still take its gradient)
  and each of the first `warmup` (200) steps runs 1/200 of the peak lower. After the warmup the schedules
  are equal: diffusers' half cosine, lifted here to end at `lr_floor` (0.1) of the peak as the old one did
  (diffusers' own ends at 0) and held there past the horizon (the old `min(1, t)`).
- EMA (t2i only, decay 0.999): diffusers' `EMAModel` (no `use_ema_warmup`) uses decay
  min(0.999, (1 + n) / (10 + n)) at its n-th update after the first, and its first update copies the weights
  (decay 0); the old `Ema` used 0.999 from the first step on, starting from the random initial weights. So
  the new average forgets the initialisation at once instead of over ~1,000 steps (0.999^k), and weights
  the first ~9,000 steps' weights less. From the 8,991st update on ((1 + n) / (10 + n) >= 0.999) the two
  update rules agree; what differs after that is only what each kept of those early weights (the old
  average still held 0.999^20000 ~ 2e-9 of the random init in the shipped 20,000-step UNet). EMAModel
  averages parameters only, not buffers (the toy UNet and text encoder have no floating-point buffers).
- Resume: the old loops re-seeded the global torch RNG on restart, so a resumed `vae` stage (its
  `latent_dist.sample()` draws from it) differed from an uninterrupted run; `load_state` restores the RNG
  states, so a resumed run now equals an uninterrupted one. The vae-decoder stage pins the latents it
  trains on (`<work>/vae-decoder/latents`); the old one re-encoded them with the widened encoder after a
  resume in phases 2-3 (equal to ~1e-6, not bit-equal). The old checkpoint was `<work>/<stage>.ckpt`;
  `train` still resumes from one (the committed `training/toyworld/t2i.ckpt`) when no new checkpoint exists.
- Loss logs: every stage's lines now carry the step's `lr` (only t2i's did); a resumed run drops the lines a
  killed run wrote past its last checkpoint instead of appending them twice.
- vae-decoder: its three phases are two runs of this loop (narrow; widened + polish), see vae.py; the
  schedule per phase is as before.
Unchanged: every hyperparameter (steps, batch, lr, weight decay, warmup 200, floor 0.1, EMA decay, grad-norm
clip, seeds), the data order (batch indices from (seed, step)), the per-step noise / timestep / augmentation
generators, AdamW, and the loss functions.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from .common import LossLog, progress


@dataclasses.dataclass
class LoopConfig:
    """What the loop reads from every stage's config (a stage's dataclass adds its own fields and defaults)."""

    steps: int = 1000  # the schedule's horizon and the last step
    batch_size: int = 64
    lr: float = 5e-4
    warmup: int = 200  # linear warmup steps (diffusers' get_cosine_schedule_with_warmup)
    lr_floor: float = 0.1  # the cosine ends at lr_floor x lr (0: diffusers' schedule unchanged, ending at 0)
    weight_decay: float = 0.0  # AdamW
    ema_decay: float | None = None  # diffusers EMAModel over Stage.ema modules (None: no EMA)
    grad_clip: float | None = None  # max grad norm (None: no clipping)
    n_images: int = 20000
    seed: int = 0
    checkpoint_every: int = 250
    checkpoints_total_limit: int = 1  # complete checkpoints kept (each is written under a temporary name first)
    log_every: int = 50
    tiny: bool = False
    max_steps_this_run: int | None = None  # stop early (smoke runs, time-boxed sessions, tests); resumable


@dataclasses.dataclass
class Stage:
    """One run of the loop: what a stage trains and how it computes a batch and its loss."""

    name: str  # log `<work>/<name>.loss.jsonl`, progress lines `[<name>] step ...`
    cfg: LoopConfig
    modules: dict[str, torch.nn.Module]  # checkpointed, put in train mode
    batch: Callable[[int], Any]  # global step -> the step's batch (a function of (seed, step) only)
    loss: Callable[[int, Any], Any]  # (global step, batch) -> loss, or (loss, {extra log fields})
    params: list[torch.nn.Parameter] | None = None  # optimised (default: every parameter of `modules`)
    ema: tuple[str, ...] = ()  # modules that keep an EMA (needs cfg.ema_decay)
    schedule: Callable[[torch.optim.Optimizer], LambdaLR] | None = None  # default: cosine_schedule(cfg)
    after_step: Callable[[int, bool, Trained], None] | None = None  # (global steps done, last of this run, state): exports
    first_step: int = 0  # global step of this run's step 0 (a later phase of a stage): data and logs
    folder: str | None = None  # checkpoints under <work>/<folder> (default: name)
    legacy_keys: dict[str, str] | None = dataclasses.field(default_factory=dict)  # old <name>.ckpt key renames (None: no import)


@dataclasses.dataclass
class Trained:
    step: int  # global steps done
    modules: dict[str, torch.nn.Module]
    ema: dict[str, Any]  # module name -> diffusers EMAModel

    def ema_copy(self, name: str) -> torch.nn.Module:
        """A copy of module `name` holding its EMA weights (what the stage ships)."""
        module = copy.deepcopy(self.modules[name])
        self.ema[name].copy_to(module.parameters())
        return module


def cosine_schedule(optimizer: torch.optim.Optimizer, warmup: int, horizon: int, floor: float = 0.1) -> LambdaLR:
    """diffusers' `get_cosine_schedule_with_warmup`, its decay lifted to end at `floor` x the peak and held
    there past `horizon` (the previous loop's shape; see the module docstring for the warmup's difference)."""
    from diffusers.optimization import get_cosine_schedule_with_warmup

    shape = get_cosine_schedule_with_warmup(optimizer, warmup, horizon).lr_lambdas[0]

    def lr_lambda(step: int) -> float:
        if step < warmup:
            return shape(step)
        return floor + (1 - floor) * shape(min(step, horizon))

    return LambdaLR(optimizer, lr_lambda)


def checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in `folder`, oldest first (diffusers' `checkpoint-<step>` naming)."""
    if not folder.is_dir():
        return []
    found = [(int(p.name.split("-")[1]), p) for p in folder.iterdir()
             if p.is_dir() and p.name.startswith("checkpoint-") and p.name.split("-")[1].isdigit()]
    return sorted(found)


def done_steps(work: Path, folder: str) -> int:
    """Global steps of the latest checkpoint in `<work>/<folder>` (0 if none)."""
    found = checkpoints(work / folder)
    return found[-1][0] if found else 0


def train(stage: Stage, work: Path) -> Trained:
    """Run `stage` from its latest checkpoint (or its old `<work>/<name>.ckpt`) to `cfg.steps`, or
    `cfg.max_steps_this_run` steps further; checkpoint every `cfg.checkpoint_every` steps and at the end."""
    from accelerate import Accelerator
    from diffusers.training_utils import EMAModel

    cfg = stage.cfg
    folder = work / (stage.folder or stage.name)
    params = stage.params if stage.params is not None else [p for m in stage.modules.values() for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = stage.schedule(opt) if stage.schedule else cosine_schedule(opt, cfg.warmup, cfg.steps, cfg.lr_floor)
    if stage.ema and cfg.ema_decay is None:
        raise ValueError(f"stage {stage.name} keeps an EMA of {stage.ema} but its config sets no ema_decay")
    emas = {k: EMAModel(stage.modules[k].parameters(), decay=cfg.ema_decay) for k in stage.ema}

    accelerator = Accelerator(cpu=True)
    prepared = accelerator.prepare(*stage.modules.values(), opt, sched)
    modules_out, opt, sched = prepared[:-2], prepared[-2], prepared[-1]
    if any(a is not b for a, b in zip(modules_out, stage.modules.values())):  # the loss closures hold the modules
        raise RuntimeError("accelerate wrapped a module; the toy-world loop trains on one CPU process")
    accelerator.register_for_checkpointing(*emas.values())

    start = 0
    found = checkpoints(folder)
    if found:
        start, path = found[-1][0] - stage.first_step, found[-1][1]  # checkpoint names hold global steps
        accelerator.load_state(str(path))
    elif stage.legacy_keys is not None and (work / f"{stage.name}.ckpt").is_file():
        start = _import_legacy(work / f"{stage.name}.ckpt", stage, opt, sched, emas)
    start_global, end_global = stage.first_step + start, stage.first_step + cfg.steps
    stop = cfg.steps if cfg.max_steps_this_run is None else min(cfg.steps, start + cfg.max_steps_this_run)
    log = LossLog(work / f"{stage.name}.loss.jsonl")
    if start < stop:
        _truncate_log(log.path, after=start_global, upto=end_global)  # a killed run's lines past its checkpoint
    for m in stage.modules.values():
        m.train()
    started = time.time()
    for local in range(start, stop):
        step = stage.first_step + local
        out = stage.loss(step, stage.batch(step))
        loss, fields = out if isinstance(out, tuple) else (out, {})
        lr = opt.param_groups[0]["lr"]
        accelerator.backward(loss)
        if cfg.grad_clip is not None:
            accelerator.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        for k, ema in emas.items():
            ema.step(stage.modules[k].parameters())
        if (local + 1) % cfg.log_every == 0:
            record = {"step": step + 1, "loss": float(loss.detach()), "lr": lr}
            record.update({k: float(v.detach()) if isinstance(v, torch.Tensor) else v for k, v in fields.items()})
            log.write(**record)
            progress(stage.name, step, end_global, record["loss"], started, start_global)
        last = local + 1 == stop
        if (local + 1) % cfg.checkpoint_every == 0 or last:
            _save(accelerator, folder, step + 1, cfg.checkpoints_total_limit)
        if stage.after_step:
            stage.after_step(step + 1, last, Trained(step + 1, stage.modules, emas))
    for m in stage.modules.values():
        m.eval()
    return Trained(step=stage.first_step + max(start, stop), modules=stage.modules, ema=emas)


def _save(accelerator, folder: Path, step: int, keep: int) -> None:
    """accelerator.save_state into checkpoint-<step>.tmp, renamed when complete; older ones pruned to `keep`."""
    folder.mkdir(parents=True, exist_ok=True)
    final, tmp = folder / f"checkpoint-{step}", folder / f"checkpoint-{step}.tmp"
    for stale in [final, *folder.glob("checkpoint-*.tmp")]:  # a save killed half-way, or a step saved again
        if stale.exists():
            shutil.rmtree(stale)
    accelerator.save_state(str(tmp))
    os.replace(tmp, final)
    for _, old in checkpoints(folder)[: -max(1, keep)]:
        shutil.rmtree(old)


def _truncate_log(path: Path, after: int, upto: int) -> None:
    """Drop the lines of steps in (after, upto]: written after the checkpoint a resumed run starts from; and a
    partial line a kill left mid-write."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines()
    kept = [line for line in lines if (step := _logged_step(line)) is not None and not after < step <= upto]
    if len(kept) != len(lines):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, path)


def _logged_step(line: str) -> int | None:
    try:
        return json.loads(line).get("step", 0)
    except json.JSONDecodeError:
        return None


def _import_legacy(path: Path, stage: Stage, opt, sched, emas: dict[str, Any]) -> int:
    """Resume from the previous loops' `<work>/<name>.ckpt` ({module: state, ema_<module>: state, opt, step});
    its optimizer moments are optional (the committed t2i.ckpt omits them)."""
    state = torch.load(path, weights_only=True)
    key = stage.legacy_keys.get
    for name, module in stage.modules.items():
        module.load_state_dict(state[key(name, name)])
    for name, ema in emas.items():
        shadow = state[key(f"ema_{name}", f"ema_{name}")]
        ema.shadow_params = [shadow[k].detach().clone().float() for k, _ in stage.modules[name].named_parameters()]
        ema.optimization_step = int(state["step"])
    if "opt" in state:
        opt.load_state_dict(state["opt"])
    with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()": positioning, not training
        warnings.simplefilter("ignore", UserWarning)
        sched.scheduler.last_epoch = int(state["step"]) - 1
        sched.scheduler.step()
    return int(state["step"])
