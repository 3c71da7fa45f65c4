"""The published architecture configs of every real model the harness loads, written out as data.

Nothing here is downloaded: each dict is the published file's content, read from its public copy
and cited where it is defined. `reduce_*` derive a reduced config of the same layout (the same
classes, block types, depths and therefore the same state-dict keys; only widths divided), so a CI
test can build and load a twin in seconds; width_divisor=1 returns the published config unchanged.
"""

from __future__ import annotations

import copy

# ---------------------------------------------------------------------------------------------------------------
# Stable Diffusion 1.5: runwayml/stable-diffusion-v1-5 on the Hugging Face hub (the CompVis v1-5 weights in the
# diffusers layout). Each dict is the file of that name in the hub repository, verbatim (read from a public mirror of
# the repository: unet/config.json, vae/config.json, text_encoder/config.json, scheduler/scheduler_config.json,
# model_index.json, tokenizer/tokenizer_config.json).
# ---------------------------------------------------------------------------------------------------------------
SD15_ID = "runwayml/stable-diffusion-v1-5"

SD15_UNET = {
    "_class_name": "UNet2DConditionModel",
    "_diffusers_version": "0.17.0.dev0",
    "act_fn": "silu",
    "addition_embed_type": None,
    "addition_embed_type_num_heads": 64,
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "class_embed_type": None,
    "class_embeddings_concat": False,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "cross_attention_dim": 768,
    "cross_attention_norm": None,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "encoder_hid_dim": None,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_only_cross_attention": None,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": None,
    "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False,
    "resnet_time_scale_shift": "default",
    "sample_size": 64,
    "time_cond_proj_dim": None,
    "time_embedding_act_fn": None,
    "time_embedding_dim": None,
    "time_embedding_type": "positional",
    "timestep_post_act": None,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "upcast_attention": None,
    "use_linear_projection": False,
}

SD15_VAE = {
    "_class_name": "AutoencoderKL",
    "_diffusers_version": "0.6.0",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "scaling_factor": 0.18215,
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
}

# openai/clip-vit-large-patch14's text tower, as SD 1.5 ships it (bos/eos/pad ids 0/2/1 are the published values; the
# tokenizer's real ids are 49406/49407, and transformers keys the pooled output on that legacy eos_token_id == 2).
SD15_TEXT_ENCODER = {
    "architectures": ["CLIPTextModel"],
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "model_type": "clip_text_model",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 1,
    "projection_dim": 768,
    "torch_dtype": "float32",
    "transformers_version": "4.37.2",
    "vocab_size": 49408,
}

SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.17.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "clip_sample_range": 1.0,
    "dynamic_thresholding_ratio": 0.995,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "thresholding": False,
    "trained_betas": None,
}

# The published model_index.json lists safety_checker / feature_extractor (a CLIP ViT-L/14 vision classifier the
# harness never loads). The twin has no such folders, so they are written as `save_pretrained(safety_checker=None)`
# writes them: [null, null] and requires_safety_checker false. Everything else is the published file.
SD15_MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "_diffusers_version": "0.18.0.dev0",
    "feature_extractor": [None, None],
    "requires_safety_checker": False,
    "safety_checker": [None, None],
    "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def _added_token(content: str) -> dict:
    return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}


# tokenizer/tokenizer_config.json as published (its "name_or_path" was a local path of the uploader's; kept as the
# hub id here). special_tokens_map.json is not in the public mirror read; it is written with the same token entries.
SD15_TOKENIZER_CONFIG = {
    "add_prefix_space": False,
    "bos_token": _added_token("<|startoftext|>"),
    "do_lower_case": True,
    "eos_token": _added_token("<|endoftext|>"),
    "errors": "replace",
    "model_max_length": 77,
    "name_or_path": "openai/clip-vit-large-patch14",
    "pad_token": "<|endoftext|>",
    "special_tokens_map_file": "./special_tokens_map.json",
    "tokenizer_class": "CLIPTokenizer",
    "unk_token": _added_token("<|endoftext|>"),
}
SD15_SPECIAL_TOKENS_MAP = {
    "bos_token": {k: v for k, v in _added_token("<|startoftext|>").items() if k != "__type"},
    "eos_token": {k: v for k, v in _added_token("<|endoftext|>").items() if k != "__type"},
    "pad_token": "<|endoftext|>",
    "unk_token": {k: v for k, v in _added_token("<|endoftext|>").items() if k != "__type"},
}

