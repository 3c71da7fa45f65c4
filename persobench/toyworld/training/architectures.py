"""Architectures of the toy world's text-to-image model, as diffusers / transformers configs.

Same classes as Stable Diffusion 1.x (AutoencoderKL, CLIPTextModel, UNet2DConditionModel with
cross-attention), scaled for 64 px images and one CPU core. `tiny=True` gives the sizes used by the
smoke configuration and the tests.
"""

from __future__ import annotations

from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

IMAGE_SIZE = 64
LATENT_SIZE = 16

SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="v_prediction",
)
# DDIM built from the training config would inherit clip_sample=True (saturated noise): ship these.
SAMPLING_SCHEDULER = dict(SCHEDULER, clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def make_vae(tiny: bool = False) -> AutoencoderKL:
    channels = (8, 16, 16) if tiny else (16, 32, 64)  # measured: 0.44 s/step at batch 16 on one core
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=channels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        mid_block_add_attention=False,
        sample_size=IMAGE_SIZE,
        scaling_factor=1.0,  # latents are standardised per channel inside the VAE's 1x1 convs
    )


def make_text_encoder(tokenizer: CLIPTokenizer, tiny: bool = False) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=64 if tiny else 128,
        intermediate_size=128 if tiny else 512,
        num_hidden_layers=2 if tiny else 3,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=64 if tiny else 128,
    )
    return CLIPTextModel(config)


def make_unet(cross_attention_dim: int, tiny: bool = False) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(16, 32, 32) if tiny else (32, 64, 128),
        layers_per_block=1,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=4,
        norm_num_groups=8,
    )


def make_schedulers() -> tuple[DDPMScheduler, DDIMScheduler]:
    return DDPMScheduler(**SCHEDULER), DDIMScheduler(**SAMPLING_SCHEDULER)


def save_random_pipeline(out, tiny: bool = True, seed: int = 0):
    """A randomly initialised toy-architecture SD pipeline folder (tests, benchmarks, bootstrapping)."""
    import torch
    from diffusers import StableDiffusionPipeline

    from ..tokenizer import build_tokenizer_files

    torch.manual_seed(seed)
    tokenizer = CLIPTokenizer.from_pretrained(build_tokenizer_files(out / "tokenizer"))
    text_encoder = make_text_encoder(tokenizer, tiny)
    pipe = StableDiffusionPipeline(
        vae=make_vae(tiny),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=make_unet(text_encoder.config.hidden_size, tiny),
        scheduler=make_schedulers()[1],
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out)
    return out
