import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from persobench.core.components import load_components
from persobench.core.config import ModelConfig
from persobench.core.sampling import Conditioning, decode, denoise, encode_text
from persobench.core.schedulers import build_scheduler
from persobench.core.seeding import image_seed, initial_noise


@pytest.fixture(scope="module")
def components(tiny_model):
    return load_components(ModelConfig(source=str(tiny_model), device="cpu"))


SCHEDULERS = ["ddim", "ddpm", "pndm", "dpm++", "euler", "euler-a"]


@pytest.mark.parametrize("scheduler", SCHEDULERS)
@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_loop_without_hooks_matches_diffusers_pipeline(tiny_model, components, scheduler, eta):
    """Bit-identical latents to `StableDiffusionPipeline.__call__`: every scheduler, DDIM eta > 0 (eta is
    passed to every scheduler whose step takes it, as the pipeline does), a negative prompt, and per-image
    generators for the stochastic ones (ddpm, euler-a, ddim with eta > 0)."""
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = build_scheduler(scheduler, components.scheduler_config)
    pipe.set_progress_bar_config(disable=True)
    prompts, negative = ["a red ball in the snow", "a cat at night"], "a blurry photo"
    latents = initial_noise([1, 2], components.latent_shape)

    def generators():
        return [torch.Generator("cpu").manual_seed(s) for s in (10, 20)]

    ref = pipe(prompts, negative_prompt=[negative] * 2, latents=latents.clone(), num_inference_steps=6, guidance_scale=4.0,
               eta=eta, generator=generators(), height=64, width=64, output_type="latent").images
    c = components
    cond = Conditioning(encode_text(c.tokenizer, c.text_encoder, prompts), encode_text(c.tokenizer, c.text_encoder, [negative] * 2))
    out = denoise(c.unet, build_scheduler(scheduler, c.scheduler_config), latents.clone(), cond, 6, 4.0, eta=eta,
                  step_generators=generators())
    assert torch.equal(out, ref)
    other = denoise(c.unet, build_scheduler(scheduler, c.scheduler_config), latents.clone(), cond, 6, 4.5, eta=eta,
                    step_generators=generators())
    assert not torch.equal(other, ref)  # the comparison can fail: another CFG scale moves the latents


def test_decode_matches_the_pipeline_image_processor(tiny_model, components):
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model, safety_checker=None, requires_safety_checker=False)
    latents = torch.randn(2, *components.latent_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = pipe.image_processor.postprocess(pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample, output_type="np")
    ours = np.stack([np.asarray(im) for im in decode(components.vae, latents)])
    assert np.array_equal(ours, (ref * 255).round().astype(np.uint8))


def test_hook_sees_every_step_and_can_edit_latents(components):
    c = components
    prompts = ["a ball"]
    cond = Conditioning(encode_text(c.tokenizer, c.text_encoder, prompts), encode_text(c.tokenizer, c.text_encoder, [""]))
    seen = []

    def hook(step, t, latents, ctx):
        seen.append((step, int(t)))
        return latents * 0.0 if step == 0 else latents

    base = denoise(c.unet, build_scheduler("ddim", c.scheduler_config), initial_noise([3], c.latent_shape), cond, 5, 3.0)
    edited = denoise(c.unet, build_scheduler("ddim", c.scheduler_config), initial_noise([3], c.latent_shape), cond, 5, 3.0,
                     hooks=[hook])
    assert [s for s, _ in seen] == list(range(5))
    assert not torch.equal(base, edited)


def test_image_seed_depends_only_on_its_key():
    a = image_seed(0, "dog", "a {0} {1} in the snow", 0)
    assert a == image_seed(0, "dog", "a {0} {1} in the snow", 0)
    others = {image_seed(1, "dog", "a {0} {1} in the snow", 0), image_seed(0, "dog2", "a {0} {1} in the snow", 0),
              image_seed(0, "dog", "a {0} {1} on the beach", 0), image_seed(0, "dog", "a {0} {1} in the snow", 1)}
    assert a not in others and len(others) == 4


def test_initial_noise_of_an_image_is_independent_of_its_batch():
    alone = initial_noise([11], (4, 8, 8))
    batched = initial_noise([5, 11, 7], (4, 8, 8))
    assert torch.equal(alone[0], batched[1])
