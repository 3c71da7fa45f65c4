"""BLIP-Diffusion zero-shot subject conditioning (Li et al., NeurIPS 2023): real and toy backends.

A subject encoder turns the reference image(s) into K subject embeddings that replace K placeholder
tokens in the prompt ("a <subject>x K ball in the snow") at the text encoder's token-embedding layer;
there is no per-subject training (`fit` only encodes and caches). The adapter exposes the subject's
token columns (placeholders + class noun) through `Fitted`, and CLIP-T keeps the original prompt.

Backends, one adapter:
- `real`: the Salesforce/blipdiffusion folder (qformer, text_encoder, tokenizer, unet, image_processor)
  from a path or the local hub cache. The Q-Former is our plain-torch port (`blip_qformer.py`, the
  checkpoint's keys); the ContextCLIPTextModel's weights are a CLIPTextModel's, and its "context
  embeddings inserted at position 2" are exactly Q placeholder tokens after "a " whose embeddings are
  overwritten, so prompts keep the length-77 layout the model was trained with and token columns
  stay right for guidance. As diffusers' `BlipDiffusionPipeline` (pipeline_blip_diffusion.py): the
  queries always sit at token position 2 (`ctx_begin_pos=2`, after BOS and the first word, property
  prompts included: "a <q>x16 red dog"); one reference image (`reference_image`, a single PIL image)
  unless `reference_mode: average` (the mean of the Q-Former outputs over the references, a deviation);
  `prompt_reps` repeats the class-noun prompt as the pipeline does (prompt_strength 1.0 x prompt_reps 20).
  Sampling uses the run's VAE (SD 1.5's, as BLIP-Diffusion's) and BLIP-Diffusion's own UNet.
- `toy`: the project's encoder trained on the toy world: the toy DINO ViT, frozen, plus learned
  queries cross-attending to its tokens, projected into the text encoder's input space (see
  `datasets/toyworld/training/blip.py`). It was trained on one reference per caption with the
  placeholders right before the class noun ("a red <q>x4 ball"), so its defaults stay that layout
  (`query_position: before_class`) and the mean over all references (`reference_mode: average`), the
  settings the README's toy numbers were measured with; `start` / `first` are available to it too.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..datasets.dreambench import Subject
from ..errors import UserError
from ..harness.models import ASSETS, SDComponents
from .base import Fitted, register_method
from .training import as_dict, resolve_params, subject_references

PLACEHOLDER = "<subject>"


class SubjectEncoder(torch.nn.Module):
    """Image -> K subject embeddings: learned queries attend to a frozen ViT's tokens."""

    def __init__(self, backbone: torch.nn.Module, feature_dim: int, text_dim: int, num_queries: int = 4, heads: int = 4) -> None:
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)
        self.queries = torch.nn.Parameter(torch.randn(num_queries, feature_dim) * 0.02)
        self.attn = torch.nn.MultiheadAttention(feature_dim, heads, batch_first=True)
        self.norm = torch.nn.LayerNorm(feature_dim)
        self.proj = torch.nn.Linear(feature_dim, text_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            tokens = self.backbone.forward_features(images)  # [B, 1 + patches, C]
        q = self.queries.expand(len(images), -1, -1)
        out, _ = self.attn(q, tokens, tokens)
        return self.proj(self.norm(out + q))  # [B, K, text_dim]

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}


def load_subject_encoder(folder: Path) -> tuple[SubjectEncoder, dict]:
    import timm

    config_path = folder / "config.json"
    if not config_path.is_file():
        raise UserError(f"BLIP-Diffusion toy subject encoder not found at '{folder}'; train it with "
                        "`persobench toyworld train --stage blip` or pass method_params.blip-diffusion.encoder=<folder>")
    config = json.loads(config_path.read_text())
    backbone = timm.create_model(f"local-dir:{(folder / config['backbone']).resolve()}", pretrained=True)
    encoder = SubjectEncoder(backbone, config["feature_dim"], config["text_dim"], config["num_queries"])
    encoder.load_state_dict(load_file(folder / "subject_encoder.safetensors"), strict=False)
    return encoder.eval(), config


class SplicedTextEncoder(torch.nn.Module):
    """The text encoder with subject embeddings written over the placeholder tokens' embeddings."""

    def __init__(self, text_encoder: torch.nn.Module, placeholder_id: int, subject: torch.Tensor) -> None:
        super().__init__()
        self.inner, self.placeholder_id = text_encoder, placeholder_id
        self.register_buffer("subject", subject)  # [K, D]

    @property
    def config(self):
        return self.inner.config

    def forward(self, input_ids: torch.Tensor, attention_mask=None, **kwargs):
        def splice(module, args, output):
            mask = input_ids == self.placeholder_id
            counts = mask.sum(1)
            if bool((counts != 0).any()):
                out = output.clone()
                for b in range(len(input_ids)):
                    k = int(counts[b])
                    if k:
                        out[b, mask[b]] = self.subject[:k].to(out.dtype)
                return out
            return output

        handle = self.inner.get_input_embeddings().register_forward_hook(splice)
        try:
            return self.inner(input_ids, attention_mask=attention_mask, **kwargs)
        finally:
            handle.remove()


