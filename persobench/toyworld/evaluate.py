"""`persobench toyworld eval`: the toy world's quality figures, on held-out seeds.

Each figure is the one its model card states and the toy-world issue sets a bar for:
VAE PSNR; generator class / context accuracy read by the oracle over 200 samples with the default
sampler; cross-attention word-specificity (each word's map mass inside the subject mask); CLIP
caption->image top-1 among 100 images; DINO AUROC (same instance vs another instance of the class);
oracle attribute accuracy; parameter counts; and (stage `blip`, from a finished run of
configs/toy/per_subject.yaml) the toy BLIP-Diffusion encoder's identity against vanilla SD.

`evaluate_all` records its figures in `persobench/assets/toyworld/evaluation.json`, beside the models it
measured (figures of stages not evaluated this time are kept); the model cards are written from that file
(`cards.py`).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..core.atomic import write_text
from ..core.components import ASSETS
from .render import render
from .training.common import EVAL_SEED_BASE, rendered_set, to_tensor
from .training.evaluators import ORACLE_HEADS, full_caption, oracle_labels
from .world import CLASSES, CONTEXTS, PROMPT_CONTEXTS, sample_scene


def load_oracle(folder: Path = ASSETS / "oracle"):
    import timm

    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    heads = json.loads((folder / "config.json").read_text())["heads"]
    return model, heads


@torch.no_grad()
def oracle_read(model, heads: dict[str, list[str]], x: torch.Tensor) -> dict[str, list[str]]:
    """Attribute names read off images x (NCHW in [-1, 1], 64 px)."""
    logits = model(x).split([len(v) for v in heads.values()], dim=1)
    return {k: [heads[k][i] for i in lg.argmax(1).tolist()] for lg, k in zip(logits, heads)}


@torch.no_grad()
def vae_psnr(sd: Path, n: int = 200) -> float:
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(sd / "vae").eval()
    _, images, _ = rendered_set(n, EVAL_SEED_BASE)
    x = to_tensor(images)
    rec = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    mse = ((rec - x) ** 2).flatten(1).mean(1) / 4  # to [0, 1] range
    return float((10 * torch.log10(1 / mse)).mean())


@torch.no_grad()
def oracle_accuracy(n: int = 500) -> dict[str, float]:
    """Accuracy per attribute head. The secondary colour is scored on the images where it is drawn: a
    plain ball has no trim, a cat's inner ears can sit under a hat, and a colour property can repaint
    the primary into the secondary's colour; there nothing on the image tells it. The score over all
    images is reported beside it."""
    model, heads = load_oracle()
    scenes, images, _ = rendered_set(n, EVAL_SEED_BASE + 10_000)
    read = oracle_read(model, heads, to_tensor(images))
    truth = [oracle_labels(s) for s in scenes]
    hits = {k: np.array([heads[k][t[k]] == r for t, r in zip(truth, read[k])]) for k in ORACLE_HEADS}
    shown = np.array([render(s).secondary_pixels > 0 for s in scenes])
    out = {k: float(v.mean()) for k, v in hits.items()}
    out["secondary"] = float(hits["secondary"][shown].mean())
    out["secondary_all_images"] = float(hits["secondary"].mean())
    out["secondary_shown_fraction"] = float(shown.mean())
    return dict(sorted(out.items()))


@torch.no_grad()
def clip_retrieval(n: int = 100) -> float:
    import open_clip

    folder = ASSETS / "clip"
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    model.eval()
    scenes, images, _ = rendered_set(n, EVAL_SEED_BASE + 20_000)
    img = F.normalize(model.encode_image(to_tensor(images)), dim=-1)
    txt = F.normalize(model.encode_text(tokenizer([full_caption(s) for s in scenes])), dim=-1)
    return float((txt @ img.T).argmax(1).eq(torch.arange(n)).float().mean())


@torch.no_grad()
def dino_auroc(n: int = 200) -> float:
    import timm

    model = timm.create_model(f"local-dir:{ASSETS / 'dino'}", pretrained=True).eval()
    pos, neg = [], []
    for i in range(n):
        rng = random.Random(EVAL_SEED_BASE + 30_000 + i)
        a = sample_scene(rng, seed=EVAL_SEED_BASE + 30_000 + i)
        b = sample_scene(rng, identity=a.identity)
        other = a.identity
        while other == a.identity:
            c = sample_scene(rng)
            other = c.identity if c.identity.cls == a.identity.cls else other
        x = to_tensor(np.stack([render(s).image for s in (a, b, c)]))
        f = F.normalize(model(x), dim=-1)
        pos.append(float(f[0] @ f[1]))
        neg.append(float(f[0] @ f[2]))
    scores = np.array(pos + neg)
    labels = np.array([1] * len(pos) + [0] * len(neg))
    ranks = scores.argsort().argsort() + 1
    return float((ranks[labels == 1].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def generator_accuracy(n: int = 200, steps: int = 30, cfg_scale: float = 5.0, batch: int = 25,
                       source: str = "toyworld") -> dict[str, float]:
    """Sample 'a {class} {context}' with the default sampler; the oracle reads class and context."""
    from ..core.components import load_components
    from ..core.config import ModelConfig
    from ..core.sampling import decode, sample_base

    c = load_components(ModelConfig(source=source, device="cpu"))
    oracle, heads = load_oracle()
    items = [(cls, ctx) for ctx in PROMPT_CONTEXTS for cls in CLASSES]
    items = [items[i % len(items)] for i in range(n)]
    hits = {"class": 0, "context": 0}
    for start in range(0, n, batch):
        chunk = items[start : start + batch]
        prompts = [f"a {cls} {CONTEXTS[ctx]}" for cls, ctx in chunk]
        lat = sample_base(c, prompts, [EVAL_SEED_BASE + start + i for i in range(len(chunk))], steps, cfg_scale)
        ims = np.stack([np.asarray(im) for im in decode(c.vae, lat)])
        read = oracle_read(oracle, heads, to_tensor(ims))
        hits["class"] += sum(r == cls for r, (cls, _) in zip(read["class"], chunk))
        hits["context"] += sum(r == ctx for r, (_, ctx) in zip(read["context"], chunk))
    return {k: v / n for k, v in hits.items()}


@torch.no_grad()
def attention_specificity(n: int = 64, timestep: int = 400, source: str = "toyworld") -> dict[str, float]:
    """Mean fraction of each word's cross-attention mass inside the subject mask (vs the mask's area)."""
    from ..core.attention import capture_cross_attention
    from ..core.components import load_components
    from ..core.config import ModelConfig
    from ..core.sampling import encode_text, token_positions
    from .training.architectures import make_schedulers

    c = load_components(ModelConfig(source=source, device="cpu"))
    scenes, images, masks = rendered_set(n, EVAL_SEED_BASE + 40_000)
    prompts = [full_caption(s) for s in scenes]
    x0 = c.vae.encode(to_tensor(images)).latent_dist.mean
    train_sched, _ = make_schedulers()
    t = torch.full((n,), timestep)
    noisy = train_sched.add_noise(x0, torch.randn(x0.shape, generator=torch.Generator().manual_seed(0)), t)
    with capture_cross_attention(c.unet) as captured:
        c.unet(noisy, t, encoder_hidden_states=encode_text(c.tokenizer, c.text_encoder, prompts))
    out: dict[str, list[float]] = {"class_word": [], "context_word": [], "mask_area": []}
    mask = torch.from_numpy(masks).float()[:, None]
    for m in captured.maps.values():
        side = int(m.shape[1] ** 0.5)
        mk = F.adaptive_avg_pool2d(mask, side).flatten(1)  # [n, pixels], fraction of each cell in the mask
        for i, s in enumerate(scenes):
            words = {"class_word": [s.identity.cls]}
            if CONTEXTS[s.context]:
                words["context_word"] = [CONTEXTS[s.context].split()[-1]]
            for key, w in words.items():
                cols = token_positions(c.tokenizer, prompts[i], w)
                if not cols:
                    continue
                amap = m[i][:, cols].sum(1)
                out[key].append(float((amap * mk[i]).sum() / amap.sum().clamp_min(1e-8)))
            out["mask_area"].append(float(mk[i].mean()))
    return {k: float(np.mean(v)) for k, v in out.items() if v}


# The toy-world issue's quality bars: (figure path in the results, minimum). Word-specificity has no number
# in the issue ("most of the class word's mass inside, context words' not"): class > 0.5 > context.
BARS: dict[str, tuple[tuple[str, ...], float]] = {
    "generator class": (("generator_oracle_accuracy", "class"), 0.9),
    "generator context": (("generator_oracle_accuracy", "context"), 0.9),
    "class word mass in mask": (("attention_mass_in_mask", "class_word"), 0.5),
    "vae psnr db": (("vae_psnr_db",), 28.0),
    "dino auroc": (("dino_auroc",), 0.95),
    "clip top-1 of 100": (("clip_top1_of_100",), 0.9),
    **{f"oracle {k}": (("oracle_accuracy", k), 0.95) for k in ORACLE_HEADS},
}


def check_bars(results: dict[str, object]) -> dict[str, dict[str, object]]:
    """{bar: {value, goal, met}} for the bars whose figures were measured."""
    out: dict[str, dict[str, object]] = {}
    for name, (path, goal) in BARS.items():
        value: object = results
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, (int, float)):
            out[name] = {"value": round(float(value), 4), "goal": goal, "met": float(value) >= goal}
    context = results.get("attention_mass_in_mask")
    if isinstance(context, dict) and "context_word" in context:
        out["context word mass in mask"] = {"value": round(context["context_word"], 4), "goal": "< 0.5",
                                            "met": context["context_word"] < 0.5}
    return out


def parameter_counts(assets: Path = ASSETS) -> dict[str, int]:
    """Parameters per model folder: every tensor of its safetensors files (the BLIP encoder's excludes the
    DINO backbone it reads from ../dino)."""
    from safetensors.torch import load_file

    folders = sorted(p for p in assets.iterdir() if p.is_dir() and any(p.rglob("*.safetensors")))
    return {f.name: sum(t.numel() for w in sorted(f.rglob("*.safetensors")) for t in load_file(w).values()) for f in folders}


PER_SUBJECT_RUN = Path("runs/toy-per-subject")  # where `persobench run configs/toy/per_subject.yaml` stores its run
PER_SUBJECT_COMMAND = "persobench run configs/toy/per_subject.yaml (5 ToyBench subjects x 2 prompts x 2 images)"


def blip_per_subject(run: Path = PER_SUBJECT_RUN) -> dict[str, object]:
    """The toy BLIP-Diffusion encoder against vanilla SD in a finished run of configs/toy/per_subject.yaml
    (unguided rows): mean over subjects of each subject's mean DINO / oracle attributes / CLIP-T, and on how
    many subjects its DINO beats vanilla's (benchmarks/method_identity.py prints the same for every method)."""
    import pandas as pd

    points = [run] if (run / "scores.parquet").is_file() else sorted(q.parent for q in run.glob("points/*/scores.parquet"))
    if not points:
        raise FileNotFoundError(f"no finished run under {run}: run `persobench run configs/toy/per_subject.yaml` first")
    frame = pd.read_parquet(points[0] / "scores.parquet")
    frame = frame[frame["guidance"] == "none"]
    per_subject = frame.groupby(["method", "subject"])[["dino", "oracle_attributes", "clip_t"]].mean()
    blip, vanilla = per_subject.loc["blip-diffusion"], per_subject.loc["vanilla-sd"]
    common = blip.index.intersection(vanilla.index)
    out: dict[str, object] = {"command": PER_SUBJECT_COMMAND}
    for column in ("dino", "oracle_attributes", "clip_t"):
        out[column] = round(float(blip[column].mean()), 3)
        out[f"vanilla_sd_{column}"] = round(float(vanilla[column].mean()), 3)
    wins = int((blip.loc[common, "dino"] > vanilla.loc[common, "dino"]).sum())
    out["dino_beats_vanilla_on_subjects"] = f"{wins} of {len(common)}"
    return out


