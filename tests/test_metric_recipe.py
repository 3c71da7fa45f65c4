"""The real backbones follow the published evaluation recipes, checked on random-weight twins.

No weights are downloaded: each test builds the published architecture with random weights, saves
them, loads them through persobench's backbone API (the same code a user's local weights go
through), and compares with an independent re-implementation of the reference recipe written here
from its published description:

- DINO (DreamBench / custom-diffusion `customconcept101/evaluate.py`, DreamBench++
  `dreambench_plus/metrics/dino_score.py`): Resize(256, bicubic) on the shorter side -> CenterCrop(224)
  -> ToTensor -> Normalize(ImageNet mean/std) -> the CLS token after the final norm.
- CLIP (OpenAI `clip.load` preprocessing, also custom-diffusion's `CLIPImageDataset`): Resize(224,
  bicubic) on the shorter side -> CenterCrop(224) -> ToTensor -> Normalize(OpenAI CLIP mean/std) ->
  `encode_image` of ViT-B/32 with QuickGELU activations.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from persobench.core.errors import UserError
from persobench.reports.metrics.backbones import get_backbone

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
OPENAI = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
SIZES = [(300, 200), (512, 512), (200, 333), (1024, 700)]  # (width, height), square and not, both orientations


def structured_images() -> list[Image.Image]:
    """Images whose embedding moves with any change of crop or scale (smooth gradients plus sharp blocks)."""
    rng = np.random.default_rng(0)
    out = []
    for w, h in SIZES:
        yy, xx = np.mgrid[0:h, 0:w]
        arr = np.stack([255 * xx / w, 255 * yy / h, 127 + 127 * np.sin(xx / 17.0) * np.cos(yy / 23.0)], -1)
        for _ in range(12):
            x0, y0 = rng.integers(0, w - 8), rng.integers(0, h - 8)
            arr[y0 : y0 + rng.integers(4, h // 4), x0 : x0 + rng.integers(4, w // 4)] = rng.integers(0, 256, 3)
        out.append(Image.fromarray(arr.clip(0, 255).astype(np.uint8)))
    return out


def reference_preprocess(im: Image.Image, resize: int, crop: int, mean_std) -> torch.Tensor:
    """The recipe from its description: shorter side to `resize` (torchvision's rounding: the long side
    is truncated), bicubic; centre crop (torchvision: offsets rounded); [0, 1]; per-channel normalise."""
    w, h = im.size
    if w <= h:
        size = (resize, int(resize * h / w))
    else:
        size = (int(resize * w / h), resize)
    im = im.resize(size, Image.BICUBIC)
    left, top = int(round((size[0] - crop) / 2.0)), int(round((size[1] - crop) / 2.0))
    im = im.crop((left, top, left + crop, top + crop))
    x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in mean_std)
    return (x - mean) / std


def save_state(model: torch.nn.Module, path: Path) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    return structured_images()


@pytest.fixture(scope="module")
def clip_twin(tmp_path_factory) -> Path:
    """A random-weight OpenAI ViT-B/32 (QuickGELU) in open_clip's layout."""
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None)
    return save_state(model, tmp_path_factory.mktemp("clip-twin") / "open_clip_model.safetensors")


def timm_twin(arch: str, folder: Path) -> Path:
    import timm

    torch.manual_seed(0)
    return save_state(timm.create_model(arch, pretrained=False, num_classes=0), folder / "model.safetensors")


@pytest.mark.parametrize("name, arch", [("dino-vits16", "vit_small_patch16_224"), ("dino-vits8", "vit_small_patch8_224")])
def test_dino_backbones_follow_the_dreambench_recipe(name, arch, images, tmp_path):
    import timm
    from safetensors.torch import load_file

    weights = timm_twin(arch, tmp_path)
    got = get_backbone(name, weights).embed_images(images, torch.device("cpu"))
    ref_model = timm.create_model(arch, pretrained=False, num_classes=0).eval()
    ref_model.load_state_dict(load_file(str(weights)))
    with torch.no_grad():
        x = torch.stack([reference_preprocess(im, 256, 224, IMAGENET) for im in images])
        want = F.normalize(ref_model.forward_features(x)[:, 0], dim=-1)  # CLS token after the final norm
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def test_clip_backbone_follows_the_openai_recipe(clip_twin, images):
    import open_clip
    from safetensors.torch import load_file

    bb = get_backbone("clip-vit-b32", clip_twin)
    got = bb.embed_images(images, torch.device("cpu"))
    ref_model = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None).eval()
    ref_model.load_state_dict(load_file(str(clip_twin)))
    with torch.no_grad():
        x = torch.stack([reference_preprocess(im, 224, 224, OPENAI) for im in images])
        want = F.normalize(ref_model.encode_image(x), dim=-1)
        text_want = F.normalize(ref_model.encode_text(open_clip.tokenize(["a photo of a dog"])), dim=-1)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    assert torch.allclose(bb.embed_texts(["a photo of a dog"], torch.device("cpu")), text_want, atol=1e-5)


def test_clip_backbone_is_openai_quickgelu(clip_twin):
    """OpenAI's ViT-B/32 was trained with QuickGELU (x * sigmoid(1.702 x)); plain GELU moves CLIP scores."""
    from open_clip.transformer import QuickGELU

    model = get_backbone("clip-vit-b32", clip_twin).model
    acts = [type(m) for m in model.modules() if isinstance(m, (QuickGELU, torch.nn.GELU))]
    assert acts and all(a is QuickGELU for a in acts), sorted({a.__name__ for a in acts})


