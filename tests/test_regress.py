import json
from pathlib import Path

import pytest
import yaml

from persobench.harness.cli import main
from persobench.methods import dreambooth_lora
from persobench.methods.base import Fitted

SHIPPED = json.loads((Path(__file__).parent / "baselines" / "toyworld.json").read_text())["tolerances"]


@pytest.fixture(scope="module")
def gate(tmp_path_factory):
    """A small gate on the embedded toy world, judged with the shipped baseline's tolerances (not a
    tolerance so tight that any change at all trips it): the sabotage tests below must fail it for
    the reasons a real regression would."""
    tmp_path = tmp_path_factory.mktemp("gate")
    config = {
        "name": "gate", "seed": 0, "methods": ["vanilla-sd", "dreambooth-lora"],
        "method_params": {"dreambooth-lora": {"preset": "toy", "steps": 60}},
        "model": {"source": "toyworld", "device": "cpu"},
        "sampler": {"steps": 10, "batch_size": 8},
        "dataset": {"name": "toybench", "subjects": ["ball2"], "max_prompts": 2, "images_per_prompt": 2},
        "metrics": {"names": ["dino", "clip-i", "clip-t"], "bootstrap": 0},
        "report": {"wandb": "disabled"},
        "guidance": {"name": "pick-and-draw"},
    }
    path = tmp_path / "gate.yaml"
    path.write_text(yaml.safe_dump(config))
    baseline = tmp_path / "baseline.json"
    assert main(["regress", str(path), "--baseline", str(baseline), "--update", "--reason", "first baseline"]) == 0
    data = json.loads(baseline.read_text())
    assert SHIPPED and set(SHIPPED) >= {"dino", "clip_i", "clip_t"}
    data["tolerances"] = SHIPPED
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
