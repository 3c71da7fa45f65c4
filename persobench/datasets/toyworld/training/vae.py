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
    steps: int = 6000
    batch_size: int = 16
    lr: float = 3e-4
    n_images: int = 20000
    checkpoint_every: int = 250
    seed: int = 1
    tiny: bool = False


def train_vae_decoder(out: Path, work: Path, cfg: DecoderConfig) -> Path:
    """Stage `vae-decoder`: fine-tune only the decoder (and post_quant_conv) of the shipped VAE on its
    own encoder's latent means. The latent space, and so the t2i model trained on it, is unchanged
    (SD's ft-MSE decoder did the same); the 2,000-step VAE stage alone stopped at ~24.7 dB."""
    from diffusers import AutoencoderKL

    torch.manual_seed(cfg.seed)
    target = out / "sd" / "vae"
    vae = AutoencoderKL.from_pretrained(target)
    ckpt_path, start = work / "vae-decoder.ckpt", 0
    trainable = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=0.0)
    if ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=True)
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = state["step"]
    _, images, _ = rendered_set(cfg.n_images, TRAIN_SEED_BASE, work / "cache")
    log, started = LossLog(work / "vae-decoder.loss.jsonl"), time.time()
    vae.encoder.requires_grad_(False)
    vae.quant_conv.requires_grad_(False)
    vae.train()
    for step, idx in batches(len(images), cfg.batch_size, cfg.seed, start):
        if step >= cfg.steps:
            break
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, cfg.steps, cfg.lr)
        x = to_tensor(images[idx])
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mean
        rec = vae.decode(z).sample
        mse = F.mse_loss(rec, x)
        loss = mse + F.l1_loss(rec, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 50 == 0:
            log.write(step=step + 1, loss=loss.item(), psnr=10 * torch.log10(4.0 / mse.detach()).item())
            progress("vae-decoder", step, cfg.steps, loss.item(), started, start)
        done = step + 1 == cfg.steps
        if (step + 1) % cfg.checkpoint_every == 0 or done:
            atomic_torch_save({"model": vae.state_dict(), "opt": opt.state_dict(), "step": step + 1}, ckpt_path)
        if (step + 1) % 1000 == 0 or done:
            vae.eval()
            tmp = target.with_name("vae.saving")
            vae.save_pretrained(tmp)  # then swap in, so a reader never sees half a folder
            for f in tmp.iterdir():
                f.replace(target / f.name)
            tmp.rmdir()
            vae.train()
    return target
