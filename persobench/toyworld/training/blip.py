"""Stage `blip`: the toy BLIP-Diffusion subject encoder, trained against the frozen toy t2i model.

Pairs are two renders of one instance (other pose, other context): the encoder sees render A, the
diffusion loss is taken on render B with B's caption in which K placeholder tokens precede the class
noun and carry A's subject embeddings. UNet, VAE, text encoder and the DINO backbone stay frozen; the
queries, cross-attention and projection train. Retrain it whenever the t2i model changes.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from ..captions import caption
from ..world import sample_scene
from .common import TRAIN_SEED_BASE, to_tensor
from .evaluators import EvaluatorConfig, _PairSet, _train_loop

PAIR_BASE = TRAIN_SEED_BASE + 500_000  # the DINO stage's pairs (and cache)


def second_scenes(n: int, base: int) -> list:
    """Replay the pair set's RNG to recover the scene of each pair's second render (for its caption)."""
    out = []
    for i in range(n):
        rng = random.Random(base + i)
        first = sample_scene(rng, seed=base + i)
        out.append(sample_scene(rng, identity=first.identity))
    return out


def train_blip(out: Path, work: Path, cfg: EvaluatorConfig, num_queries: int = 4) -> Path:
    import timm
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from ...methods.blip_diffusion import PLACEHOLDER, SplicedTextEncoder
    from ..models import SubjectEncoder

    torch.manual_seed(cfg.seed)
    sd = out / "sd"
    tokenizer = CLIPTokenizer.from_pretrained(sd / "tokenizer")
    tokenizer.add_tokens([PLACEHOLDER])
    text_encoder = CLIPTextModel.from_pretrained(sd / "text_encoder", torch_dtype=torch.float32)
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    unet = UNet2DConditionModel.from_pretrained(sd / "unet", torch_dtype=torch.float32)
    vae = AutoencoderKL.from_pretrained(sd / "vae")
    for m in (text_encoder, unet, vae):
        m.eval().requires_grad_(False)
    scheduler = DDPMScheduler.from_pretrained(sd / "scheduler")
    backbone = timm.create_model(f"local-dir:{out / 'dino'}", pretrained=True)
    feature_dim = backbone.num_features
    encoder = SubjectEncoder(backbone, feature_dim, text_encoder.config.hidden_size, num_queries)
    n = cfg.n_images // 2
    pairs = _PairSet(n, PAIR_BASE, work / "cache")
    seconds = second_scenes(n, PAIR_BASE)
    placeholder = tokenizer.convert_tokens_to_ids(PLACEHOLDER)
    marks = " ".join([PLACEHOLDER] * num_queries)

    def loss_fn(step: int, idx: np.ndarray) -> torch.Tensor:
        rng = random.Random(step)
        gen = torch.Generator().manual_seed(step)
        texts = []
        for i in idx:
            text = caption(seconds[i], rng, dropout=0.0)
            cls = seconds[i].identity.cls
            texts.append(text.replace(f" {cls}", f" {marks} {cls}", 1))
        ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
        subject = encoder(to_tensor(pairs.a[idx]))  # [B, K, D]
        embeds = []
        for b in range(len(idx)):  # per item: its own subject embeddings over its placeholders
            embeds.append(SplicedTextEncoder(text_encoder, placeholder, subject[b])(ids[b : b + 1])[0])
        embeds = torch.cat(embeds)
        with torch.no_grad():
            x0 = vae.encode(to_tensor(pairs.b[idx])).latent_dist.mean * vae.config.scaling_factor
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(idx),), generator=gen)
        target = scheduler.get_velocity(x0, noise, t) if scheduler.config.prediction_type == "v_prediction" else noise
        pred = unet(scheduler.add_noise(x0, noise, t), t, encoder_hidden_states=embeds).sample
        return torch.nn.functional.mse_loss(pred, target)

    _train_loop("blip", work, cfg, {"model": encoder}, n, cfg.seed + 4, loss_fn)
    target_dir = out / "blip"
    target_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in encoder.trainable_state().items()}, target_dir / "subject_encoder.safetensors")
    config = {"backbone": "../dino", "feature_dim": feature_dim, "text_dim": text_encoder.config.hidden_size,
              "num_queries": num_queries, "image_size": 64, "trained_against_t2i_steps": _steps(sd)}
    (target_dir / "config.json").write_text(json.dumps(config, indent=2))
    return target_dir


def _steps(sd: Path) -> int | None:
    f = sd / "TRAINED_STEPS"
    return int(f.read_text()) if f.is_file() else None
