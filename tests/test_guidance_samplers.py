"""Pick-and-Draw on every scheduler persobench offers: the template is the vanilla trajectory (same
noise, same eta, same per-image step noise), the palette is the reference inverted at exactly the
timesteps the sampler visits, and a guided run completes and changes the image."""

import dataclasses

import pytest
import torch

from persobench.core.components import load_components
from persobench.core.config import DatasetConfig, ModelConfig, load_config
from persobench.core.errors import UserError
from persobench.core.images import encode_images
from persobench.core.sampling import Conditioning, denoise, encode_text
from persobench.core.schedulers import build_scheduler
from persobench.core.seeding import initial_noise
from persobench.datasets import datasets
from persobench.guidance.inversion import invert, reconstruct
from persobench.guidance.layout_math import layout_loss
from persobench.harness.guided import build_hooks, palette_key, reference_palette
from persobench.methods import methods

SCHEDULERS = ["ddim", "ddpm", "pndm", "dpm++", "euler", "euler-a"]
DETERMINISTIC = ["ddim", "pndm", "dpm++", "euler"]
SEEDS = [1, 2]
STEPS = 4


@pytest.fixture(scope="module")
def components(tiny_model):
    return load_components(ModelConfig(source=str(tiny_model), device="cpu"))


@pytest.fixture(scope="module")
def ball():
    return next(s for s in datasets.get("toybench")(DatasetConfig()).subjects if s.name == "ball1")


@pytest.fixture(scope="module")
def fitted(components, ball, tmp_path_factory):
    return methods.get("vanilla-sd")({}, components).fit(ball, tmp_path_factory.mktemp("fit"), 0)


def step_generators(seeds):
    """The runner's per-image step generators (runner.generate)."""
    return [torch.Generator("cpu").manual_seed(s ^ 0x5EED) for s in seeds]


def make_hook(fitted, tmp_path, scheduler, *overrides):
    cfg = load_config(None, ["guidance.name=pick-and-draw", f"sampler.steps={STEPS}", f"sampler.scheduler={scheduler}",
                             *overrides])
    prompts, templates = [fitted.prompt("a {0} {1} on the beach")] * 2, ["a {0} {1} on the beach"] * 2
    cond = fitted.encode(prompts)
    latents = initial_noise(SEEDS, fitted.components.latent_shape)
    palette = reference_palette(fitted, cfg, "k", tmp_path / "inv") if cfg.guidance.palette_term() else None
    (hook,) = build_hooks("pick-and-draw", cfg, fitted, prompts, templates, cond, latents, palette,
                          step_seeds=[s ^ 0x5EED for s in SEEDS])
    return cfg, hook, latents


@pytest.mark.parametrize("scheduler, eta", [(s, 0.0) for s in SCHEDULERS] + [("ddim", 0.7)])
def test_template_is_the_vanilla_trajectory_on_every_scheduler(fitted, tmp_path, scheduler, eta):
    """Step by step, the template (its rows riding in the main CFG batch) equals an unguided vanilla
    run of the template prompt from the same seed, eta and per-image step noise."""
    c = fitted.components
    # appearance on: the main prompt here is the template's own (vanilla), so the layout term alone sits at its
    # minimum (the guided image is its template) and, its norm smoothed at 0, pushes nothing; appearance moves it
    cfg, hook, z = make_hook(fitted, tmp_path, scheduler, "guidance.steps=[0, 1.0]",
                             f"sampler.eta={eta}", "guidance.step_size=[50, 50]",
                             "guidance.layout.resolution_weighting=equal")  # a visible push on the tiny random model
    assert hook.wrap_denoiser(c.unet) is not c.unet  # the shared-template path
    seen = []
    advance = hook._advance_template
    hook._advance_template = lambda pred, t: (advance(pred, t), seen.append(hook.template_latents.clone()))
    guided = denoise(c.unet, build_scheduler(scheduler, c.scheduler_config), z, hook.inp.cond, STEPS, 5.0, eta, [hook],
                     step_generators(SEEDS))
    before = []  # each step's input latents (a hook that records and changes nothing)
    plain = denoise(c.unet, build_scheduler(scheduler, c.scheduler_config), z, hook.inp.template_cond, STEPS, 5.0, eta,
                    hooks=[lambda i, t, x, ctx: before.append(x.clone()) or x], step_generators=step_generators(SEEDS))
    vanilla = before[1:] + [plain]  # the latents after each step
    assert len(seen) == len(vanilla) == len(hook.template_scheduler.timesteps)
    for i, (a, b) in enumerate(zip(seen, vanilla)):
        assert torch.allclose(a, b, atol=1e-4), (i, (a - b).abs().max())
    assert not torch.allclose(guided, plain, atol=1e-2)  # guidance moved the main rows, not the template


