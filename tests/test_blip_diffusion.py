from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from persobench.core.components import load_components
from persobench.core.config import DatasetConfig, ModelConfig
from persobench.core.errors import UserError
from persobench.core.sampling import token_positions
from persobench.datasets import datasets
from persobench.harness.runner import run
from persobench.methods import methods
from persobench.methods.blip_diffusion import PLACEHOLDER


@pytest.fixture(scope="module")
def world(tiny_world):
    components = load_components(ModelConfig(source=str(tiny_world / "sd"), device="cpu"))
    method = methods.get("blip-diffusion")({"encoder": str(tiny_world / "blip")}, components)
    subjects = {s.name: s for s in datasets.get("toybench")(DatasetConfig()).subjects}
    return components, method, subjects


def test_fit_encodes_once_and_conditions_the_text(world, tmp_path):
    components, method, subjects = world
    fitted = method.fit(subjects["ball1"], tmp_path / "fit", seed=0)
    saved = load_file(tmp_path / "fit" / "subject_embeddings.safetensors")["subject"]
    assert saved.shape == (4, components.text_encoder.config.hidden_size)
    prompt = fitted.prompt("a {0} {1} on the beach")
    assert prompt == f"a {' '.join([PLACEHOLDER] * 4)} ball on the beach"
    assert fitted.clip_text("a {0} {1} on the beach") == "a ball on the beach"
    cols = token_positions(fitted.tokenizer, prompt, fitted.subject_words)
    assert cols == [2, 3, 4, 5, 6]  # the four subject tokens and the class noun, after BOS and "a"
    cond = fitted.encode([prompt, prompt.replace(" ".join([PLACEHOLDER] * 4) + " ", "")])
    other = method.fit(subjects["ball2"], tmp_path / "fit2", seed=0).encode([prompt]).cond
    assert not torch.allclose(cond.cond[0], other[0])  # another subject, other conditioning
    assert len(components.tokenizer) < len(fitted.tokenizer)  # the shared tokenizer is untouched


def test_toy_backend_keeps_its_training_layout_unless_asked_for_the_pipelines(world, tmp_path):
    """The toy encoder was trained with the placeholders before the class noun and is scored on the mean over
    references (its README numbers); the pipeline's layout (token 2, one reference) is an option to it."""
    components, _, subjects = world
    encoder = str(Path(world[1].params.encoder))
    marks = " ".join([PLACEHOLDER] * 4)
    default = methods.get("blip-diffusion")({"encoder": encoder}, components)
    assert {k: default.fit_signature()[k] for k in ("reference_mode", "query_position")} == {
        "reference_mode": "average", "query_position": "before_class"}
    fitted = default.fit(subjects["ball1"], tmp_path / "avg", 0)
    assert fitted.prompt("a red {0} {1}") == f"a red {marks} ball"
    pipeline_like = methods.get("blip-diffusion")({"encoder": encoder, "query_position": "start", "reference_mode": "first"}, components)
    first = pipeline_like.fit(subjects["ball1"], tmp_path / "first", 0)
    assert first.prompt("a red {0} {1}") == f"a {marks} red ball"
    assert not torch.allclose(first.text_encoder.subject, fitted.text_encoder.subject)  # one reference, not the mean


