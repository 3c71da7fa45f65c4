import numpy as np
import pandas as pd
import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from persobench.core.components import load_components
from persobench.core.config import DatasetConfig, ModelConfig, load_config
from persobench.core.errors import UserError
from persobench.core.seeding import initial_noise
from persobench.datasets import datasets
from persobench.harness.runner import ImageJob, generate, run
from persobench.methods import methods

TEMPLATE = "a {0} {1} on the beach"


@pytest.fixture(scope="module")
def components(tiny_model):
    return load_components(ModelConfig(source=str(tiny_model), device="cpu"))


@pytest.fixture(scope="module")
def subject():
    bench = datasets.get("toybench")(DatasetConfig())
    return next(s for s in bench.subjects if s.name == "ball1")


def harness_image(fitted, tiny_model, tmp_path):
    cfg = load_config(None, [f"model.source={tiny_model}", "sampler.steps=4", "sampler.cfg_scale=4"])
    job = ImageJob(fitted.method, fitted.subject, 0, TEMPLATE, 0, 123, tmp_path / "x.png")
    _, (image,) = generate(fitted, cfg, [job])
    return np.asarray(image)


def diffusers_image(pipe, prompt, components):
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt, latents=initial_noise([123], components.latent_shape), num_inference_steps=4, guidance_scale=4.0,
               height=64, width=64, output_type="np").images[0]
    return (out * 255).round().astype(np.uint8)


def plain_pipeline(tiny_model):
    return StableDiffusionPipeline.from_pretrained(tiny_model, safety_checker=None, requires_safety_checker=False)


def test_textual_inversion_trains_only_its_token_and_loads_in_plain_diffusers(components, subject, tiny_model, tmp_path):
    ti = methods.get("textual-inversion")({"steps": 4, "num_vectors": 2, "batch_size": 2}, components)
    fitted = ti.fit(subject, tmp_path / "fit", seed=0)
    saved = load_file(tmp_path / "fit" / "learned_embeds.safetensors")
    assert list(saved) == ["<ball1>"] and saved["<ball1>"].shape == (2, components.text_encoder.config.hidden_size)
    base = components.text_encoder.get_input_embeddings().weight
    learned = fitted.text_encoder.get_input_embeddings().weight
    assert torch.equal(learned[: len(base)], base)  # every original row untouched
    assert fitted.prompt(TEMPLATE) == "a <ball1> <ball1>_1 ball on the beach"
    assert len(components.tokenizer) == len(base)  # the shared tokenizer was not modified
    pipe = plain_pipeline(tiny_model)
    pipe.load_textual_inversion(tmp_path / "fit" / "learned_embeds.safetensors", token="<ball1>")
    assert np.array_equal(harness_image(fitted, tiny_model, tmp_path), diffusers_image(pipe, "a <ball1> ball on the beach", components))


def test_textual_inversion_refit_loads_the_cache_and_is_deterministic(components, subject, tmp_path):
    ti = methods.get("textual-inversion")({"steps": 3, "batch_size": 2}, components)
    a = ti.fit(subject, tmp_path / "a", seed=5)
    b = ti.fit(subject, tmp_path / "b", seed=5)
    assert (tmp_path / "a" / "learned_embeds.safetensors").read_bytes() == (tmp_path / "b" / "learned_embeds.safetensors").read_bytes()
    mtime = (tmp_path / "a" / "learned_embeds.safetensors").stat().st_mtime_ns
    again = ti.fit(subject, tmp_path / "a", seed=5)
    assert (tmp_path / "a" / "learned_embeds.safetensors").stat().st_mtime_ns == mtime
    ids = a.tokenizer.convert_tokens_to_ids(["<ball1>"])
    assert torch.equal(again.text_encoder.get_input_embeddings().weight[ids], b.text_encoder.get_input_embeddings().weight[ids])


@pytest.mark.parametrize("train_text_encoder", [False, True])
def test_dreambooth_lora_loads_in_plain_diffusers(components, subject, tiny_model, tmp_path, train_text_encoder):
    db = methods.get("dreambooth-lora")({"steps": 3, "batch_size": 2, "rank": 2, "train_text_encoder": train_text_encoder}, components)
    fitted = db.fit(subject, tmp_path / "fit", seed=0)
    assert fitted.unet is not components.unet
    assert fitted.prompt(TEMPLATE) == "a sks ball on the beach"
    pipe = plain_pipeline(tiny_model)
    pipe.load_lora_weights(tmp_path / "fit", weight_name="pytorch_lora_weights.safetensors")
    assert np.array_equal(harness_image(fitted, tiny_model, tmp_path), diffusers_image(pipe, "a sks ball on the beach", components))
    reloaded = db.fit(subject, tmp_path / "fit", seed=0)  # from the saved file
    assert np.array_equal(harness_image(reloaded, tiny_model, tmp_path), harness_image(fitted, tiny_model, tmp_path))


def test_dreambooth_prior_preservation_caches_class_images(components, subject, tmp_path):
    db = methods.get("dreambooth-lora")({"steps": 2, "batch_size": 2, "rank": 2, "prior_preservation": True,
                                          "num_class_images": 3, "class_steps": 2}, components)
    db.fit(subject, tmp_path / "fits" / "one", seed=0)
    (cache,) = (tmp_path / "fits").glob("class-ball-*.pt")
    assert torch.load(cache).shape == (3, *components.latent_shape)


def test_method_bad_inputs(components, subject, tmp_path):
    with pytest.raises(UserError, match="rank must be a positive integer"):
        methods.get("dreambooth-lora")({"rank": 0}, components)
    with pytest.raises(UserError, match="already in the vocabulary"):
        methods.get("textual-inversion")({"placeholder": "ball", "steps": 1}, components).fit(subject, tmp_path / "x", 0)
    with pytest.raises(UserError, match="unknown config key 'method_params.textual-inversion.stepz'"):
        methods.get("textual-inversion")({"stepz": 1}, components)
    with pytest.raises(UserError, match="preset must be one of"):
        methods.get("dreambooth-lora")({"preset": "huge"}, components)


def test_lora_for_another_architecture_is_refused(components, subject, tmp_path):
    db = methods.get("dreambooth-lora")({"steps": 1, "batch_size": 1, "rank": 2}, components)
    db.fit(subject, tmp_path / "fit", seed=0)
    other = methods.get("dreambooth-lora")({"steps": 1, "batch_size": 1, "rank": 2, "targets": ["to_q"]}, components)
    with pytest.raises(UserError, match="LoRA file .* (does not fit|another architecture)"):
        other.fit(subject, tmp_path / "fit", seed=0)


def test_run_fits_and_samples_every_method(make_config):
    cfg = make_config("methods=[vanilla-sd, textual-inversion, dreambooth-lora]",
                      "method_params={textual-inversion: {steps: 2, batch_size: 2}, dreambooth-lora: {steps: 2, batch_size: 2, rank: 2}}")
    point = run(cfg)
    frame = pd.read_parquet(point / "records.parquet")
    assert frame.groupby("method").size().to_dict() == {"vanilla-sd": 8, "textual-inversion": 8, "dreambooth-lora": 8}
    ti = frame[frame["method"] == "textual-inversion"].iloc[0]
    assert ti["prompt"].startswith("a <") and "<" not in ti["clip_text"]
    assert frame[frame["method"] == "dreambooth-lora"]["prompt"].str.contains("sks").all()
