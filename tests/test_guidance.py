import numpy as np
import ot
import pandas as pd
import pytest
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter

from persobench.core.components import load_components
from persobench.core.config import DatasetConfig, ModelConfig, load_config
from persobench.core.errors import UserError
from persobench.core.images import encode_images
from persobench.core.sampling import Conditioning, encode_text
from persobench.core.schedulers import build_scheduler
from persobench.core.seeding import initial_noise
from persobench.datasets import datasets
from persobench.guidance.inversion import invert
from persobench.guidance.layout_math import smooth
from persobench.guidance.uremd import cosine_distance, uremd
from persobench.harness.guided import build_hooks, reference_palette
from persobench.harness.runner import run
from persobench.methods import methods


def test_uremd_matches_brute_force_and_bounds():
    g = torch.Generator().manual_seed(0)
    gen, pal = torch.randn(1, 7, 5, generator=g), torch.randn(9, 5, generator=g)
    ones_g, ones_p = torch.ones(1, 7), torch.ones(9)
    d = cosine_distance(gen[0], pal).numpy()
    brute = np.mean([min(d[i, j] for j in range(9)) for i in range(7)])
    assert uremd(gen, ones_g, pal, ones_p, "gen_to_ref").item() == pytest.approx(brute, abs=1e-6)
    back = np.mean([min(d[i, j] for i in range(7)) for j in range(9)])
    assert uremd(gen, ones_g, pal, ones_p, "ref_to_gen").item() == pytest.approx(back, abs=1e-6)
    emd = ot.emd2(np.full(7, 1 / 7), np.full(9, 1 / 9), d.astype(np.float64))
    assert uremd(gen, ones_g, pal, ones_p, "both").item() <= emd + 1e-6  # relaxed EMD is a lower bound
    mask = torch.tensor([[1, 1, 0, 0, 1, 0, 0]], dtype=torch.float32)  # masked features are ignored
    subset = np.mean([d[i].min() for i in (0, 1, 4)])
    assert uremd(gen, mask, pal, ones_p).item() == pytest.approx(subset, abs=1e-6)


def test_uremd_is_zero_when_generated_features_are_in_the_palette():
    pal = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    assert uremd(pal[None, [0, 2, 5]], torch.ones(1, 3), pal, torch.ones(6)).item() == pytest.approx(0, abs=1e-6)


def test_gaussian_smoothing_equals_scipy():
    x = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(2))
    ref = np.stack([gaussian_filter(a, sigma=0.5, mode="mirror", truncate=2.0) for a in x.numpy()])
    assert np.allclose(smooth(x, 3, 0.5).numpy(), ref, atol=1e-6)


@pytest.fixture(scope="module")
def components(tiny_model):
    return load_components(ModelConfig(source=str(tiny_model), device="cpu"))


@pytest.fixture(scope="module")
def ball(tmp_path_factory):
    return next(s for s in datasets.get("toybench")(DatasetConfig()).subjects if s.name == "ball1")


def guided_hook(components, ball, tmp_path, *overrides):
    cfg = load_config(None, ["guidance.name=pick-and-draw", "sampler.steps=6", *overrides])
    fitted = methods.get("vanilla-sd")({}, components).fit(ball, tmp_path, 0)
    prompts, templates = [fitted.prompt("a {0} {1} on the beach")] * 2, ["a {0} {1} on the beach"] * 2
    cond = fitted.encode(prompts)
    latents = initial_noise([1, 2], components.latent_shape)
    palette = reference_palette(fitted, cfg, "k", tmp_path / "inv") if cfg.guidance.palette_term() else None
    (hook,) = build_hooks("pick-and-draw", cfg, fitted, prompts, templates, cond, latents, palette)
    return hook, latents


@pytest.mark.parametrize("term", ["appearance", "layout"])
def test_one_guided_step_lowers_its_loss(components, ball, tmp_path, term):
    other = "layout" if term == "appearance" else "appearance"
    hook, z = guided_hook(components, ball, tmp_path, f"guidance.{other}.enabled=false")
    scheduler = build_scheduler("ddim", components.scheduler_config)
    scheduler.set_timesteps(6)
    t = scheduler.timesteps[0]
    hook.template_latents = initial_noise([7, 8], components.latent_shape)  # a template that differs from z
    hook.cfg_scale = 5.0
    template = hook._template(0, t) if term == "layout" else {}
    states = hook.prepare(0, t, template)
    with torch.enable_grad():
        z0 = z.clone().requires_grad_(True)
        score, before = hook.score(z0, t, states, torch.float32)
        (grad,) = torch.autograd.grad(score.sum(), z0)
        after, after_losses = hook.score(z - 0.1 * grad / grad.abs().max(), t, states, torch.float32)
    assert list(before) == [term]  # the other term is disabled: not computed
    before_loss, after_loss = before[term], after_losses[term]
    assert (after_loss < before_loss).all(), (before_loss, after_loss)


