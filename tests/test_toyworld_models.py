"""The shipped toy-world models load offline through the libraries' own loaders, and the training
code's smoke configuration reproduces loadable models of every stage."""

import json
import shutil

import numpy as np
import pytest
import torch

from persobench.core.components import ASSETS


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_text_to_image_model_loads_in_plain_diffusers_and_samples():
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(ASSETS / "sd", torch_dtype=torch.float32)
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.scheduler.config.clip_sample is False and pipe.scheduler.config.prediction_type == "v_prediction"
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a red ball on the beach", num_inference_steps=4, height=64, width=64, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.shape == (64, 64, 3) and np.isfinite(image).all() and image.std() > 0.02
    assert len(pipe.tokenizer("a sks cat wearing pink glasses").input_ids) == 8  # whole-word tokens


def test_clip_loads_with_open_clip_and_ranks_its_caption_first():
    import open_clip

    from persobench.toyworld.render import render
    from persobench.toyworld.training.common import to_tensor
    from persobench.toyworld.world import Identity, Pose, Scene

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{ASSETS / 'clip'}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{ASSETS / 'clip'}")
    scene = Scene(Identity("ball", "red", "white", "plain", "coarse", 0.0), Pose(0.5, 0.55, 0.3, 0.0, False), "beach", seed=1)
    x = to_tensor(render(scene).image[None])
    with torch.no_grad():
        img = model.encode_image(x)
        txt = model.encode_text(tokenizer(["a red ball on the beach", "a blue cup in the snow", "a green cat at night"]))
    assert (img @ txt.T).argmax().item() == 0


@pytest.mark.parametrize("name", ["dino", "oracle"])
def test_timm_models_load_offline(name):
    import timm

    model = timm.create_model(f"local-dir:{ASSETS / name}", pretrained=True).eval()
    with torch.no_grad():
        out = model(torch.zeros(2, 3, 64, 64))
    config = json.loads((ASSETS / name / "config.json").read_text())
    # a classifier returns its logits; a headless model (num_classes 0, the DINO) its pooled features
    assert tuple(out.shape) == (2, config["num_classes"] or config["num_features"])
    assert torch.isfinite(out).all() and out.std() > 0
    if name == "oracle":
        assert sum(len(v) for v in config["heads"].values()) == out.shape[1]


@pytest.mark.parametrize("name", ["sd", "clip", "dino", "oracle", "blip"])
def test_every_model_has_a_card_with_figures(name):
    card = (ASSETS / name / "MODEL_CARD.md").read_text()
    assert "Training command" in card and "Parameters" in card and "```json" in card


def test_smoke_training_of_the_generator_gives_a_loadable_pipeline(tmp_path):
    from diffusers import StableDiffusionPipeline

    from persobench.toyworld.training.stages import run_stages

    run_stages("vae,t2i", tmp_path / "out", tmp_path / "work", smoke=True)
    from persobench.toyworld.training.loop import checkpoints

    assert checkpoints(tmp_path / "work" / "t2i") and (tmp_path / "work" / "t2i.loss.jsonl").is_file()
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "out" / "sd")
    assert pipe.unet.config.sample_size == 16
    # a finished stage resumed from its checkpoint trains no step again (a restart would log them anew)
    lines_before = (tmp_path / "work" / "t2i.loss.jsonl").read_text().splitlines()
    run_stages("t2i", tmp_path / "out", tmp_path / "work", smoke=True)
    assert (tmp_path / "work" / "t2i.loss.jsonl").read_text().splitlines() == lines_before
    assert checkpoints(tmp_path / "work" / "t2i")[-1][0] == 30
    # the switchable localisation loss is on from step 15 in the smoke configuration, and logged
    logged = [json.loads(line) for line in lines_before]
    assert logged[-1]["step"] == 25 and 0 <= logged[-1]["localisation"] <= 1


def test_decoder_fine_tune_keeps_the_latent_space(tmp_path):
    from diffusers import AutoencoderKL

    from persobench.toyworld.training.common import rendered_set, to_tensor
    from persobench.toyworld.training.stages import run_stages

    run_stages("vae", tmp_path / "out", tmp_path / "work", smoke=True)
    folder = tmp_path / "out" / "sd" / "vae"
    before = AutoencoderKL.from_pretrained(folder).eval()
    run_stages("vae-decoder", tmp_path / "out", tmp_path / "work", smoke=True)
    after = AutoencoderKL.from_pretrained(folder).eval()
    assert list(after.config.block_out_channels) == [2 * c for c in before.config.block_out_channels]
    x = to_tensor(rendered_set(8, 5_000_000)[1])
    with torch.no_grad():
        z = before.encode(x).latent_dist.mean
        assert torch.allclose(after.encode(x).latent_dist.mean, z, atol=1e-4)  # the t2i model's latents stay valid
        assert (after.decode(z).sample - before.decode(z).sample).abs().mean() > 1e-3  # the decoder was trained
    # a finished checkpoint meeting a stale (narrow) folder re-exports the wide decoder it holds
    before.save_pretrained(folder)
    run_stages("vae-decoder", tmp_path / "out", tmp_path / "work", smoke=True)
    again = AutoencoderKL.from_pretrained(folder)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in after.state_dict().items())
    # a wide folder without the checkpoint that made it is not widened twice
    shutil.rmtree(tmp_path / "work" / "vae-decoder")
    with pytest.raises(ValueError, match="already holds a widened decoder"):
        run_stages("vae-decoder", tmp_path / "out", tmp_path / "work", smoke=True)


