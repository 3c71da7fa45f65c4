"""Random-weight twins of the real models (persobench/twins): the published architectures' sizes on the meta device,
and reduced twins of the same layouts loading through the harness's own loaders (SD components, DINO / CLIP
backbones, the real BLIP-Diffusion backend) and through diffusers itself."""

from __future__ import annotations

import json

import pytest
import torch

from persobench.core.components import load_components
from persobench.core.config import ModelConfig
from persobench.twins import REDUCED, TWINS, build_twin, ensure_twin, is_complete, is_twin, parameter_counts, twin_info
from persobench.twins import configs as C
from persobench.twins.builders import MARKER, UserError

SKS_DOG = [49406, 320, 1125, 539, 320, 48136, 1929, 49407]  # "a photo of a sks dog" in CLIP's BPE: sks</w> = 48136


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("twins")


@pytest.fixture(scope="module")
def sd_twin(cache):
    return ensure_twin("sd15", cache, width_divisor=REDUCED)


# ---- the published sizes, on the meta device ------------------------------------------------------------------
@pytest.mark.parametrize("name, component, published, digits", [
    ("sd15", "unet", 859.52, 2), ("sd15", "vae", 83.65, 2), ("sd15", "text_encoder", 123.06, 2),
    ("dino-vits16", "model", 21.7, 1), ("dino-vits8", "model", 21.7, 1), ("clip-vit-b32", "model", 151.3, 1),
])
def test_full_size_parameter_counts_are_the_published_ones(name, component, published, digits):
    counts = parameter_counts(name)
    assert round(counts[component] / 1e6, digits) == published, counts


def test_counting_allocates_nothing():
    """parameter_counts builds on the meta device: BLIP-Diffusion's parts (1.56 G parameters, 6.2 GB in fp32) are
    counted without raising the process's peak memory by even its UNet (3.4 GB)."""
    import resource
    import sys

    from persobench.twins.builders import _on_meta, _unet

    assert all(p.is_meta for p in _on_meta(_unet(1)).parameters())
    unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit
    counts = parameter_counts("blipdiffusion")
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit - before
    assert sum(counts.values()) > 1.5e9 and grown < 1e9, grown


def test_data_configs_are_the_libraries_own():
    """The configs written out as data match what the installed libraries publish for the same names."""
    import open_clip
    import timm

    assert open_clip.get_model_config(C.CLIP_ARCH) == C.CLIP_B32_QUICKGELU
    for name, spec in C.DINO.items():
        with torch.device("meta"):
            ours = timm.create_model(f"{spec['architecture']}.{spec['tag']}", pretrained=False, num_classes=0, **spec["model_args"])
            theirs = timm.create_model(f"{spec['architecture']}.{spec['tag']}", pretrained=False, num_classes=0)
        assert [p.shape for p in ours.parameters()] == [p.shape for p in theirs.parameters()], name
        assert theirs.pretrained_cfg["mean"] == (0.485, 0.456, 0.406) and theirs.pretrained_cfg["num_classes"] == 0


# ---- SD 1.5 ----------------------------------------------------------------------------------------------------
def test_reduced_sd_twin_has_the_full_layout_and_marker(sd_twin):
    files = {p.relative_to(sd_twin).as_posix() for p in sd_twin.rglob("*") if p.is_file()}
    assert files == {"model_index.json", MARKER, "scheduler/scheduler_config.json", "tokenizer/vocab.json", "tokenizer/merges.txt",
                     "tokenizer/tokenizer_config.json", "tokenizer/special_tokens_map.json", "text_encoder/config.json",
                     "text_encoder/model.safetensors", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                     "vae/config.json", "vae/diffusion_pytorch_model.safetensors"}
    info = twin_info(sd_twin)
    assert info["twin"] is True and info["of"] == "runwayml/stable-diffusion-v1-5" and info["seed"] == 0
    assert info["width_divisor"] == REDUCED and info["dtype"] == "fp16"
    assert is_twin(sd_twin) and is_twin(sd_twin / "unet" / "diffusion_pytorch_model.safetensors") and is_complete(sd_twin)
    assert not is_twin(sd_twin.parent) and not is_twin(sd_twin.parent / "nowhere")
    fake = sd_twin.parent / "not-a-twin"
    fake.mkdir(exist_ok=True)
    (fake / MARKER).write_text(json.dumps({"twin": False}))
    assert not is_twin(fake) and not is_complete(fake)
    assert json.loads((sd_twin / "scheduler" / "scheduler_config.json").read_text()) == C.SD15_SCHEDULER