def _reference(components, ball):
    c = components
    z0 = encode_images(c, ball.images()[:1])
    cond = Conditioning(encode_text(c.tokenizer, c.text_encoder, ["a photo of a ball"]),
                        encode_text(c.tokenizer, c.text_encoder, [""]))
    return z0, cond


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_inversion_serves_its_sampler(components, ball, scheduler):
    """One palette latent per sampler step; for a deterministic sampler, sampling (conditional only)
    from the inverted z_T feeds the UNet the palette latents at every step and lands near the
    reference. An ancestral sampler's palette is its deterministic sibling's (same noise levels, up to
    the clean end point)."""
    c = components
    z0, cond = _reference(c, ball)
    sched = build_scheduler(scheduler, c.scheduler_config)
    inv = invert(c.unet, sched, z0, cond, STEPS, 1.0, "ddim")
    sched.set_timesteps(STEPS)
    assert len(inv.trajectory) == len(sched.timesteps)
    assert torch.equal(inv.timesteps, sched.timesteps)
    if scheduler in DETERMINISTIC:
        fed: list[torch.Tensor] = []
        out = reconstruct(c.unet, build_scheduler(scheduler, c.scheduler_config), inv.trajectory[0], cond, 1.0, STEPS,
                          model_inputs=fed)
        assert len(fed) == len(inv.trajectory)
        for i, x in enumerate(fed):  # the UNet's input at step i is nearest to the palette at timestep t_i
            dist = torch.stack([(x - z).norm() for z in inv.trajectory])
            nearest = int(dist.argmin())
            assert inv.timesteps[nearest] == inv.timesteps[i], (i, dist)
        # the tiny random UNet inverts coarsely in 4 steps; from fresh noise it lands far further away
        fresh = reconstruct(c.unet, build_scheduler(scheduler, c.scheduler_config), torch.randn_like(z0), cond, 1.0, STEPS)
        assert (out - z0).norm() < 0.6 * (fresh - z0).norm(), ((out - z0).norm(), (fresh - z0).norm())
    else:
        sibling = {"ddpm": "ddim", "euler-a": "euler"}[scheduler]
        ref = invert(c.unet, build_scheduler(sibling, c.scheduler_config), z0, cond, STEPS, 1.0, "ddim")
        assert torch.equal(inv.timesteps.float(), ref.timesteps.float())
        for a, b in zip(inv.trajectory, ref.trajectory):  # DDPM ends at alpha_bar 1, DDIM at alphas_cumprod[0]
            assert ((a - b).norm() / b.norm()).item() < 0.1


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_guided_run_completes_and_changes_the_image(fitted, tmp_path, scheduler):
    c = fitted.components
    cfg, hook, z = make_hook(fitted, tmp_path, scheduler, "guidance.step_size=[200, 100]")
    guided = denoise(c.unet, build_scheduler(scheduler, c.scheduler_config), z, hook.inp.cond, STEPS, 5.0, 0.0, [hook],
                     step_generators(SEEDS))
    hook.finish()
    plain = denoise(c.unet, build_scheduler(scheduler, c.scheduler_config), z, hook.inp.cond, STEPS, 5.0, 0.0,
                    step_generators=step_generators(SEEDS))
    assert torch.isfinite(guided).all()
    assert (guided - plain).abs().mean() > 1e-3 * plain.abs().mean()


def test_null_text_palette_differs_from_ddim(fitted, tmp_path):
    """guidance.inversion=null_text changes what guidance sees: the palette is the CFG trajectory with
    the optimised null embeddings, not the plain DDIM inversion."""
    trajectories = {}
    for kind in ("ddim", "null_text"):
        cfg = load_config(None, ["guidance.name=pick-and-draw", f"sampler.steps={STEPS}", f"guidance.inversion={kind}",
                                 "guidance.null_text_iterations=3"])
        trajectories[kind] = reference_palette(fitted, cfg, "k", tmp_path / "inv").trajectory
    a, b = trajectories["ddim"], trajectories["null_text"]
    assert len(a) == len(b)
    assert torch.equal(a[0], b[0])  # both start from the DDIM-inverted z_T
    assert max((x - y).abs().max().item() for x, y in zip(a, b)) > 1e-3


