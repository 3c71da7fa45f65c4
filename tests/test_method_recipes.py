"""The fine-tuning methods follow diffusers' official training scripts (protocol fidelity).

Textual Inversion: `examples/textual_inversion/textual_inversion.py`; DreamBooth-LoRA:
`examples/dreambooth/train_dreambooth_lora.py`. Each test checks one recipe element by behaviour
(what the optimizer, the loss or plain diffusers sees), on the embedded toy model or the tiny one."""

import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image
from safetensors import safe_open

from persobench.core.components import ASSETS, load_components
from persobench.core.config import DatasetConfig, ModelConfig
from persobench.datasets import datasets
from persobench.methods import methods, textual_inversion, training
from tests.test_methods import diffusers_image, harness_image

TOY_SD = ASSETS / "sd"


@pytest.fixture(scope="module")
def tiny(tiny_model):
    return load_components(ModelConfig(source=str(tiny_model), device="cpu"))


@pytest.fixture(scope="module")
def toy():
    return load_components(ModelConfig(source=str(TOY_SD), device="cpu"))


@pytest.fixture(scope="module")
def subject():
    bench = datasets.get("toybench")(DatasetConfig())
    return next(s for s in bench.subjects if s.name == "ball1")


class RecordingAdamW(torch.optim.AdamW):
    """AdamW that remembers its hyperparameters and the gradient norm it saw at every step."""

    made: list[dict] = []
    grad_norms: list[float] = []

    def __init__(self, params, **kwargs):
        RecordingAdamW.made.append(kwargs)
        super().__init__(params, **kwargs)

    def step(self, closure=None):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        RecordingAdamW.grad_norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))
        return super().step(closure)


@pytest.fixture
def adamw(monkeypatch):
    RecordingAdamW.made, RecordingAdamW.grad_norms = [], []
    monkeypatch.setattr(torch.optim, "AdamW", RecordingAdamW)
    return RecordingAdamW


# --- Textual Inversion -------------------------------------------------------------------------


def test_ti_uses_the_scripts_adamw_defaults(tiny, subject, tmp_path, adamw):
    """textual_inversion.py: AdamW(lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)."""
    methods.get("textual-inversion")({"steps": 1, "batch_size": 1}, tiny).fit(subject, tmp_path / "fit", seed=0)
    (kwargs,) = adamw.made
    assert kwargs["weight_decay"] == 1e-2 and tuple(kwargs["betas"]) == (0.9, 0.999) and kwargs["eps"] == 1e-8


def test_ti_prompts_come_from_imagenet_templates_small(tiny, subject):
    ti = methods.get("textual-inversion")({}, tiny)
    assert ti.params.templates == textual_inversion.IMAGENET_TEMPLATES_SMALL and len(ti.params.templates) == 27
    assert "a photo of the weird {}" in ti.params.templates and "a photo of a small {}" in ti.params.templates


def test_ti_latents_are_posterior_samples_of_flipped_or_plain_references(tiny, subject, tmp_path, monkeypatch):
    """Every step draws `latent_dist.sample()` of a reference, mirrored with p = 0.5, as the script does."""
    seen = []
    original = training.DiffusionLoss.__call__

    def spy(self, unet, latents, embeds, gen):
        seen.append(latents.detach().clone())
        return original(self, unet, latents, embeds, gen)

    monkeypatch.setattr(training.DiffusionLoss, "__call__", spy)
    methods.get("textual-inversion")({"steps": 6, "batch_size": 4}, tiny).fit(subject, tmp_path / "fit", seed=0)
    drawn = torch.cat(seen)  # [24, C, h, w]
    refs = subject.images()
    means = training.encode_images(tiny, refs + [im.transpose(Image.FLIP_LEFT_RIGHT) for im in refs])
    distance = (drawn[:, None] - means[None]).flatten(2).norm(dim=2)  # [24, 2N]
    assert distance.min() > 0  # a sample, never the posterior mean itself (today's fixed set of means)
    nearest = distance.argmin(1)
    assert (nearest < len(refs)).any() and (nearest >= len(refs)).any()  # both plain and mirrored drawn
    assert len({tuple(row.flatten()[:8].tolist()) for row in drawn}) == len(drawn)  # a fresh draw each time


def test_ti_resizes_like_the_script_without_cropping():
    """textual_inversion.py (center_crop off by default): the whole image resized (bicubic) to the resolution."""
    wide = Image.fromarray(np.tile(np.linspace(0, 255, 32, dtype=np.uint8)[None, :, None], (16, 1, 3)))
    pixels = training.script_pixels(wide, 8, center_crop=False)
    expected = np.asarray(wide.resize((8, 8), Image.BICUBIC), np.float32) / 127.5 - 1.0
    assert torch.allclose(pixels, torch.from_numpy(expected).permute(2, 0, 1))
    cropped = training.script_pixels(wide, 8, center_crop=True)
    assert not torch.allclose(pixels, cropped)


def test_ti_fit_stays_deterministic_given_the_seed(tiny, subject, tmp_path):
    ti = methods.get("textual-inversion")({"steps": 3, "batch_size": 2}, tiny)
    ti.fit(subject, tmp_path / "a", seed=3)
    ti.fit(subject, tmp_path / "b", seed=3)
    ti.fit(subject, tmp_path / "c", seed=4)
    read = [(tmp_path / d / "learned_embeds.safetensors").read_bytes() for d in "abc"]
    assert read[0] == read[1] and read[0] != read[2]