def test_reduced_sd_twin_keeps_the_full_state_dict_keys(sd_twin):
    """Same layout: the reduced UNet / VAE / text encoder have exactly the published architecture's keys."""
    from safetensors import safe_open

    from persobench.twins.builders import _on_meta, _text_encoder, _unet, _vae

    for sub, file, factory in [("unet", "diffusion_pytorch_model.safetensors", _unet), ("vae", "diffusion_pytorch_model.safetensors", _vae),
                               ("text_encoder", "model.safetensors", _text_encoder)]:
        with safe_open(str(sd_twin / sub / file), "pt") as f:
            keys = set(f.keys())
            assert f.metadata() == {"format": "pt"} and f.get_tensor(sorted(keys)[0]).dtype == torch.float16
        assert keys == set(_on_meta(factory(1)).state_dict()), sub


def test_reduced_sd_twin_loads_with_the_harness_loader(sd_twin):
    components = load_components(ModelConfig(source=str(sd_twin), device="cpu", dtype="fp32"))
    assert components.unet.dtype == torch.float32 and components.latent_shape == (4, 64, 64) and components.vae_scale == 8
    assert components.unet.config.block_out_channels == [40, 80, 160, 160]
    assert components.text_encoder.config.hidden_size == 96 == components.unet.config.cross_attention_dim
    assert components.tokenizer("a photo of a sks dog").input_ids == SKS_DOG
    assert components.tokenizer.model_max_length == 77 and len(components.tokenizer) == 49408
    assert components.scheduler_config["_class_name"] == "PNDMScheduler"


def test_reduced_sd_twin_runs_in_stable_diffusion_pipeline(sd_twin):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(sd_twin)
    assert pipe.safety_checker is None and type(pipe.scheduler).__name__ == "PNDMScheduler"
    assert pipe.tokenizer("a photo of a sks dog").input_ids == SKS_DOG
    images = pipe("a photo of a sks dog", num_inference_steps=2, height=64, width=64, output_type="np",
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 64, 64, 3) and bool(torch.isfinite(torch.from_numpy(images)).all())


def test_tokenizer_is_clips_real_bpe(sd_twin):
    """The converted vocab.json / merges.txt tokenise as OpenAI's own SimpleTokenizer (open_clip's copy) does."""
    import open_clip
    from transformers import CLIPTokenizer

    ours, reference = CLIPTokenizer.from_pretrained(sd_twin / "tokenizer"), open_clip.SimpleTokenizer()
    for text in ["a photo of a sks dog", "A RED backpack, on the beach!!", "3.14 e-mails aren't <subject> tokens",
                 "a dslr photo of a grey sloth plushie"]:
        expected = reference([text])[0]
        assert ours(text).input_ids == expected[expected > 0].tolist(), text
    vocab = json.loads((sd_twin / "tokenizer" / "vocab.json").read_text())
    assert vocab["sks</w>"] == 48136 and vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407 and len(vocab) == 49408


# ---- caching -----------------------------------------------------------------------------------------------------
def test_builds_are_deterministic_and_cached(cache, tmp_path):
    first = ensure_twin("dino-vits16", cache, width_divisor=REDUCED)
    again = build_twin("dino-vits16", tmp_path / "again", width_divisor=REDUCED)
    assert (first / "model.safetensors").read_bytes() == (again / "model.safetensors").read_bytes()
    other = build_twin("dino-vits16", tmp_path / "other", width_divisor=REDUCED, seed=1)
    assert (first / "model.safetensors").read_bytes() != (other / "model.safetensors").read_bytes()
    stamp = (first / MARKER).stat().st_mtime_ns
    assert ensure_twin("dino-vits16", cache, width_divisor=REDUCED) == first and (first / MARKER).stat().st_mtime_ns == stamp