def test_template_sharing_the_main_batch_equals_a_separate_template(components, ball, tmp_path):
    """Where the template network is the sampled one, its forward rides in the main batch; the
    guided images must match a run whose template network is a separate (identical) module."""
    import copy

    from persobench.core.sampling import denoise

    cond_hook, z = guided_hook(components, ball, tmp_path)
    shared = denoise(components.unet, build_scheduler("ddim", components.scheduler_config), z, cond_hook.inp.cond, 6, 5.0,
                     hooks=[cond_hook])
    assert cond_hook.wrap_denoiser(components.unet) is not components.unet
    separate_hook, _ = guided_hook(components, ball, tmp_path)
    separate_hook.inp.template_unet = copy.deepcopy(components.unet)
    assert separate_hook.wrap_denoiser(components.unet) is components.unet
    separate = denoise(components.unet, build_scheduler("ddim", components.scheduler_config), z, separate_hook.inp.cond, 6,
                       5.0, hooks=[separate_hook])
    assert torch.allclose(shared, separate, atol=1e-4), (shared - separate).abs().max()
    assert not cond_hook.pending_template  # every template step computed ahead was used


@pytest.mark.parametrize("steps", ["[0, 1.0]", "[0.5, 1.0]"])
def test_template_is_the_vanilla_trajectory_from_the_same_noise(components, ball, tmp_path, steps):
    """Whatever the guided range, the layout template is the vanilla model sampled from the same
    initial noise with the template prompt (advanced from step 0, also before a later range)."""
    from persobench.core.sampling import denoise

    hook, z = guided_hook(components, ball, tmp_path, f"guidance.steps={steps}")
    denoise(components.unet, build_scheduler("ddim", components.scheduler_config), z, hook.inp.cond, 6, 5.0, hooks=[hook])
    vanilla = denoise(components.unet, build_scheduler("ddim", components.scheduler_config), z, hook.inp.template_cond, 6, 5.0)
    assert torch.allclose(hook.template_latents, vanilla, atol=1e-4), (hook.template_latents - vanilla).abs().max()


def test_guidance_off_is_bit_identical_and_zero_weights_change_no_image(make_config):
    """Guidance off (the unguided rows of a compare run) reproduces the plain loop bit for bit; with both
    weights 0 guidance only computes, and images equal the plain loop's up to the rounding of the
    template rows sharing the main forward's batch (at most one 8-bit level)."""
    plain = run(make_config("dataset.subjects=[ball1]"))
    guided = run(make_config("dataset.subjects=[ball1]", "guidance.name=pick-and-draw", "guidance.compare_unguided=true",
                             "guidance.appearance.weight=0", "guidance.layout.weight=0", "name=guided"))
    a = pd.read_parquet(plain / "records.parquet").sort_values(["prompt_index", "index"])
    b = pd.read_parquet(guided / "records.parquet")
    assert set(b["guidance"]) == {"none", "pick-and-draw"}

    def pixels(point, image):
        return np.asarray(Image.open(point.parent.parent / image), int)

    for g, exact in (("none", True), ("pick-and-draw", False)):
        rows = b[b["guidance"] == g].sort_values(["prompt_index", "index"])
        assert len(rows) == len(a)
        for x, y in zip(a["image"], rows["image"]):
            diff = np.abs(pixels(plain, x) - pixels(guided, y)).max()
            assert diff == 0 if exact else diff <= 1, (g, diff)