# ---------------------------------------------------------------------------------------------------------------
# DINO ViT-S/16 and ViT-S/8 (Caron et al. 2021) as timm publishes them: timm/vit_small_patch16_224.dino and
# timm/vit_small_patch8_224.dino (model.safetensors + config.json written by timm's save_for_hf). The architecture is
# timm's `vit_small_patch16_224` / `vit_small_patch8_224` (timm/models/vision_transformer.py: patch_size, embed_dim=384,
# depth=12, num_heads=6; the `.dino` pretrained cfg: num_classes=0, ImageNet mean/std).
# ---------------------------------------------------------------------------------------------------------------
DINO = {
    "dino-vits16": {"id": "timm/vit_small_patch16_224.dino", "architecture": "vit_small_patch16_224", "tag": "dino",
                    "model_args": {"patch_size": 16, "embed_dim": 384, "depth": 12, "num_heads": 6}},
    "dino-vits8": {"id": "timm/vit_small_patch8_224.dino", "architecture": "vit_small_patch8_224", "tag": "dino",
                   "model_args": {"patch_size": 8, "embed_dim": 384, "depth": 12, "num_heads": 6}},
}

# ---------------------------------------------------------------------------------------------------------------
# OpenAI CLIP ViT-B/32 with QuickGELU in open_clip form: open_clip's model_configs/ViT-B-32-quickgelu.json, and the
# hub layout of timm/vit_base_patch32_clip_224.openai (open_clip_config.json = {"model_cfg", "preprocess_cfg"} as
# open_clip's push_to_hf_hub writes it, open_clip_model.safetensors).
# ---------------------------------------------------------------------------------------------------------------
CLIP_ID = "timm/vit_base_patch32_clip_224.openai"
CLIP_ARCH = "ViT-B-32-quickgelu"
CLIP_B32_QUICKGELU = {
    "embed_dim": 512,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12},
}
OPENAI_MEAN, OPENAI_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
CLIP_PREPROCESS = {"mean": OPENAI_MEAN, "std": OPENAI_STD}
OPEN_CLIP_VISION_HEAD_WIDTH = 64  # open_clip CLIPVisionCfg.head_width default: ViT-B/32 has 768 / 64 = 12 heads