def test_an_incomplete_twin_is_rebuilt(tmp_path):
    folder = ensure_twin("clip-vit-b32", tmp_path, width_divisor=REDUCED)
    weights = folder / "open_clip_model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])  # a truncated file, as a copy or a disk-full would leave
    assert not is_complete(folder)
    assert ensure_twin("clip-vit-b32", tmp_path, width_divisor=REDUCED) == folder and weights.read_bytes() == good
    (folder / MARKER).unlink()  # a folder without its marker (an interrupted build) is not a twin, and is rebuilt
    assert not is_twin(folder) and not is_complete(folder)
    assert is_complete(ensure_twin("clip-vit-b32", tmp_path, width_divisor=REDUCED))


def test_an_interrupted_build_leaves_no_twin(tmp_path, monkeypatch):
    import persobench.twins.builders as B

    def fail(root, d, seed, dtype):
        (root / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setitem(B.TWINS, "dino-vits16", B.TwinSpec("dino-vits16", "x", "x", fail, lambda d: {}))
    with pytest.raises(KeyboardInterrupt):
        ensure_twin("dino-vits16", tmp_path, width_divisor=REDUCED)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


def test_a_killed_builds_partial_folder_is_removed(tmp_path):
    dead = tmp_path / f".{'dino-vits16-w8-seed0-fp16'}.partial-{2**22 + 12345}-abc"
    dead.mkdir()
    (dead / "model.safetensors").write_bytes(b"half")
    ensure_twin("dino-vits16", tmp_path, width_divisor=REDUCED)
    assert not dead.exists()


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "sd21"}, "no twin named 'sd21'"),
    ({"width_divisor": 16}, "width_divisor=16"),
    ({"width_divisor": 0}, "positive integer"),
    ({"dtype": "int8"}, "fp16, fp32"),
])
def test_bad_requests_are_user_errors(tmp_path, kwargs, message):
    args = {"name": "sd15", "width_divisor": REDUCED, **kwargs}
    with pytest.raises(UserError, match=message):
        ensure_twin(args.pop("name"), tmp_path, **args)


# ---- DINO / CLIP backbones -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def backbones():
    from persobench.reports.metrics import backbones

    return backbones


@pytest.fixture(scope="module")
def image():
    from PIL import Image

    return Image.new("RGB", (300, 260), (200, 30, 60))


@pytest.mark.parametrize("name, kind, width", [("dino-vits16", "dino", 48), ("dino-vits8", "dino", 48), ("clip-vit-b32", "clip", 64)])
def test_reduced_backbone_twins_load_as_backbone_folders(cache, backbones, image, name, kind, width):
    from safetensors import safe_open

    folder = ensure_twin(name, cache, width_divisor=REDUCED)
    with safe_open(str(folder / ("model.safetensors" if kind == "dino" else "open_clip_model.safetensors")), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}  # the twin's dtype="fp16" default
    backbone = backbones.get_backbone(f"{kind}:{folder}")
    assert backbone.embed_images([image], torch.device("cpu")).shape == (1, width)
    if kind == "clip":
        assert backbone.embed_texts(["a photo of a sks dog"], torch.device("cpu")).shape == (1, width)


def test_full_size_dino_twin_loads_as_the_real_backbone(cache, backbones, image):
    """dino-vits16 itself (timm's strict loader on the weights file, DreamBench's recipe) takes the full-size twin."""
    folder = ensure_twin("dino-vits16", cache)
    assert backbones.locate_weights("dino-vits16", folder) == folder / "model.safetensors"
    backbone = backbones.get_backbone("dino-vits16", folder)
    assert backbone.describe["model"] == "vit_small_patch16_224.dino" and "resize=256" in backbone.describe["preprocess"]
    assert backbone.embed_images([image], torch.device("cpu")).shape == (1, 384)
    assert is_twin(backbone.describe["weights"])


