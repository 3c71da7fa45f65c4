"""MODEL_CARD.md for each toy-world model: every measured figure from the files that measured it, the
evaluation's JSON (`persobench/assets/toyworld/evaluation.json`, written by `persobench toyworld eval`) and the
training times (`training/toyworld/times.json`, else the training logs); every training setting from the
stages' configs (`training/stages.py`). Nothing measured is written here.

    python -m persobench.toyworld.cards   # re-write the cards from the committed evaluation.json
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..core.atomic import write_text

TRAIN = "persobench toyworld train --stage {stage} --work training/toyworld   # resumable; add --smoke for the 1-minute test run"
DATA = ("Procedurally rendered 64x64 toy-world scenes (`persobench/toyworld/render.py`), training seeds from "
        "1,000,000 (held-out evaluation seeds from 9,000,000); 5 classes (ball, box, vase, cup, live class cat), "
        "10 colours, 4 patterns x 2 scales, 9 contexts, shiny property, hat/glasses accessories.")

MODELS = {
    "sd": ("Toy text-to-image model (Stable Diffusion architecture)", "vae,t2i,vae-decoder",
           "diffusers `StableDiffusionPipeline.from_pretrained(path)`; AutoencoderKL (64x64x3 -> 16x16x4, latents standardised "
           "per channel inside its 1x1 convs), CLIPTextModel + local CLIPTokenizer (whole-word BPE), UNet2DConditionModel "
           "(32/64/128 channels, cross-attention at 16x16 and 8x8), v-prediction, DDIM shipped with clip_sample=False, "
           "set_alpha_to_one=False, steps_offset=1. EMA weights, fp32 on disk (every part, so the plain call below needs no "
           "dtype argument). "
           "Captions omit attributes at random; {caption_dropout} caption "
           "dropout. **Auxiliary attention-localisation loss: used** from UNet step {attention_loss_from} on "
           "(`T2iConfig.attention_loss` {attention_loss}, "
           "timesteps <= {attention_loss_max_t}): the renderer's masks pull the class noun's cross-attention inside the subject "
           "and the context noun's outside it. Plain training ({plain_steps} steps) left the maps non-specific (class "
           "{plain_class} vs context {plain_context} of their mass "
           "in the mask); this world's attention-based guidance (Pick-and-Draw) therefore fares better than on a model trained "
           "without it. The VAE decoder was then fine-tuned alone (`vae-decoder` stage, encoder frozen, so the latent space the "
           "UNet learned is unchanged): {decoder_steps} steps at the encoder's {narrow_width} width, then every channel doubled "
           "function-preservingly (Net2Net: `training/vae.py::widen_vae`; the encoder's output is unchanged, its weights are "
           "duplicated) and the {wide_width} decoder trained {wide_steps} more steps (MSE + L1), then {polish_steps} on MSE "
           "alone at lr {polish_lr}."),
    "clip": ("Toy CLIP (open_clip)", "clip",
             "open_clip `create_model_and_transforms('local-dir:<folder>')`: ViT image tower (64 px, patch 8, width 128, 4 layers) "
             "+ CLIP BPE text tower (width 128, 3 layers), contrastive loss on rendered image-caption pairs (60% full captions)."),
    "dino": ("Toy DINO (timm ViT)", "dino",
             "timm `create_model('local-dir:<folder>', pretrained=True)`: ViT (64 px, patch 8, width 128, depth 4), trained "
             "instance-discriminatively (NT-Xent): two renders of one instance in other poses/contexts are positives."),
    "blip": ("Toy BLIP-Diffusion subject encoder", "blip",
             "`persobench.toyworld.models.load_subject_encoder(folder)`: the toy DINO ViT (frozen, `../dino`) + 4 learned "
             "queries with cross-attention to its tokens, projected to the text encoder's width; trained with the diffusion loss "
             "of the frozen toy t2i model on pairs (subject embeddings of render A condition the caption of render B). "
             "Trained against the t2i steps given in config.json: retrain after the t2i model changes."),
    "oracle": ("Toy oracle (timm ResNet classifier)", "oracle",
               "timm resnet10t with one softmax head per attribute (class, primary, secondary, pattern, context, accessory); "
               "heads listed in config.json. Reads ground-truth attributes off any 64 px image. `secondary` is scored on the "
               "images where the secondary colour is drawn (`secondary_shown_fraction`; a plain ball has none, a hat can "
               "cover a cat's inner ears, a colour property can repaint the primary into it); `secondary_all_images` "
               "counts every image."),
}


# What each card tells a user to run, verbatim (from the repository root); tests/test_model_cards.py
# executes every card's block as written, so a card can never promise a call that fails.
LOAD = {
    "sd": """from diffusers import StableDiffusionPipeline