# ---------------------------------------------------------------------------------------------------------------
# BLIP-Diffusion (Li et al. 2023), Salesforce/blipdiffusion in the diffusers layout. Its parts are what diffusers'
# scripts/convert_blipdiffusion_to_diffusers.py builds and saves with BlipDiffusionPipeline.save_pretrained:
#   qformer        Blip2QFormerModel(Blip2Config(**BLIP2_CONFIG)): BLIP-2 Q-Former over a CLIP ViT-L/14 vision tower
#                  (23 of its 24 layers), 16 query tokens, a residual projection to the text encoder's width
#   text_encoder   ContextCLIPTextModel: SD 1.5's text_encoder config (a CLIPTextModel's weights and keys)
#   unet, vae      SD 1.5's configs (the UNet fine-tuned, the same architecture)
#   tokenizer      SD 1.5's CLIP tokenizer
#   scheduler      PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
#                  set_alpha_to_one=False, skip_prk_steps=True)
#   image_processor BlipImageProcessor() defaults (224 px, bicubic, OpenAI CLIP mean / std)
# ---------------------------------------------------------------------------------------------------------------
BLIP_ID = "Salesforce/blipdiffusion"
BLIP2_CONFIG = {
    "vision_config": {"hidden_size": 1024, "num_hidden_layers": 23, "num_attention_heads": 16, "image_size": 224, "patch_size": 14,
                      "intermediate_size": 4096, "hidden_act": "quick_gelu"},
    "qformer_config": {"cross_attention_frequency": 1, "encoder_hidden_size": 1024, "vocab_size": 30523},
    "num_query_tokens": 16,
}
# transformers' Blip2VisionConfig / Blip2QFormerConfig defaults for the fields BLIP2_CONFIG leaves out (read from the
# installed transformers' Blip2Config(**BLIP2_CONFIG).to_dict()); a saved config.json carries them expanded.
BLIP2_VISION_DEFAULTS = {"layer_norm_eps": 1e-06, "attention_dropout": 0.0, "qkv_bias": True, "model_type": "blip_2_vision_model"}
BLIP2_QFORMER_DEFAULTS = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
                          "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
                          "max_position_embeddings": 512, "initializer_range": 0.02, "layer_norm_eps": 1e-12, "pad_token_id": 0,
                          "model_type": "blip_2_qformer"}
# the conversion script's scheduler arguments; the file is written by PNDMScheduler(**BLIP_SCHEDULER_ARGS).save_config,
# as the script's save_pretrained did (the other fields are the installed diffusers' defaults, e.g. steps_offset 0)
BLIP_SCHEDULER_ARGS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "set_alpha_to_one": False,
                       "skip_prk_steps": True}