def test_run_with_guidance_on_all_four_methods(tiny_world, make_config):
    cfg = make_config(f"model.source={tiny_world / 'sd'}", "methods=[vanilla-sd, textual-inversion, dreambooth-lora, blip-diffusion]",
                      "dataset.subjects=[cat1]", "guidance.name=pick-and-draw",
                      "method_params={textual-inversion: {steps: 2, batch_size: 2}, dreambooth-lora: {steps: 2, batch_size: 2, rank: 2}, "
                      f"blip-diffusion: {{encoder: {tiny_world / 'blip'}}}}}")
    point = run(cfg)
    frame = pd.read_parquet(point / "records.parquet")
    assert frame.groupby(["method", "guidance"]).size().to_dict() == {
        (m, g): 4 for m in ("vanilla-sd", "textual-inversion", "dreambooth-lora", "blip-diffusion") for g in ("none", "pick-and-draw")}
    blip = frame[frame["method"] == "blip-diffusion"]
    assert blip["prompt"].str.contains(PLACEHOLDER).all() and not blip["clip_text"].str.contains("<").any()
    # methods are compared on the same noise: blip's image k of prompt p has vanilla's seed for (p, k)
    pair = ["guidance", "prompt_template", "index"]
    vanilla = frame[frame["method"] == "vanilla-sd"].set_index(pair)["seed"]
    assert blip.set_index(pair)["seed"].sort_index().equals(vanilla.sort_index())
    # and on that noise the subject embeddings change the picture
    store = point.parent.parent  # <store>/<name>/points/<point>; records name images relative to <store>/<name>
    differs = [not np.array_equal(np.asarray(Image.open(store / a)), np.asarray(Image.open(store / b)))
               for a, b in zip(blip.sort_values(pair)["image"], frame[frame["method"] == "vanilla-sd"].sort_values(pair)["image"])]
    assert all(differs)


def test_missing_encoder_and_missing_real_weights_are_clear_errors(world, tmp_path, monkeypatch):
    components, _, subjects = world
    with pytest.raises(UserError, match="persobench toyworld train --stage blip"):
        methods.get("blip-diffusion")({"encoder": str(tmp_path / "none")}, components).fit(subjects["ball1"], tmp_path / "f", 0)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="Salesforce/blipdiffusion.*not found.*method_params.blip-diffusion.weights"):
        methods.get("blip-diffusion")({"backend": "real"}, components)  # the paper weights are not in this cache


def test_one_method_resident_at_a_time(tiny_world, make_config, monkeypatch):
    """Issue 15's peak at real shapes: while a method fits or loads its fit, no other fitted state (another
    method's or the previous subject's LoRA-patched UNet copy, another method's BLIP towers) is still alive, in
    the fit loop as in the sampling loop; and building a personalizer for its fit key loads no backend."""
    import gc
    import weakref

    from persobench.harness import runner
    from persobench.methods import blip_diffusion

    alive: list[weakref.ref] = []
    backends_alive: list[weakref.ref] = []
    overlaps: list[str] = []
    fit_subject = runner.fit_subject

    def watched(store, personalizer, components, subject, seed, progress=None):
        gc.collect()
        others = [r() for r in alive if r() is not None]  # another method's, or the same method's previous subject's
        others += [b for b in (r() for r in backends_alive) if b is not None and personalizer.name != "blip-diffusion"]
        overlaps.extend(f"{type(o).__name__} of {getattr(o, 'method', 'blip-diffusion')} "
                        f"{getattr(getattr(o, 'subject', None), 'name', '')} while {personalizer.name} fits {subject.name}"
                        for o in others)
        fitted, key = fit_subject(store, personalizer, components, subject, seed, progress)
        alive.append(weakref.ref(fitted))
        if personalizer.name == "blip-diffusion":
            backends_alive.append(weakref.ref(personalizer.backend))
        return fitted, key

    built = []
    make_backend = blip_diffusion.backends.get("toy")
    monkeypatch.setattr(runner, "fit_subject", watched)

    def counting(*args):
        built.append(1)
        return make_backend(*args)

    counting.defaults = make_backend.defaults
    monkeypatch.setitem(blip_diffusion.backends._items, "toy", counting)
    cfg = make_config(f"model.source={tiny_world / 'sd'}", "methods=[blip-diffusion, dreambooth-lora, vanilla-sd, textual-inversion]",
                      "dataset.subjects=[cat1, ball1]", "dataset.max_prompts=1", "dataset.images_per_prompt=1", "guidance.name=none",
                      "method_params={textual-inversion: {steps: 1, batch_size: 1}, dreambooth-lora: {steps: 1, batch_size: 1, rank: 2}, "
                      f"blip-diffusion: {{encoder: {tiny_world / 'blip'}}}}}")
    run(cfg)
    assert overlaps == []
    assert len(built) == 2  # once for the fits, once for the sampling loop; never for a fit key