def test_palette_cache_key_names_dtype_and_negative_prompt(components):
    """What changes the inverted trajectory is in the palette's cache key: the model's dtype and the
    negative prompt (null-text's starting embedding and CFG's uncond) besides scheduler and steps."""
    cfg = load_config(None, ["guidance.name=pick-and-draw"])
    base = palette_key(cfg, components, "k", "subject-hash", "a photo of a ball", 1)
    half = dataclasses.replace(components, dtype=torch.bfloat16)
    assert palette_key(cfg, half, "k", "subject-hash", "a photo of a ball", 1) != base
    neg = load_config(None, ["guidance.name=pick-and-draw", "sampler.negative_prompt=blurry"])
    assert palette_key(neg, components, "k", "subject-hash", "a photo of a ball", 1) != base
    euler = load_config(None, ["guidance.name=pick-and-draw", "sampler.scheduler=euler"])
    assert palette_key(euler, components, "k", "subject-hash", "a photo of a ball", 1) != base


def _blobs(side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same two Gaussian blobs (one moved) drawn at resolution `side`."""
    ax = (torch.arange(side) + 0.5) / side
    y, x = torch.meshgrid(ax, ax, indexing="ij")

    def blob(cx, cy):
        return torch.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * 0.1**2))[None]

    return blob(0.3, 0.4), blob(0.6, 0.5)


def test_layout_resolution_weighting_knob():
    """'sum' (maps normalised to sum 1, plain Frobenius) makes a 64x64 layer count 4x less than a
    16x16 one showing the same disagreement; 'equal' (per-pixel RMS of mean-1 maps) counts both the same."""
    (g16, t16), (g64, t64) = _blobs(16), _blobs(64)
    ratio = {}
    for w in ("sum", "equal"):
        low = layout_loss([g16], [t16], 3, 0.5, w).item()
        high = layout_loss([g64], [t64], 3, 0.5, w).item()
        ratio[w] = high / low
    assert ratio["sum"] == pytest.approx(0.25, rel=0.1), ratio
    assert ratio["equal"] == pytest.approx(1.0, rel=0.1), ratio
    assert load_config(None, []).guidance.layout.resolution_weighting == "sum"  # the scale the defaults are tuned at
    with pytest.raises(UserError, match="resolution_weighting"):
        load_config(None, ["guidance.layout.resolution_weighting=area"])


def test_null_text_without_cfg_is_refused():
    """Null-text inversion optimises the unconditional embedding CFG mixes in; with CFG off it would
    silently be DDIM inversion, so config validation refuses it before any model loads."""
    with pytest.raises(UserError, match="null_text needs sampler.cfg_scale > 1"):
        load_config(None, ["guidance.name=pick-and-draw", "guidance.inversion=null_text", "sampler.cfg_scale=1"])
    load_config(None, ["guidance.name=none", "guidance.inversion=null_text", "sampler.cfg_scale=1"])


@pytest.mark.parametrize("skip_prk", [False, True])
def test_guidance_skips_exactly_the_pndm_iterations_that_ignore_their_sample(skip_prk):
    """An edit of z_t is only worth making where the scheduler steps from it: PNDM's Runge-Kutta sub-steps
    and its second PLMS iteration step from a sample kept earlier. Checked against the scheduler itself:
    at each iteration, does the step's result change when the given sample changes?"""
    import json

    from diffusers import PNDMScheduler

    from persobench.core.components import ASSETS
    from persobench.guidance.pick_and_draw import _discards_sample

    config = json.loads((ASSETS / "sd" / "scheduler" / "scheduler_config.json").read_text()) | {"skip_prk_steps": skip_prk}
    sched = PNDMScheduler.from_config(config)
    sched.set_timesteps(6)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 4, 4, generator=g)
    predicted, observed = [], []
    for t in sched.timesteps:
        out = torch.randn(1, 4, 4, 4, generator=g)
        predicted.append(_discards_sample(sched))
        probe = PNDMScheduler.from_config(config)
        probe.set_timesteps(6)
        probe.__dict__.update({k: (v.copy() if isinstance(v, list) else v) for k, v in sched.__dict__.items() if k != "config"})
        a = probe.step(out, t, x, return_dict=False)[0]
        probe.__dict__.update({k: (v.copy() if isinstance(v, list) else v) for k, v in sched.__dict__.items() if k != "config"})
        b = probe.step(out, t, x + 1.0, return_dict=False)[0]
        observed.append(torch.equal(a, b))
        x = sched.step(out, t, x, return_dict=False)[0]
    assert predicted == observed
    assert any(observed) and not all(observed)