pipe = StableDiffusionPipeline.from_pretrained("persobench/assets/toyworld/sd")
image = pipe("a red ball on the beach", num_inference_steps=20, guidance_scale=5.0).images[0]  # 64x64 PIL image""",
    "clip": """import open_clip
import torch
from PIL import Image

model, _, preprocess = open_clip.create_model_and_transforms("local-dir:persobench/assets/toyworld/clip")
tokenizer = open_clip.get_tokenizer("local-dir:persobench/assets/toyworld/clip")
with torch.no_grad():
    image_features = model.encode_image(preprocess(Image.new("RGB", (64, 64), "red"))[None])
    text_features = model.encode_text(tokenizer(["a red ball"]))""",
    "dino": """import timm
import torch

model = timm.create_model("local-dir:persobench/assets/toyworld/dino", pretrained=True, num_classes=0).eval()
with torch.no_grad():
    embedding = model(torch.randn(1, 3, 64, 64))  # [1, 128]: the CLS token after the final norm""",
    "oracle": """import torch
from persobench.toyworld.evaluate import load_oracle, oracle_read

model, heads = load_oracle()  # or load_oracle(Path("persobench/assets/toyworld/oracle"))
attributes = oracle_read(model, heads, torch.zeros(1, 3, 64, 64))  # images in [-1, 1], 64 px""",
    "blip": """from pathlib import Path

import torch
from persobench.toyworld.models import load_subject_encoder

encoder, config = load_subject_encoder(Path("persobench/assets/toyworld/blip"))
with torch.no_grad():
    subject_embeddings = encoder(torch.zeros(1, 3, 64, 64))  # [1, queries, text width]""",
}


def training_minutes(log: Path, stage: str) -> float | None:
    """Sum of 'steps / rate' over the progress lines a stage printed (rates are per this machine)."""
    if not log.is_file():
        return None
    pattern = re.compile(rf"\[{stage}\] step (\d+)/\d+ loss [\d.]+ ([\d.]+) it/s")
    last, seconds = None, 0.0
    for m in pattern.finditer(log.read_text()):
        step, rate = int(m.group(1)), float(m.group(2))
        if last is None or step < last:  # a run (or a resumed run) starts: count from its first report
            last = step
        elif rate > 0:
            seconds += (step - last) / rate
        last = step
    return seconds / 60 if seconds else None


def recorded_minutes(work: Path) -> dict[str, float]:
    """Training minutes per stage recorded in `<work>/times.json` (summed across sessions, whose logs
    are not committed); a stage missing there falls back to its log."""
    path = work / "times.json"
    return json.loads(path.read_text()) if path.is_file() else {}


WORK = Path("training/toyworld")  # the committed training folder: times.json, loss logs
PLAIN = "t2i_without_localisation_loss"  # evaluation.json's `history` entry: the t2i model before the loss was on


