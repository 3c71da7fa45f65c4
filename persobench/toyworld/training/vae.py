"""Stage `vae`: an AutoencoderKL for 64 px toy images (64x64x3 -> 16x16x4).

The prototype found toy latents far from zero mean / unit variance; SD's pipeline only rescales by
one `scaling_factor`, so the per-channel shift and scale are folded into the VAE's 1x1 `quant_conv`
and `post_quant_conv`: the saved VAE emits standardised latents and the stock pipeline decodes them.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .architectures import make_vae
from .common import TRAIN_SEED_BASE, LossLog, atomic_torch_save, batches, cosine_lr, progress, rendered_set, to_tensor


@dataclasses.dataclass
class VaeConfig:
    steps: int = 2000
    batch_size: int = 16
    lr: float = 1e-3
    n_images: int = 20000
    kl_weight: float = 1e-6
    checkpoint_every: int = 250
    seed: int = 0
    tiny: bool = False


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
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=0.0)
    ckpt_path, start = work / "vae.ckpt", 0
    if ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=True)
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = state["step"]
    log, started = LossLog(work / "vae.loss.jsonl"), time.time()
    vae.train()
    for step, idx in batches(len(images), cfg.batch_size, cfg.seed, start):
        if step >= cfg.steps:
            break
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, cfg.steps, cfg.lr)
        x = to_tensor(images[idx])
        dist = vae.encode(x).latent_dist
        z = dist.sample()
        rec = vae.decode(z).sample
        mse = F.mse_loss(rec, x)
        loss = mse + F.l1_loss(rec, x) + cfg.kl_weight * dist.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 50 == 0:
            psnr = 10 * torch.log10(4.0 / mse.detach()).item()  # range [-1,1] -> peak-to-peak 2
            log.write(step=step + 1, loss=loss.item(), psnr=psnr)
            progress("vae", step, cfg.steps, loss.item(), started, start)
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            atomic_torch_save({"model": vae.state_dict(), "opt": opt.state_dict(), "step": step + 1}, ckpt_path)
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
class DecoderConfig:
    steps: int = 6000  # phase 1: fine-tune the decoder at the encoder's width
    wide_steps: int = 9000  # phase 2: widen every channel x2 (function-preserving), fine-tune again
    polish_steps: int = 3000  # phase 3: MSE alone (PSNR's own loss) at a low constant rate
    polish_lr: float = 3e-5
    batch_size: int = 16
    lr: float = 3e-4
    n_images: int = 20000
    checkpoint_every: int = 250
    export_every: int = 1000
    seed: int = 1
    tiny: bool = False


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
def _latent_means(vae, images, cache: Path) -> torch.Tensor:
    """fp32 latent means of the training images under the frozen encoder (computed once, cached under
    the encoder's weights, so a retrained `vae` stage never meets stale latents)."""
    import hashlib

    digest = hashlib.sha256()
    for k, v in vae.state_dict().items():
        if k.startswith(("encoder.", "quant_conv.")):
            digest.update(k.encode() + v.cpu().numpy().tobytes())
    path = cache / f"decoder-latents-{len(images)}-{digest.hexdigest()[:12]}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    vae.eval()
    lat = torch.cat([vae.encode(to_tensor(images[i : i + 200])).latent_dist.mean for i in range(0, len(images), 200)])
    atomic_torch_save(lat, path)
    return lat


def train_vae_decoder(out: Path, work: Path, cfg: DecoderConfig) -> Path:
    """Stage `vae-decoder`: fine-tune only the decoder (and post_quant_conv) of the shipped VAE on its
    own encoder's latent means. The latent space, and so the t2i model trained on it, is unchanged
    (SD's ft-MSE decoder did the same). The 2,000-step VAE stage alone stopped at ~24.7 dB and phase 1
    (6,000 steps at the encoder's 16/32/64 width) at 26.5 dB, so phase 2 doubles the width with
    `widen_vae` (the encoder's output is unchanged) and trains the wider decoder (27.86 dB); phase 3
    polishes it on MSE alone (27.96 dB after 1,500 steps, 28.02 after 3,000; a 300-step probe gave
    +0.085 dB on MSE alone vs +0.04 dB with L1 kept)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(cfg.seed)
    target = out / "sd" / "vae"
    vae = AutoencoderKL.from_pretrained(target)
    base = list(make_vae(cfg.tiny).config.block_out_channels)
    ckpt_path, start, state = work / "vae-decoder.ckpt", 0, None
    if ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=True)
        if state.get("wide") and list(vae.config.block_out_channels) == base:
            vae = widen_vae(vae, noise=0.0)  # the structure; the weights come from the checkpoint
        vae.load_state_dict(state["model"])
        start = state["step"]
    elif list(vae.config.block_out_channels) != base:
        raise ValueError(f"{target} already holds a widened decoder; run the `vae` stage first, or pass the --work "
                         "folder that holds vae-decoder.ckpt to resume")
    wide = list(vae.config.block_out_channels) != base
    _, images, _ = rendered_set(cfg.n_images, TRAIN_SEED_BASE, work / "cache")
    latents = _latent_means(vae, images, work / "cache")

    def optimiser(module):
        module.encoder.requires_grad_(False)
        module.quant_conv.requires_grad_(False)
        trainable = list(module.decoder.parameters()) + list(module.post_quant_conv.parameters())
        return torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=0.0)

    opt = optimiser(vae)
    if state is not None and "opt" in state:
        opt.load_state_dict(state["opt"])
    total, polish_from = cfg.steps + cfg.wide_steps + cfg.polish_steps, cfg.steps + cfg.wide_steps
    log, started = LossLog(work / "vae-decoder.loss.jsonl"), time.time()
    vae.train()
    for step, idx in batches(len(images), cfg.batch_size, cfg.seed, start):
        if step >= total:
            break
        if step >= cfg.steps and not wide:
            vae, wide = widen_vae(vae, seed=cfg.seed), True
            vae.train()
            opt = optimiser(vae)
        phase_step, phase_len = (step - cfg.steps, cfg.wide_steps) if wide else (step, cfg.steps)
        polish = step >= polish_from
        for g in opt.param_groups:
            g["lr"] = cfg.polish_lr if polish else cosine_lr(phase_step, phase_len, cfg.lr)
        x = to_tensor(images[idx])
        rec = vae.decode(latents[torch.from_numpy(idx)]).sample
        mse = F.mse_loss(rec, x)
        loss = mse if polish else mse + F.l1_loss(rec, x)  # L1 sharpens early; the bar is PSNR, i.e. MSE
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 50 == 0:
            log.write(step=step + 1, loss=loss.item(), psnr=10 * torch.log10(4.0 / mse.detach()).item())
            progress("vae-decoder", step, total, loss.item(), started, start)
        done = step + 1 == total
        if (step + 1) % cfg.checkpoint_every == 0 or done or step + 1 == cfg.steps:
            saved = {"model": vae.state_dict(), "opt": opt.state_dict(), "step": step + 1, "wide": wide}
            atomic_torch_save(saved, ckpt_path)
        if (step + 1) % cfg.export_every == 0 and not done:
            _export(vae, target)
            vae.train()
    _export(vae, target)  # also when a finished checkpoint meets a stale folder
    return target


def _export(vae, target: Path) -> None:
    vae.eval()
    tmp = target.with_name("vae.saving")
    vae.save_pretrained(tmp)  # then swap in, so a reader never sees half a folder
    for f in tmp.iterdir():
        f.replace(target / f.name)
    tmp.rmdir()