def test_full_size_clip_twin_loads_as_the_real_backbone(cache, backbones, image):
    """clip-vit-b32 (open_clip's strict loader on the weights file) takes the full-size twin: 151 M parameters, ~3 s."""
    folder = ensure_twin("clip-vit-b32", cache)
    backbone = backbones.get_backbone("clip-vit-b32", folder)
    assert backbone.embed_images([image], torch.device("cpu")).shape == (1, 512)
    assert backbone.embed_texts(["a photo of a sks dog"], torch.device("cpu")).shape == (1, 512)


# ---- BLIP-Diffusion ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def blip_twin(cache):
    return ensure_twin("blipdiffusion", cache, width_divisor=REDUCED)


def test_blip_twin_has_the_published_layout(blip_twin):
    for sub in ("qformer", "text_encoder", "tokenizer", "unet", "vae", "scheduler", "image_processor"):
        assert (blip_twin / sub).is_dir(), sub
    index = json.loads((blip_twin / "model_index.json").read_text())
    assert index["_class_name"] == "BlipDiffusionPipeline" and index["ctx_begin_pos"] == 2
    assert json.loads((blip_twin / "text_encoder" / "config.json").read_text())["architectures"] == ["ContextCLIPTextModel"]
    assert twin_info(blip_twin)["of"] == "Salesforce/blipdiffusion"


def test_qformer_keys_are_diffusers_blip2_qformer(tmp_path):
    """The key table is diffusers' Blip2QFormerModel's (the class that wrote the published checkpoint), with the
    vision attention's q_bias / v_bias as transformers < 5 held them (transformers 5 fuses them into qkv.bias)."""
    pytest.importorskip("diffusers.pipelines.deprecated.blip_diffusion.modeling_blip2")
    from diffusers.pipelines.deprecated.blip_diffusion.modeling_blip2 import Blip2QFormerModel
    from transformers import Blip2Config

    from persobench.twins.qformer import parameter_count, qformer_table
    from persobench.twins.tokenizers import write_bert_tokenizer

    config = C.blip2_config(REDUCED)
    reference_config = Blip2Config(**{k: config[k] for k in ("vision_config", "qformer_config", "num_query_tokens")})
    reference_config.tokenizer = str(write_bert_tokenizer(tmp_path / "bert"))  # its __init__ loads a BERT tokenizer
    reference = Blip2QFormerModel(reference_config)
    expected = {}
    for key, value in reference.state_dict().items():
        if key.endswith("self_attn.qkv.bias"):
            d = value.shape[0] // 3
            expected[key.replace("qkv.bias", "q_bias")] = expected[key.replace("qkv.bias", "v_bias")] = (d,)
        else:
            expected[key] = tuple(value.shape)
    table = qformer_table(config)
    assert {k: shape for k, (shape, _) in table.items()} == expected
    fused = sum(p.numel() for p in reference.parameters())  # one qkv.bias of 3 x width per vision layer, ours 2 x width
    vision = config["vision_config"]
    assert parameter_count(config) == fused - vision["num_hidden_layers"] * vision["hidden_size"]


def test_reduced_blip_twin_loads_in_the_real_backend(sd_twin, blip_twin, image):
    from persobench.methods import methods

    components = load_components(ModelConfig(source=str(sd_twin), device="cpu", dtype="fp32"))
    method = methods.get("blip-diffusion")({"backend": "real", "weights": str(blip_twin),
                                             "qformer_tokenizer": str(blip_twin / "qformer_tokenizer")}, components)
    backend = method.backend
    assert backend.num_queries == C.BLIP2_CONFIG["num_query_tokens"] and backend.image_size == 224
    embeddings = backend.embed([image], "dog")
    assert embeddings.shape == (16, components.text_encoder.config.hidden_size) and bool(torch.isfinite(embeddings).all())
    tokenizer, _ = backend.text_model()
    assert tokenizer("a photo of a sks dog").input_ids == SKS_DOG


def test_every_twin_is_listed():
    assert set(TWINS) == {"sd15", "dino-vits16", "dino-vits8", "clip-vit-b32", "blipdiffusion"}
