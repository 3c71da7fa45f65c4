"""BLIP-Diffusion's real backend, offline: a tiny model in the published Salesforce/blipdiffusion
layout (qformer with the checkpoint's keys, text_encoder, tokenizer, unet, image_processor), built
here from tiny configs. The Q-Former port is checked against independent implementations
(diffusers' vision tower, transformers' InstructBLIP Q-Former) so an upgrade that breaks it shows."""

import json
import shutil

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from persobench.core.components import load_components
from persobench.core.config import ModelConfig
from persobench.core.errors import UserError
from persobench.harness.runner import run
from persobench.methods import methods
from persobench.methods.blip_diffusion import PLACEHOLDER
from persobench.methods.blip_qformer import QFormer

QUERIES = 4


def tiny_qformer_config(text_dim: int) -> dict:
    return {
        "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                          "image_size": 16, "patch_size": 4},
        "qformer_config": {"vocab_size": 40, "hidden_size": text_dim, "num_hidden_layers": 2, "num_attention_heads": 4,
                           "intermediate_size": 64, "max_position_embeddings": 16, "cross_attention_frequency": 1,
                           "encoder_hidden_size": 32},
        "num_query_tokens": QUERIES,
    }


def random_qformer(config: dict, seed: int = 0) -> QFormer:
    torch.manual_seed(seed)
    model = QFormer(config)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return model.eval()