@dataclasses.dataclass
class BlipParams:
    backend: Literal["toy", "real"] = "toy"
    encoder: str | None = None  # toy: the subject encoder folder (default: the embedded one)
    weights: str = "Salesforce/blipdiffusion"  # real: folder or hub id (local cache) in the published layout
    qformer_tokenizer: str = "bert-base-uncased"  # real: the Q-Former's BERT tokenizer (folder or cached hub id)
    num_references: int | None = None  # references considered (the first n); None = all
    # first: the first reference only (the pipeline takes one image); average: the mean over the references.
    # None = the backend's default: real -> first, toy -> average.
    reference_mode: Literal["first", "average"] | None = None
    # start: after the prompt's first word, the pipeline's ctx_begin_pos=2; before_class: where the template puts {0},
    # before the class noun (the toy encoder's training captions). None = the backend's default: real -> start, toy -> before_class.
    query_position: Literal["start", "before_class"] | None = None
    prompt_reps: int = 1  # the pipeline repeats the prompt 20 times (prompt_strength 1.0 x prompt_reps 20)


PRESETS = {"toy": {"backend": "toy"}, "paper": {"backend": "real", "prompt_reps": 20}}
BACKEND_DEFAULTS = {"real": {"reference_mode": "first", "query_position": "start"},
                    "toy": {"reference_mode": "average", "query_position": "before_class"}}


def with_backend_defaults(params: BlipParams) -> BlipParams:
    """Fill the fields left null with the backend's defaults, so the fit signature names what a fit used."""
    unset = {k: v for k, v in BACKEND_DEFAULTS[params.backend].items() if getattr(params, k) is None}
    return dataclasses.replace(params, **unset)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def _resolve_weights(source: str) -> Path:
    path = Path(source).expanduser()
    if not path.is_dir():
        try:
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(source, local_files_only=True))
        except Exception:
            raise UserError(f"BLIP-Diffusion weights '{source}' not found as a folder or in the local Hugging Face cache; "
                            "download Salesforce/blipdiffusion on a connected machine or pass "
                            "method_params.blip-diffusion.weights=<folder>") from None
    missing = [p for p in ("qformer", "text_encoder", "tokenizer", "unet") if not (path / p).is_dir()]
    if missing:
        raise UserError(f"'{source}' is not a BLIP-Diffusion folder (missing {', '.join(missing)}); "
                        "pass method_params.blip-diffusion.weights=<Salesforce/blipdiffusion folder>")
    return path


class RealBlip:
    """The published model's parts, loaded once per run."""

    def __init__(self, params: BlipParams, components: SDComponents) -> None:
        from diffusers import UNet2DConditionModel
        from transformers import BertTokenizer, CLIPTextModel, CLIPTokenizer

        from .blip_qformer import QFormer

        root = _resolve_weights(params.weights)
        dev, dtype = components.device, components.dtype
        self.qformer = QFormer.from_folder(root / "qformer").to(dev, dtype)
        try:
            self.bert = BertTokenizer.from_pretrained(params.qformer_tokenizer, local_files_only=True)
        except Exception:
            raise UserError(f"the Q-Former tokenizer '{params.qformer_tokenizer}' is not a folder or in the local Hugging Face "
                            "cache; pass method_params.blip-diffusion.qformer_tokenizer=<BERT tokenizer folder>") from None
        self.tokenizer = CLIPTokenizer.from_pretrained(root / "tokenizer")
        self.tokenizer.add_tokens([PLACEHOLDER])
        self.text_encoder = CLIPTextModel.from_pretrained(root / "text_encoder", torch_dtype=dtype)
        self.text_encoder.resize_token_embeddings(len(self.tokenizer), mean_resizing=False)
        self.text_encoder.to(dev).eval().requires_grad_(False)
        self.unet = UNet2DConditionModel.from_pretrained(root / "unet", torch_dtype=dtype).to(dev).eval().requires_grad_(False)
        if self.unet.config.in_channels != components.unet.config.in_channels:
            raise UserError(f"BLIP-Diffusion's UNet takes {self.unet.config.in_channels} latent channels, the run's VAE "
                            f"gives {components.unet.config.in_channels}; use an SD 1.x model.source")
        processor = root / "image_processor" / "preprocessor_config.json"
        pre = json.loads(processor.read_text()) if processor.is_file() else {}
        size = pre.get("size", {"height": 224})
        self.image_size = size["height"] if isinstance(size, dict) else int(size)
        self.mean, self.std = pre.get("image_mean", CLIP_MEAN), pre.get("image_std", CLIP_STD)
        self.num_queries = self.qformer.query_tokens.shape[1]

    @torch.no_grad()
    def embed(self, images: list, class_noun: str) -> torch.Tensor:
        """Reference image(s) -> [Q, H] subject embeddings (the mean over them when there are several)."""
        from PIL import Image

        dev, dtype = self.qformer.query_tokens.device, self.qformer.query_tokens.dtype
        arr = np.stack([np.asarray(im.convert("RGB").resize((self.image_size,) * 2, Image.BICUBIC), np.float32) / 255 for im in images])
        mean, std = torch.tensor(self.mean)[:, None, None], torch.tensor(self.std)[:, None, None]
        pixels = (torch.from_numpy(arr).permute(0, 3, 1, 2) - mean) / std
        text = self.bert([class_noun] * len(images), return_tensors="pt", padding=True)
        out = self.qformer(pixels.to(dev, dtype), text.input_ids.to(dev), text.attention_mask.to(dev))
        return out.float().mean(0)


