"""Stage `t2i`: the toy text-to-image model (UNet + text encoder) on pre-computed VAE latents.

v-prediction and standardised latents (what made the prototype's colours and backgrounds right),
caption dropout for classifier-free guidance, EMA weights exported as a diffusers folder that
`StableDiffusionPipeline.from_pretrained` loads.

Optional (switchable, stated in the model card): an auxiliary attention-localisation loss from the
renderer's masks. Plain training made the class word's cross-attention say *where the object is*
but not *which word names it* (context words got the same map); real SD's maps are word-specific
and Pick-and-Draw depends on that, so from `attention_loss_from` on, the class noun's map is pulled
inside the subject mask and the context noun's map outside it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, StableDiffusionPipeline
from transformers import CLIPTokenizer

from ...core.attention import capture_cross_attention
from ..captions import caption
from ..tokenizer import build_tokenizer_files
from ..world import CLASSES, CONTEXTS
from .architectures import make_schedulers, make_text_encoder, make_unet
from .common import TRAIN_SEED_BASE, atomic_torch_save, batch_indices, rendered_set, to_tensor
from .loop import LoopConfig, Stage, Trained, train


@dataclasses.dataclass
class T2iConfig(LoopConfig):
    steps: int = 40000  # the cosine schedule's horizon; resumable across sessions
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 1e-2
    n_images: int = 40000
    caption_dropout: float = 0.1
    ema_decay: float | None = 0.999
    grad_clip: float | None = 1.0
    checkpoint_every: int = 200
    export_every: int = 1000
    log_every: int = 25
    seed: int = 0
    attention_loss: float = 0.1  # weight of the localisation loss (0 disables it)
    attention_loss_from: int = 5000  # the step it was switched on for the shipped model
    attention_loss_max_t: int = 700  # no localisation target at timesteps noisier than this


LEGACY_KEYS = {"ema_text_encoder": "ema_text"}  # the previous loop's t2i.ckpt (the committed one) names


def localisation_words(tokenizer: CLIPTokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids of the class nouns (should attend inside the subject) and context nouns (outside)."""
    def ids(words):
        return torch.tensor(sorted({i for w in words for i in tokenizer(w, add_special_tokens=False).input_ids}))
    return ids(CLASSES), ids({phrase.split()[-1] for phrase in CONTEXTS.values() if phrase})


def localisation_loss(maps: dict[str, torch.Tensor], ids: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor,
                      inside_ids: torch.Tensor, outside_ids: torch.Tensor) -> torch.Tensor:
    """Mean over layers of (class-noun mass outside the mask) + (context-noun mass inside the mask),
    each word's map normalised to sum 1 over pixels. masks: [B, 1, H, W] in [0, 1]; valid: [B]."""
    inside_cols = torch.isin(ids, inside_ids) & valid[:, None]
    outside_cols = torch.isin(ids, outside_ids) & valid[:, None]
    if not (inside_cols.any() or outside_cols.any()):
        return masks.new_zeros(())
    terms = []
    for amap in maps.values():  # [B, pixels, tokens]
        side = int(amap.shape[1] ** 0.5)
        mk = F.adaptive_avg_pool2d(masks, side).flatten(1)  # [B, pixels]
        share = amap / amap.sum(1, keepdim=True).clamp_min(1e-8)
        mass_in = (share * mk[:, :, None]).sum(1)  # [B, tokens]
        loss = ((1 - mass_in) * inside_cols).sum() + (mass_in * outside_cols).sum()
        terms.append(loss / (inside_cols.sum() + outside_cols.sum()).clamp_min(1))
    return torch.stack(terms).mean()


@torch.no_grad()
def encode_latents(vae: AutoencoderKL, images, cache: Path | None) -> torch.Tensor:
    path = cache / f"latents-{len(images)}.pt" if cache else None
    if path and path.exists():
        return torch.load(path, weights_only=True)
    lat = torch.cat([vae.encode(to_tensor(images[i : i + 256])).latent_dist.mean for i in range(0, len(images), 256)])
    lat = lat.half()
    if path:
        atomic_torch_save(lat, path)
    return lat


