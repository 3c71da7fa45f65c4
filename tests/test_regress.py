import json

import pytest
import yaml

from persobench.harness.cli import main
from persobench.methods import dreambooth_lora
from persobench.methods.base import Fitted


@pytest.fixture
def gate(tmp_path, tiny_model, tiny_evaluators):
    config = {
        "name": "gate", "seed": 0, "methods": ["vanilla-sd", "dreambooth-lora"],
        "method_params": {"dreambooth-lora": {"steps": 4, "lr": 0.05, "batch_size": 2, "rank": 4}},
        "model": {"source": str(tiny_model), "device": "cpu"},
        "sampler": {"steps": 4, "batch_size": 8},
        "dataset": {"name": "toybench", "subjects": ["ball1", "cat1"], "max_prompts": 2, "images_per_prompt": 2},
        "metrics": {"names": ["dino", "clip-i", "clip-t"], "dino_backbone": f"dino:{tiny_evaluators / 'dino'}",
                    "clip_backbone": f"clip:{tiny_evaluators / 'clip'}", "bootstrap": 0},
        "report": {"wandb": "disabled"},
        "guidance": {"name": "pick-and-draw", "step_size": [200.0, 100.0]},
    }
    path = tmp_path / "gate.yaml"
    path.write_text(yaml.safe_dump(config))
    baseline = tmp_path / "baseline.json"
    assert main(["regress", str(path), "--baseline", str(baseline), "--update", "--reason", "first baseline"]) == 0
    data = json.loads(baseline.read_text())
    data["tolerances"] = {k: 1e-4 for k in data["tolerances"]}  # the gate is deterministic on CPU
    baseline.write_text(json.dumps(data))
    return path, baseline


def test_gate_passes_on_an_unchanged_tree(gate, capsys):
    path, baseline = gate
    assert main(["regress", str(path), "--baseline", str(baseline)]) == 0
    assert "passed" in capsys.readouterr().out
    assert json.loads(baseline.read_text())["history"][0]["reason"] == "first baseline"


def test_gate_bites_when_lora_is_not_loaded(gate, capsys, monkeypatch):
    path, baseline = gate
    original = dreambooth_lora.DreamBoothLora.fit

    def broken(self, subject, folder, seed, progress=None):
        fitted = original(self, subject, folder, seed, progress)
        c = self.components
        return Fitted(fitted.method, subject, c, c.unet, c.tokenizer, c.text_encoder, identifier=fitted.identifier)

    monkeypatch.setattr(dreambooth_lora.DreamBoothLora, "fit", broken)
    assert main(["regress", str(path), "--baseline", str(baseline)]) == 1
    err = capsys.readouterr().err
    assert "dreambooth-lora/none" in err and "drift" in err
    assert "vanilla-sd/none" not in err  # only what broke is named


def test_baseline_from_another_config_is_refused(gate, capsys):
    path, baseline = gate
    assert main(["regress", str(path), "--baseline", str(baseline), "sampler.steps=5"]) == 2
    assert "another config" in capsys.readouterr().err


def test_gate_bites_when_the_guidance_gradient_sign_is_flipped(gate, capsys, monkeypatch):
    from persobench.guidance.pick_and_draw import PickAndDraw

    path, baseline = gate
    original = PickAndDraw.step_size
    monkeypatch.setattr(PickAndDraw, "step_size", lambda self, i: -original(self, i))
    assert main(["regress", str(path), "--baseline", str(baseline)]) == 1
    err = capsys.readouterr().err
    assert "/pick-and-draw" in err and "drift" in err
    assert "vanilla-sd/none" not in err and "dreambooth-lora/none" not in err  # unguided rows unchanged