@pytest.fixture(scope="module")
def bert_vocab(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bert")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "ball", "cat", "dog", "vase", "a"] + [f"w{i}" for i in range(20)]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    return folder


@pytest.fixture(scope="module")
def blip_weights(tmp_path_factory, tiny_model):
    """The published folder layout, its parts tiny (the unet / text encoder of the tiny SD model)."""
    root = tmp_path_factory.mktemp("blipdiffusion")
    for part in ("unet", "text_encoder", "tokenizer", "vae", "scheduler"):
        shutil.copytree(tiny_model / part, root / part)
    text_dim = json.loads((tiny_model / "text_encoder" / "config.json").read_text())["hidden_size"]
    config = tiny_qformer_config(text_dim)
    (root / "qformer").mkdir()
    (root / "qformer" / "config.json").write_text(json.dumps(config))
    save_file(random_qformer(config).state_dict(), root / "qformer" / "diffusion_pytorch_model.safetensors")
    (root / "image_processor").mkdir()
    (root / "image_processor" / "preprocessor_config.json").write_text(json.dumps({"size": {"height": 16, "width": 16}}))
    return root


def test_state_dict_keys_are_the_published_checkpoints(bert_vocab, monkeypatch):
    """diffusers' (deprecated) Blip2QFormerModel defines the checkpoint's module tree; transformers 5
    renamed the vision q/v biases into `qkv.bias`, so the published keys are its keys with those two."""
    from diffusers.pipelines.deprecated.blip_diffusion.modeling_blip2 import Blip2QFormerModel
    from transformers import Blip2Config

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = tiny_qformer_config(32)
    ref_config = Blip2Config(**config)
    ref_config.tokenizer = str(bert_vocab)  # its __init__ loads a BERT tokenizer (bert-base-uncased from the hub by default)
    reference = Blip2QFormerModel(ref_config)
    published = set()
    for key in reference.state_dict():
        if key.endswith("self_attn.qkv.bias"):
            published |= {key.replace("qkv.bias", "q_bias"), key.replace("qkv.bias", "v_bias")}
        elif not key.endswith("position_ids"):
            published.add(key)
    assert set(QFormer(config).state_dict()) == published


def test_qformer_matches_independent_implementations(bert_vocab):
    from diffusers.pipelines.deprecated.blip_diffusion.modeling_blip2 import Blip2VisionModel
    from transformers import BertTokenizer, Blip2VisionConfig, InstructBlipQFormerConfig
    from transformers.models.instructblip.modeling_instructblip import InstructBlipQFormerModel

    config = tiny_qformer_config(32)
    ours = random_qformer(config)
    pixels = torch.randn(2, 3, 16, 16)
    text = BertTokenizer.from_pretrained(bert_vocab)(["dog", "a cat"], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = ours(pixels, text.input_ids, text.attention_mask)
        vision = Blip2VisionModel(Blip2VisionConfig(**config["vision_config"])).eval()
        state = {k.removeprefix("visual_encoder."): v for k, v in ours.state_dict().items() if k.startswith("visual_encoder.")}
        for key in [k for k in state if k.endswith("q_bias")]:
            prefix = key[: -len("q_bias")]
            v_bias = state.pop(prefix + "v_bias")
            state[prefix + "qkv.bias"] = torch.cat([state.pop(key), torch.zeros_like(v_bias), v_bias])
        vision.load_state_dict(state, strict=False)
        image = vision(pixels).last_hidden_state
        assert torch.allclose(image, ours.visual_encoder(pixels), atol=1e-5)

        qformer = InstructBlipQFormerModel(InstructBlipQFormerConfig(**config["qformer_config"])).eval()
        state = {k.replace("embeddings.LayerNorm", "embeddings.layernorm"): v for k, v in ours.state_dict().items()
                 if k.startswith(("embeddings.", "encoder."))}
        missing, _ = qformer.load_state_dict(state, strict=False)
        assert not [k for k in missing if not k.endswith("position_ids")]
        mask = torch.cat([torch.ones(2, QUERIES, dtype=text.attention_mask.dtype), text.attention_mask], dim=1)  # as InstructBLIP passes it
        hidden = qformer(input_ids=text.input_ids, attention_mask=mask, query_embeds=ours.query_tokens.expand(2, -1, -1),
                         encoder_hidden_states=image).last_hidden_state
        expected = ours.proj_layer(hidden[:, :QUERIES])
    assert out.shape == (2, QUERIES, 32)
    assert torch.allclose(out, expected, atol=1e-4), (out - expected).abs().max()


def test_transformers5_checkpoint_layout_also_loads(tmp_path):
    config = tiny_qformer_config(32)
    model = random_qformer(config)
    state = model.state_dict()
    for key in [k for k in state if k.endswith("q_bias")]:
        prefix = key[: -len("q_bias")]
        state[prefix + "qkv.bias"] = torch.cat([state.pop(key), torch.zeros(32), state.pop(prefix + "v_bias")])
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file(state, tmp_path / "model.safetensors")
    loaded = QFormer.from_folder(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    save_file({"foreign.weight": torch.zeros(1)}, tmp_path / "model.safetensors")
    with pytest.raises(UserError, match="do not match its config.json"):
        QFormer.from_folder(tmp_path)


def test_real_backend_fits_samples_and_guides_in_a_run(make_config, blip_weights, bert_vocab):
    params = f"{{blip-diffusion: {{backend: real, weights: {blip_weights}, qformer_tokenizer: {bert_vocab}, prompt_reps: 2}}}}"
    point = run(make_config("methods=[blip-diffusion]", "dataset.subjects=[ball1]", f"method_params={params}",
                            "guidance.name=pick-and-draw", "guidance.compare_unguided=true"))
    frame = pd.read_parquet(point / "records.parquet")
    assert set(frame["guidance"]) == {"none", "pick-and-draw"} and len(frame) == 8
    first = frame["prompt"].iloc[0]
    assert first.startswith("a " + " ".join([PLACEHOLDER] * QUERIES) + " ball ")  # the queries sit at position 2, as in the pipeline
    assert first.count(", ") == 1 and not frame["clip_text"].str.contains("<").any()  # prompt_reps=2; CLIP-T keeps the plain prompt


def test_real_backend_embeddings_depend_on_the_image(tiny_model, blip_weights, bert_vocab, tmp_path):
    from persobench.core.config import DatasetConfig
    from persobench.datasets import datasets

    components = load_components(ModelConfig(source=str(tiny_model), device="cpu"))
    method = methods.get("blip-diffusion")({"backend": "real", "weights": str(blip_weights), "qformer_tokenizer": str(bert_vocab)},
                                           components)
    subjects = {s.name: s for s in datasets.get("toybench")(DatasetConfig()).subjects}
    a = method.fit(subjects["ball1"], tmp_path / "a", 0).text_encoder.subject
    b = method.fit(subjects["ball2"], tmp_path / "b", 0).text_encoder.subject
    assert a.shape == (QUERIES, components.text_encoder.config.hidden_size) and not torch.allclose(a, b)


@pytest.mark.parametrize("params, message", [
    ({"weights": "/nonexistent/blip"}, "not found as a folder"),
    ({"weights": "{tiny}"}, "missing qformer"),
    ({"qformer_tokenizer": "/nonexistent/bert"}, "qformer_tokenizer=<BERT tokenizer folder>"),
    ({"prompt_reps": 0}, "prompt_reps must be >= 1"),
])
def test_real_backend_bad_input(tiny_model, blip_weights, bert_vocab, params, message):
    components = load_components(ModelConfig(source=str(tiny_model), device="cpu"))
    full = {"backend": "real", "weights": str(blip_weights), "qformer_tokenizer": str(bert_vocab), **params}
    full["weights"] = full["weights"].replace("{tiny}", str(tiny_model))
    with pytest.raises(UserError, match=message):
        methods.get("blip-diffusion")(full, components)


@pytest.fixture(scope="module")
def real_method(tiny_model, blip_weights, bert_vocab):
    def make(**extra):
        components = load_components(ModelConfig(source=str(tiny_model), device="cpu"))
        params = {"backend": "real", "weights": str(blip_weights), "qformer_tokenizer": str(bert_vocab), **extra}
        return methods.get("blip-diffusion")(params, components)

    return make


@pytest.fixture(scope="module")
def toy_subjects():
    from persobench.core.config import DatasetConfig
    from persobench.datasets import datasets

    return {s.name: s for s in datasets.get("toybench")(DatasetConfig()).subjects}


def test_real_backend_queries_sit_at_token_2_as_in_the_pipeline(real_method, toy_subjects, tmp_path):
    """pipeline_blip_diffusion.py inserts the query embeddings at ctx_begin_pos=2 for every prompt, property prompts too."""
    from persobench.core.sampling import token_positions

    fitted = real_method().fit(toy_subjects["ball1"], tmp_path / "fit", 0)
    marks = " ".join([PLACEHOLDER] * QUERIES)
    for template, expected in [("a red {0} {1}", f"a {marks} red ball"), ("a {0} {1} on the beach", f"a {marks} ball on the beach")]:
        prompt = fitted.prompt(template)
        assert prompt == expected
        assert token_positions(fitted.tokenizer, prompt, [PLACEHOLDER]) == list(range(2, 2 + QUERIES))


def test_real_backend_takes_one_reference_unless_averaging_is_asked(real_method, toy_subjects, tmp_path):
    """The pipeline conditions on one `reference_image`; `reference_mode: average` is the named deviation."""
    subject = toy_subjects["ball1"]
    refs = subject.images()
    assert len(refs) > 1
    method = real_method()
    assert method.fit_signature()["reference_mode"] == "first"
    one = method.fit(subject, tmp_path / "one", 0).text_encoder.subject
    assert torch.allclose(one, method.backend.embed(refs[:1], subject.class_noun))
    averaged = real_method(reference_mode="average").fit(subject, tmp_path / "all", 0).text_encoder.subject
    assert torch.allclose(averaged, method.backend.embed(refs, subject.class_noun)) and not torch.allclose(one, averaged)