def test_widening_preserves_the_vae_function():
    from persobench.toyworld.training.architectures import make_vae
    from persobench.toyworld.training.vae import widen_vae

    torch.manual_seed(0)
    vae = make_vae(tiny=True).eval()
    for p in vae.parameters():  # away from the default init, so a wrong split shows
        p.data.add_(0.1 * torch.randn_like(p))
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    exact, noisy = widen_vae(vae, noise=0.0).eval(), widen_vae(vae, noise=0.05).eval()
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mean
        assert torch.allclose(exact.encode(x).latent_dist.mean, z, atol=1e-4)
        assert torch.allclose(noisy.encode(x).latent_dist.mean, z, atol=1e-4)  # noise goes to the decoder only
        ref = vae.decode(z).sample
        assert torch.allclose(exact.decode(z).sample, ref, atol=1e-4)
        assert 0 < (noisy.decode(z).sample - ref).abs().mean() < 0.1 * ref.abs().mean()
    assert sum(p.numel() for p in exact.decoder.parameters()) > 3 * sum(p.numel() for p in vae.decoder.parameters())


def test_localisation_loss_rewards_word_specific_maps():
    from persobench.toyworld.training.t2i import localisation_loss

    masks = torch.zeros(1, 1, 4, 4)
    masks[..., :2, :2] = 1  # the subject covers the top-left quarter
    inside, outside = torch.tensor([7]), torch.tensor([9])
    ids = torch.tensor([[0, 7, 9, 1]])  # BOS, class noun, context noun, EOS
    specific = torch.full((1, 16, 4), 1 / 16)
    on_subject = masks.flatten(1)[0] / 4
    specific[0, :, 1] = on_subject  # class noun: all mass on the subject
    specific[0, :, 2] = (1 - masks.flatten(1)[0]) / 12  # context noun: all mass off it
    same_map = specific.clone()
    same_map[0, :, 2] = on_subject  # the context noun points at the subject too (the failure it fixes)
    valid = torch.tensor([True])
    assert localisation_loss({"l": specific}, ids, masks, valid, inside, outside) < 1e-6
    assert localisation_loss({"l": same_map}, ids, masks, valid, inside, outside) == pytest.approx(0.5)
    assert localisation_loss({"l": same_map}, ids, masks, torch.tensor([False]), inside, outside) == 0  # too noisy: no target


def test_blip_subject_encoder_matches_the_shipped_generator():
    from persobench.toyworld.models import load_subject_encoder

    encoder, config = load_subject_encoder(ASSETS / "blip")
    assert config["trained_against_t2i_steps"] == int((ASSETS / "sd" / "TRAINED_STEPS").read_text())  # retrain after t2i changes
    with torch.no_grad():
        out = encoder(torch.zeros(1, 3, 64, 64))
    assert out.shape == (1, config["num_queries"], config["text_dim"])


def test_training_minutes_count_a_resumed_run_from_its_first_report(tmp_path):
    from persobench.toyworld.cards import training_minutes

    log = tmp_path / "train.log"
    log.write_text("[t2i] step 5025/40000 loss 0.2 0.5 it/s eta 1 min\r[t2i] step 5085/40000 loss 0.2 0.5 it/s eta 1 min\n"
                   "[t2i] step 25/40000 loss 0.2 1.0 it/s eta 1 min\n[t2i] step 85/40000 loss 0.2 1.0 it/s eta 1 min\n")
    assert training_minutes(log, "t2i") == pytest.approx((60 / 0.5 + 60 / 1.0) / 60)


def test_eval_checks_each_measured_figure_against_its_bar():
    from persobench.toyworld.evaluate import check_bars

    bars = check_bars({"vae_psnr_db": 27.9, "oracle_accuracy": {"class": 0.99, "secondary": 0.94},
                       "attention_mass_in_mask": {"class_word": 0.98, "context_word": 0.6}})
    assert bars["vae psnr db"] == {"value": 27.9, "goal": 28.0, "met": False}
    assert bars["oracle class"]["met"] and not bars["oracle secondary"]["met"]
    assert bars["class word mass in mask"]["met"] and not bars["context word mass in mask"]["met"]
    assert "generator class" not in bars and "dino auroc" not in bars  # not measured: not claimed