EVALUATION = ASSETS / "evaluation.json"


def load_evaluation(path: Path = EVALUATION) -> dict[str, object]:
    return json.loads(path.read_text()) if path.is_file() else {}


def record_evaluation(results: dict[str, object], path: Path = EVALUATION) -> dict[str, object]:
    """Merge `results` into the evaluation JSON at `path` (a figure measured now replaces the recorded one;
    the others stay), re-check the bars over the merged figures, and write it (keys sorted at the top)."""
    merged = {**load_evaluation(path), **results}
    merged["bars"] = check_bars(merged)
    merged = dict(sorted(merged.items()))
    write_text(path, json.dumps(merged, indent=2) + "\n")
    return merged


def evaluate_all(stages: list[str], record: Path | None = EVALUATION) -> dict[str, object]:
    """The figures of `stages` (vae, t2i, clip, dino, oracle, blip), with every model's parameter count;
    merged into the evaluation JSON at `record` (None: not recorded)."""
    sd = ASSETS / "sd"
    results: dict[str, object] = {"parameters": parameter_counts()}
    if "vae" in stages:
        results["vae_psnr_db"] = vae_psnr(sd)
    if "oracle" in stages:
        results["oracle_accuracy"] = oracle_accuracy()
    if "clip" in stages:
        results["clip_top1_of_100"] = clip_retrieval()
    if "dino" in stages:
        results["dino_auroc"] = dino_auroc()
    if "t2i" in stages:
        results["generator_oracle_accuracy"] = generator_accuracy()
        results["attention_mass_in_mask"] = attention_specificity()
        steps = sd / "TRAINED_STEPS"
        results["t2i_trained_steps"] = int(steps.read_text()) if steps.exists() else None
    if "blip" in stages:
        results["blip_toy_per_subject"] = blip_per_subject()
    results["bars"] = check_bars(results)
    if record is not None:
        record_evaluation(results, record)
    return results