def test_ti_presets_name_their_recipe(tiny):
    assert textual_inversion.PRESETS["paper"]["lr"] == 2.0e-3  # 5e-4 x batch 1 x accumulation 4 (--scale_lr)
    for preset in ("paper", "toy"):
        p = methods.get("textual-inversion")({"preset": preset}, tiny).params
        assert (p.weight_decay, p.adam_beta1, p.adam_beta2, p.adam_epsilon, p.flip_p) == (1e-2, 0.9, 0.999, 1e-8, 0.5)


# --- DreamBooth-LoRA ---------------------------------------------------------------------------


def test_lora_clips_the_gradient_norm(tiny, subject, tmp_path, adamw):
    """train_dreambooth_lora.py: clip_grad_norm_(lora params, max_grad_norm=1.0) before every step."""
    db = methods.get("dreambooth-lora")({"steps": 3, "batch_size": 2, "rank": 2, "max_grad_norm": 1e-4}, tiny)
    db.fit(subject, tmp_path / "fit", seed=0)
    assert len(adamw.grad_norms) == 3 and max(adamw.grad_norms) <= 1e-4 * (1 + 1e-3)
    (kwargs,) = adamw.made
    assert kwargs["weight_decay"] == 1e-2 and tuple(kwargs["betas"]) == (0.9, 0.999) and kwargs["eps"] == 1e-8
    assert methods.get("dreambooth-lora")({}, tiny).params.max_grad_norm == 1.0
    assert methods.get("dreambooth-lora")({"preset": "paper"}, tiny).params.max_grad_norm == 1.0


def test_lora_file_is_diffusers_layout_with_adapter_metadata(tiny, subject, tmp_path):
    db = methods.get("dreambooth-lora")({"steps": 1, "batch_size": 1, "rank": 2, "alpha": 6, "train_text_encoder": True}, tiny)
    db.fit(subject, tmp_path / "fit", seed=0)
    with safe_open(tmp_path / "fit" / "pytorch_lora_weights.safetensors", "pt") as f:
        keys, metadata = list(f.keys()), f.metadata()
    unet_keys, text_keys = [k for k in keys if k.startswith("unet.")], [k for k in keys if k.startswith("text_encoder.")]
    assert unet_keys and all(k.endswith((".lora.down.weight", ".lora.up.weight")) for k in unet_keys), unet_keys[:2]
    assert text_keys and all(".lora_linear_layer." in k for k in text_keys), text_keys[:2]  # the script's converted layout
    adapter = json.loads(metadata["lora_adapter_metadata"])
    assert adapter["unet.r"] == 2 and adapter["unet.lora_alpha"] == 6
    assert adapter["text_encoder.r"] == 2 and adapter["text_encoder.lora_alpha"] == 6
    assert adapter.get("unet.base_model_name_or_path") is None  # no temporary path baked into the cached file


@pytest.mark.parametrize("train_text_encoder", [False, True])
def test_lora_with_alpha_not_rank_reproduces_the_harness_in_plain_diffusers(toy, subject, tmp_path, train_text_encoder):
    """alpha / rank = 4: plain diffusers must apply the LoRA at the scale the harness trained and samples it."""
    params = {"steps": 4, "batch_size": 2, "rank": 2, "alpha": 8, "lr": 1e-2, "train_text_encoder": train_text_encoder}
    fitted = methods.get("dreambooth-lora")(params, toy).fit(subject, tmp_path / "fit", seed=0)
    pipe = StableDiffusionPipeline.from_pretrained(TOY_SD, torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False)
    base = diffusers_image(pipe, "a sks ball on the beach", toy)
    pipe.load_lora_weights(tmp_path / "fit", weight_name="pytorch_lora_weights.safetensors")
    loaded = diffusers_image(pipe, "a sks ball on the beach", toy)
    assert not np.array_equal(loaded, base)  # the LoRA does something
    assert np.array_equal(harness_image(fitted, TOY_SD, tmp_path), loaded)


def test_lora_file_bytes_do_not_depend_on_the_metadata_order(tmp_path):
    """safetensors writes `__metadata__` in a per-process random order; the store must not (sharded runs)."""
    import struct

    from safetensors.torch import load_file, save

    from persobench.methods.dreambooth_lora import canonical_header

    tensors = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(4)}
    files = []
    for order in (("format", "lora_adapter_metadata"), ("lora_adapter_metadata", "format")):
        meta = {"format": "pt", "lora_adapter_metadata": '{"unet.r": 4, "unet.target_modules": ["to_k", "to_q"]}'}
        path = tmp_path / f"{order[0]}.safetensors"
        raw = save(tensors, metadata={k: meta[k] for k in order})
        n = struct.unpack("<Q", raw[:8])[0]
        header = json.loads(raw[8 : 8 + n])
        header["__metadata__"] = {k: meta[k] for k in order}  # force the order a process might write
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)
        path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n :])
        files.append(path)
    assert files[0].read_bytes() != files[1].read_bytes()  # the two orders really differ before
    for f in files:
        canonical_header(f)
    assert files[0].read_bytes() == files[1].read_bytes()
    assert torch.equal(load_file(files[0])["a"], tensors["a"])
