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
  `toyworld/training/blip.py`). It was trained on one reference per caption with the
  placeholders right before the class noun ("a red <q>x4 ball"), so its defaults stay that layout
  (`query_position: before_class`) and the mean over all references (`reference_mode: average`), the
  settings the README's toy numbers were measured with; `start` / `first` are available to it too.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..core.benchmark import Subject
from ..core.components import SDComponents
from ..core.errors import UserError
from ..core.registry import Registry
from .base import Fitted, register_method
from .training import as_dict, resolve_params, subject_references

PLACEHOLDER = "<subject>"
logger = logging.getLogger(__name__)


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
    backend: str = "toy"  # a registered backend: real, toy
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


class Backend(Protocol):
    """A subject encoder and the text/denoising models its embeddings condition. Built once per run
    from (params, base components) on the first fit or `load()`; `defaults` fill the params a user left null, and
    an optional static `locate(params, components)` checks the weights without loading them (when the method is built)."""

    defaults: dict[str, Any]
    unet: torch.nn.Module
    num_queries: int

    def embed(self, images: list, class_noun: str) -> torch.Tensor:
        """Reference image(s) -> [Q, H] subject embeddings (the mean over several)."""
        ...

    def text_model(self) -> tuple[Any, torch.nn.Module]:
        """(tokenizer with the PLACEHOLDER token, text encoder sized for it) for one fitted subject."""
        ...


# `real` is below; the toy world registers `toy` (persobench/toyworld/blip_backend.py)
backends: Registry[Callable[[BlipParams, SDComponents], Backend]] = Registry("blip-diffusion backend")


def with_backend_defaults(params: BlipParams) -> BlipParams:
    """Fill the fields left null with the backend's defaults, so the fit signature names what a fit used."""
    unset = {k: v for k, v in backends.get(params.backend).defaults.items() if getattr(params, k) is None}
    return dataclasses.replace(params, **unset)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def _bert_tokenizer(source: str):
    from transformers import BertTokenizer

    try:
        return BertTokenizer.from_pretrained(source, local_files_only=True)
    except OSError as e:  # transformers reports a tokenizer it cannot find (folder, cache or hub id) as OSError
        raise UserError(f"the Q-Former tokenizer '{source}' is not a folder or in the local Hugging Face "
                        "cache; pass method_params.blip-diffusion.qformer_tokenizer=<BERT tokenizer folder>") from e


def _resolve_weights(source: str) -> Path:
    path = Path(source).expanduser()
    if not path.is_dir():
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

        try:
            path = Path(snapshot_download(source, local_files_only=True))
        except (LocalEntryNotFoundError, HFValidationError) as e:  # not cached / not a hub id (a folder that does not exist)
            raise UserError(f"BLIP-Diffusion weights '{source}' not found as a folder or in the local Hugging Face cache; "
                            "download Salesforce/blipdiffusion on a connected machine or pass "
                            "method_params.blip-diffusion.weights=<folder>") from e
    missing = [p for p in ("qformer", "text_encoder", "tokenizer", "unet") if not (path / p).is_dir()]
    if missing:
        raise UserError(f"'{source}' is not a BLIP-Diffusion folder (missing {', '.join(missing)}); "
                        "pass method_params.blip-diffusion.weights=<Salesforce/blipdiffusion folder>")
    return path


@backends.register("real", "the published Salesforce/blipdiffusion weights (folder or local hub cache)")
class RealBlip:
    """The published model's parts, loaded once per run."""

    defaults = {"reference_mode": "first", "query_position": "start"}

    @staticmethod
    def locate(params: BlipParams, components: SDComponents) -> Path:
        """Every bad input the real backend can name without loading its weights, when the method is built (before
        other methods' fits): the weights' folder, the Q-Former's tokenizer (a small vocabulary file) and the UNet's
        latent channels (its config.json). Returns the folder."""
        root = _resolve_weights(params.weights)
        _bert_tokenizer(params.qformer_tokenizer)
        config = root / "unet" / "config.json"
        channels = json.loads(config.read_text()).get("in_channels") if config.is_file() else None
        if channels is not None and channels != components.unet.config.in_channels:
            raise UserError(f"BLIP-Diffusion's UNet takes {channels} latent channels, the run's VAE "
                            f"gives {components.unet.config.in_channels}; use an SD 1.x model.source")
        return root

    def __init__(self, params: BlipParams, components: SDComponents) -> None:
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        from .blip_qformer import QFormer

        root = _resolve_weights(params.weights)
        logger.info("BLIP-Diffusion weights from %s", root)
        dev, dtype = components.device, components.dtype
        self.qformer = QFormer.from_folder(root / "qformer").to(dev, dtype)
        self.bert = _bert_tokenizer(params.qformer_tokenizer)
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

    def text_model(self) -> tuple[Any, torch.nn.Module]:
        return self.tokenizer, self.text_encoder


@register_method("blip-diffusion")
class BlipDiffusion:
    """BLIP-Diffusion-style zero-shot subject embeddings (no per-subject training)."""

    name = "blip-diffusion"
    fit_step_seconds = 0.0  # one fit step on one A100-class GPU, SD 1.5 fp16 512 px (dry-run estimate)

    def __init__(self, params: dict[str, Any], components: SDComponents) -> None:
        self.params = with_backend_defaults(resolve_params(BlipParams, PRESETS, params, self.name))
        if self.params.prompt_reps < 1:
            raise UserError(f"blip-diffusion prompt_reps must be >= 1, got {self.params.prompt_reps}")
        self.components = components
        self._make_backend = backends.get(self.params.backend)  # an unknown backend fails here, before any load
        locate = getattr(self._make_backend, "locate", None)
        if locate is not None:
            locate(self.params, components)  # weights that are not on disk fail here too, still without loading them

    def load(self) -> None:
        """Load the backend now (the runner's "load method" phase), not inside the first fit."""
        self.backend  # noqa: B018

    @functools.cached_property
    def backend(self) -> Backend:
        """The backend's weights, loaded on the first fit: a personalizer built only for its fit signature (the
        runner's fit keys) loads nothing, so at real shapes BLIP-2's towers are never resident beside another method."""
        return self._make_backend(self.params, self.components)

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

    def fit(self, subject: Subject, folder: Path, seed: int, progress=None) -> Fitted:
        """Encode the reference(s) once (cached in the fit folder) and splice them over the placeholders."""
        b, c = self.backend, self.components
        saved = folder / "subject_embeddings.safetensors"
        if saved.is_file():
            embeddings = load_file(saved)["subject"]
        else:
            embeddings = b.embed(self.references(subject), subject.class_noun)
            folder.mkdir(parents=True, exist_ok=True)
            save_file({"subject": embeddings.contiguous().cpu()}, saved)
        tokenizer, inner = b.text_model()
        text_encoder = SplicedTextEncoder(inner, tokenizer.convert_tokens_to_ids(PLACEHOLDER), embeddings.to(c.device)).eval()
        return self.fitted(subject, b.unet, tokenizer, text_encoder, b.num_queries)