def train_t2i(out: Path, work: Path, cfg: T2iConfig) -> Path:
    torch.manual_seed(cfg.seed)
    sd = out / "sd"
    tokenizer = CLIPTokenizer.from_pretrained(build_tokenizer_files(sd / "tokenizer"))
    vae = AutoencoderKL.from_pretrained(sd / "vae").eval()
    scenes, images, masks = rendered_set(cfg.n_images, TRAIN_SEED_BASE, work / "cache")
    latents = encode_latents(vae, images, work / "cache")
    masks = F.adaptive_avg_pool2d(torch.from_numpy(masks)[:, None].float(), latents.shape[-1]).half()
    del images
    inside_ids, outside_ids = localisation_words(tokenizer)
    text_encoder = make_text_encoder(tokenizer, cfg.tiny)
    unet = make_unet(text_encoder.config.hidden_size, cfg.tiny)
    train_sched, _ = make_schedulers()

    def loss(step: int, idx) -> tuple[torch.Tensor, dict]:
        rng = random.Random(cfg.seed * 1_000_003 + step)
        texts = [caption(scenes[i], rng, cfg.caption_dropout) for i in idx]
        ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        x0 = latents[torch.as_tensor(idx)].float()
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, train_sched.config.num_train_timesteps, (len(idx),), generator=gen)
        noisy = train_sched.add_noise(x0, noise, t)
        target = train_sched.get_velocity(x0, noise, t)
        localise = cfg.attention_loss > 0 and step >= cfg.attention_loss_from
        with capture_cross_attention(unet, keep_grad=True) if localise else contextlib.nullcontext() as captured:
            pred = unet(noisy, t, encoder_hidden_states=text_encoder(ids)[0]).sample
        diffusion = F.mse_loss(pred, target)
        if not localise:
            return diffusion, {"loss": diffusion}
        valid = t <= cfg.attention_loss_max_t
        loc = localisation_loss(captured.maps, ids, masks[torch.as_tensor(idx)].float(), valid, inside_ids, outside_ids)
        return diffusion + cfg.attention_loss * loc, {"loss": diffusion, "localisation": round(loc.item(), 5)}  # log: the diffusion loss

    def export(step: int, last: bool, state: Trained) -> None:
        if step % cfg.export_every == 0 or last:
            export_pipeline(sd, vae, tokenizer, state, step)

    train(Stage("t2i", cfg, {"unet": unet, "text_encoder": text_encoder},
                lambda step: batch_indices(len(scenes), cfg.batch_size, cfg.seed, step), loss,
                ema=("unet", "text_encoder"), after_step=export, legacy_keys=LEGACY_KEYS), work)
    return sd


def export_pipeline(sd: Path, vae, tokenizer, state: Trained, step: int) -> None:
    """Save the EMA weights as a complete diffusers StableDiffusionPipeline folder, fp32 like the VAE, so the
    card's plain `StableDiffusionPipeline.from_pretrained(path)` runs with no dtype argument."""
    unet_out, text_out = state.ema_copy("unet"), state.ema_copy("text_encoder")
    _, sampling = make_schedulers()
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_out.float(),
        tokenizer=tokenizer,
        unet=unet_out.float(),
        scheduler=sampling,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    tmp = sd.with_name(sd.name + ".exporting")
    pipe.save_pretrained(tmp)
    for part in ("unet", "text_encoder", "scheduler", "model_index.json"):
        src, dst = tmp / part, sd / part
        if dst.is_dir():
            shutil.rmtree(dst)
        src.replace(dst)
    (sd / "TRAINED_STEPS").write_text(f"{step}\n")
    shutil.rmtree(tmp)