def write_cards(assets: Path, figures: dict | None = None, work: Path = WORK) -> list[Path]:
    """Write `<assets>/<model>/MODEL_CARD.md` from the evaluation JSON `<assets>/evaluation.json` (what
    `persobench toyworld eval` records beside the models); `figures` (a fresh evaluation's) take precedence."""
    from .evaluate import load_evaluation

    figures = {**load_evaluation(assets / "evaluation.json"), **(figures or {})}
    paths = []
    recorded = recorded_minutes(work)
    logs = {"sd": ("train.log", ["vae", "t2i", "vae-decoder"]), "clip": ("train-evaluators.log", ["clip"]),
            "dino": ("train-evaluators.log", ["dino"]), "oracle": ("train-evaluators.log", ["oracle"]),
            "blip": ("train-blip.log", ["blip"])}
    for name, (title, stage, arch) in MODELS.items():
        folder = assets / name
        if not folder.is_dir():
            continue
        log, stages = logs[name]
        minutes = {s: recorded.get(s) or training_minutes(work / log, s) for s in stages}
        parameters = figures.get("parameters", {}).get(name)
        lines = [f"# {title}", "", f"**Data.** {DATA}", "", f"**Architecture and loading.** {arch.format(**_settings(figures))}", "",
                 f"**Parameters.** {f'{parameters:,}' if parameters is not None else 'not measured'}", "",
                 f"**Training command.** `{TRAIN.format(stage=stage)}`", "",
                 "**Training time (one CPU core, shared machine).** "
                 + ", ".join(f"{s}: {m:.0f} min" if m else f"{s}: not logged" for s, m in minutes.items()), ""]
        if name == "sd" and figures.get("t2i_trained_steps") is not None:
            horizon = _config("t2i").steps
            lines += [f"**UNet steps trained.** {figures['t2i_trained_steps']} (schedule horizon {horizon:,})", ""]
        lines += ["## Load", "", "```python", LOAD[name], "```", "",
                  "## Measured (`persobench toyworld eval`, held-out seeds)", "", "```json",
                  json.dumps({k: v for k, v in figures.items() if _belongs(k, name)}, indent=2), "```", ""]
        path = folder / "MODEL_CARD.md"
        write_text(path, "\n".join(lines))
        paths.append(path)
    return paths


def _config(stage: str):
    from .training.stages import STAGES

    return STAGES[stage].full


def _settings(figures: dict) -> dict[str, str]:
    """The values the architecture texts name: training settings from the stages' configs, and the attention
    figures of the t2i model trained without the localisation loss from the evaluation JSON's `history`."""
    t2i, decoder = _config("t2i"), _config("vae-decoder")
    plain = figures.get("history", {}).get(PLAIN, {})
    mass = plain.get("attention_mass_in_mask", {})
    narrow = list(_narrow_vae_channels())
    return {
        "caption_dropout": f"{t2i.caption_dropout:.0%}",
        "attention_loss_from": f"{t2i.attention_loss_from:,}",
        "attention_loss": f"{t2i.attention_loss:g}",
        "attention_loss_max_t": f"{t2i.attention_loss_max_t}",
        "plain_steps": f"{plain['t2i_trained_steps']:,}" if "t2i_trained_steps" in plain else "?",
        "plain_class": f"{mass['class_word']:.2f}" if "class_word" in mass else "not measured",
        "plain_context": f"{mass['context_word']:.2f}" if "context_word" in mass else "not measured",
        "decoder_steps": f"{decoder.steps:,}",
        "wide_steps": f"{decoder.wide_steps:,}",
        "polish_steps": f"{decoder.polish_steps:,}",
        "polish_lr": f"{decoder.polish_lr:.0e}".replace("e-0", "e-"),
        "narrow_width": "/".join(str(c) for c in narrow),
        "wide_width": "/".join(str(2 * c) for c in narrow),
    }


def _narrow_vae_channels() -> tuple[int, ...]:
    from .training.architectures import make_vae

    return tuple(make_vae(tiny=False).config.block_out_channels)


def _belongs(key: str, model: str) -> bool:
    return {"sd": key.startswith(("vae", "generator", "attention", "t2i")), "clip": key.startswith("clip"),
            "dino": key.startswith("dino"), "oracle": key.startswith("oracle"), "blip": key.startswith("blip")}[model]


if __name__ == "__main__":
    import argparse

    from ..core.components import ASSETS

    parser = argparse.ArgumentParser(description="Re-write the toy-world model cards from the evaluation JSON beside the models.")
    parser.add_argument("--assets", type=Path, default=ASSETS)
    parser.add_argument("--work", type=Path, default=WORK, help="the training folder with times.json")
    args = parser.parse_args()
    for card in write_cards(args.assets, None, args.work):
        print(f"wrote {card}")