@register_method("blip-diffusion")
class BlipDiffusion:
    """BLIP-Diffusion-style zero-shot subject embeddings (no per-subject training)."""

    name = "blip-diffusion"

    def __init__(self, params: dict[str, Any], components: SDComponents) -> None:
        self.params = with_backend_defaults(resolve_params(BlipParams, PRESETS, params, self.name))
        if self.params.prompt_reps < 1:
            raise UserError(f"blip-diffusion prompt_reps must be >= 1, got {self.params.prompt_reps}")
        self.components = components
        self._encoder: tuple[SubjectEncoder, dict] | None = None
        self._real = RealBlip(self.params, components) if self.params.backend == "real" else None

    @staticmethod
    def fit_steps(params: dict[str, Any]) -> int:
        return 0

    def fit_signature(self) -> dict[str, Any]:
        return as_dict(self.params)

    def references(self, subject: Subject) -> list:
        """The reference image(s) the subject embeddings come from: the first, or all to be averaged."""
        refs = subject_references(subject, self.params.num_references)
        return refs[:1] if self.params.reference_mode == "first" else refs

    def fitted(self, subject: Subject, unet, tokenizer, text_encoder, num_queries: int) -> Fitted:
        """The adapter's Fitted: Q placeholders where `query_position` puts them."""
        identifier = " ".join([PLACEHOLDER] * num_queries)
        return Fitted(self.name, subject, self.components, unet, tokenizer, text_encoder, identifier=identifier,
                      prompt_reps=self.params.prompt_reps, identifier_first=self.params.query_position == "start")

    def encoder(self) -> tuple[SubjectEncoder, dict]:
        if self._encoder is None:
            self._encoder = load_subject_encoder(Path(self.params.encoder) if self.params.encoder else ASSETS / "blip")
        return self._encoder

    def fit(self, subject: Subject, folder: Path, seed: int, progress=None) -> Fitted:
        if self._real is not None:
            return self._fit_real(subject, folder)
        c = self.components
        encoder, config = self.encoder()
        if config["text_dim"] != c.text_encoder.config.hidden_size:
            raise UserError(f"the subject encoder at '{self.params.encoder or ASSETS / 'blip'}' was trained for another text encoder "
                            f"(width {config['text_dim']}, this model has {c.text_encoder.config.hidden_size})")
        saved = folder / "subject_embeddings.safetensors"
        if saved.is_file():
            embeddings = load_file(saved)["subject"]
        else:
            from ..datasets.toyworld.training.common import to_tensor

            refs = self.references(subject)
            size = config["image_size"]
            x = to_tensor(np.stack([np.asarray(im.resize((size, size))) for im in refs]))
            with torch.no_grad():
                embeddings = encoder(x).mean(0)
            folder.mkdir(parents=True, exist_ok=True)
            save_file({"subject": embeddings.contiguous()}, saved)
        tokenizer = copy.deepcopy(c.tokenizer)
        tokenizer.add_tokens([PLACEHOLDER])
        inner = copy.deepcopy(c.text_encoder)
        inner.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        text_encoder = SplicedTextEncoder(inner, tokenizer.convert_tokens_to_ids(PLACEHOLDER), embeddings.to(c.device)).eval()
        return self.fitted(subject, c.unet, tokenizer, text_encoder, len(embeddings))

    def _fit_real(self, subject: Subject, folder: Path) -> Fitted:
        real, c = self._real, self.components
        saved = folder / "subject_embeddings.safetensors"
        if saved.is_file():
            embeddings = load_file(saved)["subject"]
        else:
            embeddings = real.embed(self.references(subject), subject.class_noun)
            folder.mkdir(parents=True, exist_ok=True)
            save_file({"subject": embeddings.contiguous().cpu()}, saved)
        placeholder = real.tokenizer.convert_tokens_to_ids(PLACEHOLDER)
        text_encoder = SplicedTextEncoder(real.text_encoder, placeholder, embeddings.to(c.device)).eval()
        return self.fitted(subject, real.unet, real.tokenizer, text_encoder, real.num_queries)