def test_guidance_runs_on_every_method_and_changes_images(make_config):
    cfg = make_config("methods=[vanilla-sd, textual-inversion, dreambooth-lora]", "dataset.subjects=[cat1]",
                      "method_params={textual-inversion: {steps: 2, batch_size: 2}, dreambooth-lora: {steps: 2, batch_size: 2, rank: 2}}",
                      "guidance.name=pick-and-draw", "guidance.step_size=[200, 100]")
    point = run(cfg)
    frame = pd.read_parquet(point / "records.parquet")
    assert frame.groupby(["method", "guidance"]).size().to_dict() == {
        (m, g): 4 for m in ("vanilla-sd", "textual-inversion", "dreambooth-lora") for g in ("none", "pick-and-draw")}
    root = point.parent.parent
    for method, rows in frame.groupby("method"):
        off = rows[rows["guidance"] == "none"].sort_values(["prompt_index", "index"])
        on = rows[rows["guidance"] == "pick-and-draw"].sort_values(["prompt_index", "index"])
        assert (off["seed"].to_numpy() == on["seed"].to_numpy()).all()  # same initial noise
        diff = [np.abs(np.asarray(Image.open(root / a), int) - np.asarray(Image.open(root / b), int)).mean()
                for a, b in zip(off["image"], on["image"])]
        assert max(diff) > 0.5, method


def test_null_text_inversion_reconstructs_better_than_ddim(components, ball):
    c = components
    z0 = encode_images(c, ball.images()[:1])
    prompt = ["a photo of a ball"]
    cond = Conditioning(encode_text(c.tokenizer, c.text_encoder, prompt), encode_text(c.tokenizer, c.text_encoder, [""]))
    errors = {}
    for kind in ("ddim", "null_text"):
        inv = invert(c.unet, build_scheduler("ddim", c.scheduler_config), z0, cond, 8, 5.0, kind, iterations=10, lr=1e-2,
                     with_reconstruction=True)
        errors[kind] = float((inv.reconstruction - z0).pow(2).mean())
        assert len(inv.trajectory) == 8
    assert errors["null_text"] < errors["ddim"], errors


@pytest.mark.parametrize("override, message", [
    ("guidance.appearance.tau=1.5", "tau must be in (0, 1)"),
    ("guidance.appearance.layers=[up_blocks.7.attn2]", "unknown cross-attention layer or group"),
    ("guidance.appearance.subject_token=identifier", "has no identifier"),
    ("guidance.steps=[0.6, 0.2]", "guidance.steps must be"),
    ("guidance.name=pick-and-paint", "unknown guidance 'pick-and-paint'"),
])
def test_guidance_bad_settings(make_config, override, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run(make_config("dataset.subjects=[ball1]", "guidance.name=pick-and-draw", override))


def test_prompt_without_subject_is_refused(components, ball, tmp_path):
    cfg = load_config(None, ["guidance.name=pick-and-draw", "sampler.steps=4"])
    fitted = methods.get("vanilla-sd")({}, components).fit(ball, tmp_path, 0)
    prompts = ["a photo of the beach"]
    with pytest.raises(UserError, match="has no subject token"):
        build_hooks("pick-and-draw", cfg, fitted, prompts, ["a photo of the beach"], fitted.encode(prompts),
                    initial_noise([1], components.latent_shape), None)


def test_layout_distance_is_the_plain_norm_except_at_rounding_level():
    """Real disagreements keep the plain Frobenius norm (value and gradient); a rounding-level difference (a
    template recorded in another batch) counts as none, so it pushes nothing (its unit gradient was noise)."""
    from persobench.guidance.layout_math import NORM_FLOOR, layer_distance, normalised, smooth

    g = torch.Generator().manual_seed(0)
    gen = torch.rand(2, 64, 64, generator=g).requires_grad_(True)
    tpl = torch.rand(2, 64, 64, generator=g)
    d = layer_distance(gen, tpl, 3, 0.5, "sum")
    plain = (normalised(smooth(gen, 3, 0.5)) - normalised(smooth(tpl, 3, 0.5))).flatten(1).norm(dim=-1)
    assert torch.equal(d, plain) and (d > 1e-3).all()
    (grad,) = torch.autograd.grad(d.sum(), gen)
    (plain_grad,) = torch.autograd.grad(plain.sum(), gen)
    assert torch.equal(grad, plain_grad)
    near = (tpl + 1e-9 * torch.randn(2, 64, 64, generator=g)).requires_grad_(True)
    d0 = layer_distance(near, tpl, 3, 0.5, "sum")
    (grad0,) = torch.autograd.grad(d0.sum(), near)
    assert (d0 == 0).all() and (grad0 == 0).all() and NORM_FLOOR < 1e-3
