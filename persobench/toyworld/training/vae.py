"""Stage `vae`: an AutoencoderKL for 64 px toy images (64x64x3 -> 16x16x4).

The prototype found toy latents far from zero mean / unit variance; SD's pipeline only rescales by
one `scaling_factor`, so the per-channel shift and scale are folded into the VAE's 1x1 `quant_conv`
and `post_quant_conv`: the saved VAE emits standardised latents and the stock pipeline decodes them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F

from .architectures import make_vae
from .common import TRAIN_SEED_BASE, atomic_torch_save, batch_indices, rendered_set, to_tensor
from .loop import LoopConfig, Stage, cosine_schedule, done_steps, train


@dataclasses.dataclass
class VaeConfig(LoopConfig):
    steps: int = 2000
    batch_size: int = 16
    lr: float = 1e-3
    n_images: int = 20000
    kl_weight: float = 1e-6
    checkpoint_every: int = 250
    seed: int = 0  # model init and data order


@torch.no_grad()
def fold_latent_normalisation(vae: torch.nn.Module, latents_mean: torch.Tensor, latents_std: torch.Tensor) -> None:
    """Make the encoder emit (z - mean) / std and the decoder accept it, by editing the 1x1 convs."""
    c = latents_mean.numel()
    qc = vae.quant_conv  # outputs [mean (c), logvar (c)]
    w, b = qc.weight.data, qc.bias.data
    w[:c] /= latents_std.view(-1, 1, 1, 1)
    b[:c] = (b[:c] - latents_mean) / latents_std
    b[c:] -= 2 * torch.log(latents_std)
    pq = vae.post_quant_conv  # input z = z' * std + mean
    pq.bias.data += (pq.weight.data[:, :, 0, 0] @ latents_mean)
    pq.weight.data *= latents_std.view(1, -1, 1, 1)


def train_vae(out: Path, work: Path, cfg: VaeConfig) -> Path:
    torch.manual_seed(cfg.seed)
    _, images, _ = rendered_set(cfg.n_images, TRAIN_SEED_BASE, work / "cache")
    vae = make_vae(cfg.tiny)

    def loss(step: int, idx) -> tuple[torch.Tensor, dict]:
        x = to_tensor(images[idx])
        dist = vae.encode(x).latent_dist
        rec = vae.decode(dist.sample()).sample  # sample(): the global torch RNG, restored on resume
        mse = F.mse_loss(rec, x)
        psnr = 10 * torch.log10(4.0 / mse.detach())  # range [-1,1] -> peak-to-peak 2
        return mse + F.l1_loss(rec, x) + cfg.kl_weight * dist.kl().mean(), {"psnr": psnr}

    train(Stage("vae", cfg, {"model": vae}, lambda step: batch_indices(len(images), cfg.batch_size, cfg.seed, step), loss),
          work)
    return export_vae(vae, images, out)


@torch.no_grad()
def export_vae(vae: torch.nn.Module, images, out: Path) -> Path:
    vae.eval()
    sample = to_tensor(images[:2000])
    means = torch.cat([vae.encode(sample[i : i + 200]).latent_dist.mean for i in range(0, len(sample), 200)])
    fold_latent_normalisation(vae, means.mean(dim=(0, 2, 3)), means.std(dim=(0, 2, 3)))
    target = out / "sd" / "vae"
    vae.save_pretrained(target)
    return target


@dataclasses.dataclass
class DecoderConfig(LoopConfig):
    steps: int = 6000  # phase 1: fine-tune the decoder at the encoder's width
    wide_steps: int = 9000  # phase 2: widen every channel x2 (function-preserving), fine-tune again
    polish_steps: int = 3000  # phase 3: MSE alone (PSNR's own loss) at a low constant rate
    polish_lr: float = 3e-5
    batch_size: int = 16
    lr: float = 3e-4
    n_images: int = 20000
    checkpoint_every: int = 250
    export_every: int = 1000
    seed: int = 1  # data order and the widening's symmetry-breaking noise


@torch.no_grad()
def widen_vae(vae, noise: float = 0.01, seed: int = 0):
    """A copy of `vae` with every hidden channel doubled that computes the same function (Net2Net).

    Channel k of the wide model copies channel k // 2, and a layer reading a doubled input splits each
    weight between the two copies; GroupNorm groups hold whole copies, so their statistics are
    unchanged. The encoder therefore emits the same latents (the t2i model stays valid) while the
    decoder gets 4x the capacity; `noise` (relative to each decoder tensor's std) breaks the copies'
    symmetry so they can diverge when trained.
    """
    from diffusers import AutoencoderKL

    config = dict(vae.config)
    config["block_out_channels"] = [2 * c for c in config["block_out_channels"]]
    wide = AutoencoderKL.from_config(config)
    old = vae.state_dict()
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, target in wide.state_dict().items():
        w = old[key]
        for dim in range(w.dim()):
            if target.shape[dim] == 2 * w.shape[dim]:
                w = w.repeat_interleave(2, dim=dim) / (2 if dim == 1 else 1)  # dim 1: a widened input
            elif target.shape[dim] != w.shape[dim]:
                raise ValueError(f"cannot widen {key}: {tuple(w.shape)} -> {tuple(target.shape)}")
        if key.startswith("decoder.") and noise and w.dtype.is_floating_point and w.numel() > 1:
            w = w + noise * w.std() * torch.randn(w.shape, generator=gen)
        state[key] = w
    wide.load_state_dict(state)
    return wide


@torch.no_grad()
def _latent_means(vae, images, cache: Path, pin: Path | None = None) -> torch.Tensor:
    """fp32 latent means of the training images under the frozen encoder (computed once, cached under
    the encoder's weights, so a retrained `vae` stage never meets stale latents). `pin` records which cache
    file a run trains on: a resumed run reads the same latents even where its VAE folder now holds the
    widened encoder (equal outputs to ~1e-6, not bit-equal)."""
    import hashlib

    if pin is not None and pin.is_file() and (cache / pin.read_text().strip()).is_file():
        return torch.load(cache / pin.read_text().strip(), weights_only=True)
    digest = hashlib.sha256()
    for k, v in vae.state_dict().items():
        if k.startswith(("encoder.", "quant_conv.")):
            digest.update(k.encode() + v.cpu().numpy().tobytes())
    path = cache / f"decoder-latents-{len(images)}-{digest.hexdigest()[:12]}.pt"
    if path.exists():
        lat = torch.load(path, weights_only=True)
    else:
        vae.eval()
        lat = torch.cat([vae.encode(to_tensor(images[i : i + 200])).latent_dist.mean for i in range(0, len(images), 200)])
        atomic_torch_save(lat, path)
    if pin is not None:
        pin.parent.mkdir(parents=True, exist_ok=True)
        pin.write_text(path.name + "\n")
    return lat


def train_vae_decoder(out: Path, work: Path, cfg: DecoderConfig) -> Path:
    """Stage `vae-decoder`: fine-tune only the decoder (and post_quant_conv) of the shipped VAE on its
    own encoder's latent means. The latent space, and so the t2i model trained on it, is unchanged
    (SD's ft-MSE decoder did the same). The 2,000-step VAE stage alone stopped at ~24.7 dB and phase 1
    (6,000 steps at the encoder's 16/32/64 width) at 26.5 dB, so phase 2 doubles the width with
    `widen_vae` (the encoder's output is unchanged) and trains the wider decoder (27.86 dB); phase 3
    polishes it on MSE alone (27.96 dB after 1,500 steps, 28.02 after 3,000; a 300-step probe gave
    +0.085 dB on MSE alone vs +0.04 dB with L1 kept).

    Two runs of the training loop, one data order (batch indices from (seed, global step)): `narrow`
    (phase 1, checkpoints in <work>/vae-decoder/narrow; a cosine over its 6,000 steps) and `wide` (phases 2
    and 3, <work>/vae-decoder/wide, starting from the widened phase-1 result: a cosine over 9,000 steps,
    then `polish_lr` constant with the same optimizer, as before)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(cfg.seed)
    target = out / "sd" / "vae"
    vae = AutoencoderKL.from_pretrained(target)
    base = list(make_vae(cfg.tiny).config.block_out_channels)
    started, wide_done = done_steps(work, "vae-decoder/narrow") > 0, done_steps(work, "vae-decoder/wide") > 0
    if list(vae.config.block_out_channels) != base and not wide_done:
        raise ValueError(f"{target} already holds a widened decoder; run the `vae` stage first, or pass the --work "
                         "folder that holds vae-decoder/ (its checkpoints) to resume")
    _, images, _ = rendered_set(cfg.n_images, TRAIN_SEED_BASE, work / "cache")
    pin = work / "vae-decoder" / "latents"
    if not (started or wide_done) and pin.is_file():
        pin.unlink()  # a fresh run: the VAE stage may have been retrained
    latents = _latent_means(vae, images, work / "cache", pin)
    polish_from = cfg.steps + cfg.wide_steps

    budget = [cfg.max_steps_this_run]  # steps left for this call, across both runs (None: no limit)

    def run(model, folder: str, first: int, steps: int, schedule=None) -> bool:
        """Train one run; True when it reached its last step."""
        model.encoder.requires_grad_(False)
        model.quant_conv.requires_grad_(False)

        def loss(step: int, idx) -> tuple[torch.Tensor, dict]:
            rec = model.decode(latents[torch.from_numpy(idx)]).sample
            x = to_tensor(images[idx])
            mse = F.mse_loss(rec, x)
            psnr = 10 * torch.log10(4.0 / mse.detach())
            return (mse if step >= polish_from else mse + F.l1_loss(rec, x)), {"psnr": psnr}  # L1 sharpens early

        def export(step: int, last: bool, state) -> None:
            if step % cfg.export_every == 0 and step != polish_from + cfg.polish_steps:
                _export(model, target)
                model.train()

        phase = dataclasses.replace(cfg, steps=steps, max_steps_this_run=budget[0])
        before = done_steps(work, f"vae-decoder/{folder}")
        done = train(Stage("vae-decoder", phase, {"model": model}, lambda step: batch_indices(len(images), cfg.batch_size, cfg.seed, step),
                           loss, params=list(model.decoder.parameters()) + list(model.post_quant_conv.parameters()),
                           schedule=schedule, after_step=export, first_step=first, folder=f"vae-decoder/{folder}",
                           legacy_keys=None), work).step  # an old vae-decoder.ckpt (none committed) held both phases
        if budget[0] is not None:
            budget[0] -= done - max(before, first)
        return done == first + steps

    if not wide_done and (not run(vae, "narrow", 0, cfg.steps) or budget[0] == 0):
        _export(vae, target)  # stopped early (max_steps_this_run): the narrow decoder; the next call resumes
        return target
    if list(vae.config.block_out_channels) == base:
        vae = widen_vae(vae, noise=0.0 if wide_done else 0.01, seed=cfg.seed)  # with a checkpoint: the structure only

    def wide_schedule(opt):  # phase 2's cosine, then phase 3's constant rate (the old loop kept Adam's moments)
        cosine = cosine_schedule(opt, cfg.warmup, cfg.wide_steps, cfg.lr_floor).lr_lambdas[0]
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine(s) if s < cfg.wide_steps else cfg.polish_lr / cfg.lr)

    run(vae, "wide", cfg.steps, cfg.wide_steps + cfg.polish_steps, wide_schedule)
    _export(vae, target)  # also when a finished checkpoint meets a stale folder
    return target


def _export(vae, target: Path) -> None:
    vae.eval()
    tmp = target.with_name("vae.saving")
    vae.save_pretrained(tmp)  # then swap in, so a reader never sees half a folder
    for f in tmp.iterdir():
        f.replace(target / f.name)
    tmp.rmdir()