BLIP_IMAGE_PROCESSOR = {
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": OPENAI_MEAN,
    "image_processor_type": "BlipImageProcessor",
    "image_std": OPENAI_STD,
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"height": 224, "width": 224},
}
# model_index.json as BlipDiffusionPipeline.save_pretrained writes it (components defined in the blip_diffusion
# pipeline module are recorded under that library name; _diffusers_version is the installed one); reconstructed from
# the pipeline's register_modules / register_to_config, not read from the hub.
BLIP_MODEL_INDEX = {
    "_class_name": "BlipDiffusionPipeline",
    "ctx_begin_pos": 2,
    "image_processor": ["blip_diffusion", "BlipImageProcessor"],
    "mean": None,
    "qformer": ["blip_diffusion", "Blip2QFormerModel"],
    "scheduler": ["diffusers", "PNDMScheduler"],
    "std": None,
    "text_encoder": ["blip_diffusion", "ContextCLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
BERT_VOCAB_SIZE = 30522  # bert-base-uncased; the Q-Former's 30523 adds the [DEC] bos token diffusers' Q-Former appends

# Published parameter counts (to the precision they are usually quoted), for the tests.
PUBLISHED_PARAMETERS = {
    "sd15": {"unet": 859.52e6, "vae": 83.65e6, "text_encoder": 123.06e6},
    "dino-vits16": {"model": 21.7e6},
    "dino-vits8": {"model": 21.7e6},
    "clip-vit-b32": {"model": 151.3e6},
}


# ---------------------------------------------------------------------------------------------------------------
# Reduced variants: widths divided by `d`, everything else (classes, block types, depths, vocabularies, sequence
# lengths, image sizes, head counts) kept, so the state-dict keys are the full model's.
# ---------------------------------------------------------------------------------------------------------------
def _div(value: int, d: int, what: str) -> int:
    if value % d:
        raise ValueError(f"width_divisor={d} does not divide {what}={value}")
    return value // d


def _check(width: int, by: int, what: str, d: int) -> None:
    if width % by:
        raise ValueError(f"width_divisor={d} leaves {what}={width}, not a multiple of {by}")


def reduce_unet(cfg: dict, d: int) -> dict:
    if d == 1:
        return copy.deepcopy(cfg)
    out = copy.deepcopy(cfg)
    out["block_out_channels"] = [_div(c, d, "unet.block_out_channels") for c in cfg["block_out_channels"]]
    out["norm_num_groups"] = _div(cfg["norm_num_groups"], d, "unet.norm_num_groups")
    out["cross_attention_dim"] = _div(cfg["cross_attention_dim"], d, "unet.cross_attention_dim")
    for c in out["block_out_channels"]:
        _check(c, out["norm_num_groups"], "a unet block width (norm groups)", d)
        _check(c, cfg["attention_head_dim"], "a unet block width (attention heads)", d)  # SD 1.x: attention_head_dim = heads
    return out


def reduce_vae(cfg: dict, d: int) -> dict:
    if d == 1:
        return copy.deepcopy(cfg)
    out = copy.deepcopy(cfg)
    out["block_out_channels"] = [_div(c, d, "vae.block_out_channels") for c in cfg["block_out_channels"]]
    out["norm_num_groups"] = _div(cfg["norm_num_groups"], d, "vae.norm_num_groups")
    for c in out["block_out_channels"]:
        _check(c, out["norm_num_groups"], "a vae block width (norm groups)", d)
    return out


def reduce_clip_text(cfg: dict, d: int) -> dict:
    if d == 1:
        return copy.deepcopy(cfg)
    out = copy.deepcopy(cfg)
    for key in ("hidden_size", "intermediate_size", "projection_dim"):
        out[key] = _div(cfg[key], d, f"text_encoder.{key}")
    _check(out["hidden_size"], cfg["num_attention_heads"], "text_encoder.hidden_size (heads)", d)
    return out


def reduce_vit_args(args: dict, d: int) -> dict:
    out = dict(args)
    out["embed_dim"] = _div(args["embed_dim"], d, "embed_dim")
    _check(out["embed_dim"], args["num_heads"], "embed_dim (heads)", d)
    return out


def reduce_open_clip(cfg: dict, d: int) -> dict:
    if d == 1:
        return copy.deepcopy(cfg)
    out = copy.deepcopy(cfg)
    out["embed_dim"] = _div(cfg["embed_dim"], d, "embed_dim")
    out["vision_cfg"]["width"] = _div(cfg["vision_cfg"]["width"], d, "vision_cfg.width")
    out["vision_cfg"]["head_width"] = _div(OPEN_CLIP_VISION_HEAD_WIDTH, d, "vision_cfg.head_width")  # keeps 12 heads
    out["text_cfg"]["width"] = _div(cfg["text_cfg"]["width"], d, "text_cfg.width")
    _check(out["text_cfg"]["width"], cfg["text_cfg"]["heads"], "text_cfg.width (heads)", d)
    return out


def blip2_config(d: int = 1) -> dict:
    """The Q-Former folder's config.json: BLIP2_CONFIG with its sub-configs' defaults expanded (widths divided by d)."""
    vision = {**BLIP2_CONFIG["vision_config"], **BLIP2_VISION_DEFAULTS}
    qformer = {**BLIP2_QFORMER_DEFAULTS, **BLIP2_CONFIG["qformer_config"]}
    if d > 1:
        for key in ("hidden_size", "intermediate_size"):
            vision[key] = _div(vision[key], d, f"vision_config.{key}")
            qformer[key] = _div(qformer[key], d, f"qformer_config.{key}")
        qformer["encoder_hidden_size"] = vision["hidden_size"]
        _check(vision["hidden_size"], vision["num_attention_heads"], "vision_config.hidden_size (heads)", d)
        _check(qformer["hidden_size"], qformer["num_attention_heads"], "qformer_config.hidden_size (heads)", d)
    return {"architectures": ["Blip2QFormerModel"], "model_type": "blip-2", "num_query_tokens": BLIP2_CONFIG["num_query_tokens"],
            "initializer_factor": 1.0, "initializer_range": 0.02, "vision_config": vision, "qformer_config": qformer}