def test_real_backbone_loads_from_the_local_hugging_face_cache(tmp_path, monkeypatch, images):
    """A user's HF cache (models--timm--vit_small_patch16_224.dino) is found offline; the weights file gives the embedding."""
    import huggingface_hub.constants

    snapshot = tmp_path / "hub" / "models--timm--vit_small_patch16_224.dino" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("abc123")
    weights = timm_twin("vit_small_patch16_224", snapshot)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    from_cache = get_backbone("dino-vits16").embed_images(images[:1], torch.device("cpu"))
    from_file = get_backbone("dino-vits16", weights).embed_images(images[:1], torch.device("cpu"))
    assert torch.equal(from_cache, from_file)


def test_real_backbone_without_local_weights_says_what_to_do(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    with pytest.raises(UserError, match="metrics.clip_weights"):
        get_backbone("clip-vit-b32")
    with pytest.raises(UserError, match="metrics.dino_weights"):
        get_backbone("dino-vits8")


def test_missing_weights_path_fails_at_config_time(tmp_path):
    from persobench.core.config import load_config

    with pytest.raises(UserError, match=r"metrics.dino_weights: '.*nope.safetensors' does not exist"):
        load_config(None, [f"metrics.dino_weights={tmp_path / 'nope.safetensors'}"])


# --- metrics.preset: published conventions as named fields --------------------------------------


def test_preset_null_keeps_the_toy_defaults():
    """The regression gate's numbers depend on these defaults; a preset must not leak into them."""
    from persobench.core.config import MetricsConfig, load_config

    m = load_config(None, []).metrics
    assert m == MetricsConfig() and m.preset is None
    assert (m.dino_backbone, m.clip_backbone, m.image_scale, m.pairing, m.clip_t_scale, m.clip_t_text, m.reference_set) == (
        "toy-dino", "toy-clip", "raw", "all-pairs", "raw", "class", "all")


@pytest.mark.parametrize("preset, expected", [
    ("dreambench", dict(dino_backbone="dino-vits16", clip_backbone="clip-vit-b32", image_scale="raw", pairing="all-pairs",
                        reference_set="all", clip_t_scale="raw")),
    ("custom-diffusion", dict(dino_backbone="dino-vits16", clip_backbone="clip-vit-b32", image_scale="raw", pairing="all-pairs",
                              reference_set="all", clip_t_scale="w2.5")),
    ("dreambench++", dict(dino_backbone="dino-vits8", clip_backbone="clip-vit-b32", image_scale="x100", pairing="one-to-one",
                          reference_set="first", clip_t_scale="x100")),
])
def test_preset_sets_every_convention(preset, expected):
    from persobench.core.config import load_config

    m = load_config(None, [f"metrics.preset={preset}"]).metrics
    assert m.preset == preset
    assert {k: getattr(m, k) for k in expected} == expected


def test_explicit_fields_win_over_the_preset_wherever_they_are_written(tmp_path):
    from persobench.core.config import load_config

    before = load_config(None, ["metrics.clip_t_scale=raw", "metrics.preset=dreambench++"]).metrics
    after = load_config(None, ["metrics.preset=dreambench++", "metrics.clip_t_scale=raw"]).metrics
    assert before.clip_t_scale == after.clip_t_scale == "raw" and before.image_scale == "x100"
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("metrics:\n  preset: custom-diffusion\n  dino_backbone: toy-dino\n")
    m = load_config(yaml_file, []).metrics
    assert (m.dino_backbone, m.clip_backbone, m.clip_t_scale) == ("toy-dino", "clip-vit-b32", "w2.5")
    # an override of the preset itself replaces the file's preset, and the file's explicit field still wins
    m = load_config(yaml_file, ["metrics.preset=dreambench++"]).metrics
    assert (m.dino_backbone, m.clip_t_scale) == ("toy-dino", "x100")


def test_unknown_preset_is_a_user_error_listing_the_presets(monkeypatch):
    from persobench.core.config import load_config
    from persobench.reports.metrics import backbones

    monkeypatch.setattr(backbones, "get_backbone", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(UserError) as err:
        load_config(None, ["metrics.preset=dreambooth"])
    assert all(p in str(err.value) for p in ("dreambench", "dreambench++", "custom-diffusion")) and "\n" not in str(err.value)


def test_protocol_file_names_the_preset_and_every_resolved_field():
    from persobench.core.config import load_config
    from persobench.reports.metrics.scores import protocol

    m = load_config(None, ["metrics.preset=dreambench++", "metrics.names=[oracle]"]).metrics
    written = protocol(m)["metrics"]
    assert written["preset"] == "dreambench++"
    assert {"image_scale", "pairing", "clip_t_scale", "clip_t_text", "reference_set", "dino_backbone", "clip_backbone"} <= set(written)


def test_weights_for_a_toy_backbone_fail_at_config_time(tmp_path):
    from persobench.core.config import load_config

    (tmp_path / "w.safetensors").write_bytes(b"x")
    with pytest.raises(UserError, match="metrics.dino_weights is for a real backbone"):
        load_config(None, [f"metrics.dino_weights={tmp_path / 'w.safetensors'}"])
    load_config(None, ["metrics.dino_backbone=dino-vits16", f"metrics.dino_weights={tmp_path / 'w.safetensors'}"])
