"""Guidance terms describe themselves: a term registered here alone (no edit anywhere in persobench) is a config
section `guidance.<name>`, builds its own inputs from a `Fitted`, is summed into Pick-and-Draw's guided score,
and flows into the run's config, its tables, W&B and the regression gate."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest
import torch
import yaml

from persobench.core.config import GuidanceTermConfig, guidance_terms, load_config, to_dict
from persobench.core.errors import UserError
from persobench.guidance.masks import maps_2d
from persobench.guidance.terms import GuidanceTerm, token_columns
from persobench.harness.cli import main

from .wandb_records import run_info

SCALE = {"value": 1.0}  # what the sabotage test multiplies the loss by


@dataclasses.dataclass
class AttendConfig(GuidanceTermConfig):
    """Pull the class word's cross-attention up (a toy term: mean attention on the class token, negated)."""

    enabled: bool = False  # off unless a config turns it on, as a plugin term should be
    layers: list[str] = dataclasses.field(default_factory=lambda: ["all"])
    floor: float = 0.0

    def check(self, prefix: str) -> None:
        if self.floor < 0:
            raise UserError(f"{prefix}.floor must be >= 0, got {self.floor}")


class AttendTerm(GuidanceTerm):
    """Class-token attention (a test's term)"""

    name = "attend"
    Config = AttendConfig

    @classmethod
    def inputs_from(cls, cfg, fitted, prompts):
        return token_columns(fitted.tokenizer, prompts, [fitted.subject.class_noun], "class", "use a prompt with the class")

    def loss(self, cap, state):
        maps = [maps_2d(cap.maps[n].float(), self.own).flatten(1).mean(1) for n in self.layers]
        return -SCALE["value"] * torch.stack(maps).mean(0) + self.cfg.floor


def test_an_unregistered_term_is_an_unknown_key():
    """Runs first in this file, before the module's fixture registers the term."""
    with pytest.raises(UserError, match="unknown config key 'guidance.attend'.*appearance.*layout"):
        load_config(None, ["guidance.attend.weight=2"])
    assert "attend" not in to_dict(load_config(None, []))["guidance"]


def test_installing_a_term_changes_no_existing_key():
    """A plugin term that is off and untouched is left out of what keys hash (the gate's signature, guided sample
    keys), so installing one neither voids a baseline nor re-samples a store; turning it on does change them."""
    from persobench.core.config import signature_dict, stable_hash
    from persobench.harness.guided import guidance_signature

    cfg = load_config(None, ["guidance.name=pick-and-draw"])
    before = stable_hash(signature_dict(cfg)), stable_hash(guidance_signature(cfg.guidance, "pick-and-draw"))
    with guidance_terms.registered("attend", AttendTerm):
        again = load_config(None, ["guidance.name=pick-and-draw"])
        assert "attend" in to_dict(again)["guidance"]  # the config has the section ...
        assert (stable_hash(signature_dict(again)), stable_hash(guidance_signature(again.guidance, "pick-and-draw"))) == before
        on = load_config(None, ["guidance.name=pick-and-draw", "guidance.attend.enabled=true"])
        assert stable_hash(signature_dict(on)) != before[0]  # ... and counts once it is used


@pytest.fixture(scope="module")
def registered():
    with guidance_terms.registered("attend", AttendTerm):
        yield
    assert "attend" not in guidance_terms


def _overrides(tiny_model, store):
    return [f"model.source={tiny_model}", f"store={store}", "dataset.subjects=[ball1]", "dataset.max_prompts=1",
            "dataset.images_per_prompt=2", "sampler.steps=3", "methods=[vanilla-sd]", "guidance.name=pick-and-draw",
            "guidance.appearance.enabled=false", "guidance.layout.enabled=false", "guidance.attend.enabled=true",
            "guidance.attend.weight=50", "metrics.names=[dino]", "metrics.bootstrap=0"]


def test_a_term_is_a_config_section_only_while_registered(registered):
    cfg = load_config(None, ["guidance.attend.weight=2", "guidance.attend.layers=[up]"])
    assert cfg.guidance.attend == AttendConfig(weight=2.0, layers=["up"])
    assert list(to_dict(cfg)["guidance"])[-3:] == ["appearance", "layout", "attend"]  # registration order
    assert list(cfg.guidance.terms()) == ["appearance", "layout", "attend"]
    with pytest.raises(UserError, match="guidance.attend.floor must be >= 0"):
        load_config(None, ["guidance.attend.floor=-1"])
    with pytest.raises(UserError, match="unknown config key 'guidance.attend.nope'"):
        load_config(None, ["guidance.attend.nope=1"])


@pytest.fixture(scope="module")
def attend_run(registered, tmp_path_factory, tiny_model):
    store = tmp_path_factory.mktemp("store")
    assert main(["run", *_overrides(tiny_model, store), "report.wandb=offline"]) == 0
    return store / "default"


def test_a_new_term_guides_and_flows_into_config_and_tables(attend_run):
    point = next((attend_run / "points").iterdir())
    written = yaml.safe_load((point / "config.yaml").read_text())
    assert written["guidance"]["attend"] == {"enabled": True, "weight": 50.0, "layers": ["all"], "floor": 0.0}
    records = pd.read_parquet(point / "records.parquet")
    guided = records[records["guidance"] == "pick-and-draw"].sort_values(["prompt_template", "index"])
    plain = records[records["guidance"] == "none"].sort_values(["prompt_template", "index"])
    assert len(guided) == len(plain) == 2
    import numpy as np
    from PIL import Image

    diff = [np.abs(np.asarray(Image.open(attend_run / g), dtype=float) - np.asarray(Image.open(attend_run / p), dtype=float)).mean()
            for g, p in zip(guided["image"], plain["image"])]
    assert min(diff) > 0.5, diff  # the term alone moved every guided image
    table = pd.read_csv(point / "table.csv")
    assert set(table["guidance"]) == {"none", "pick-and-draw"}


def test_a_new_term_flows_into_wandb(attend_run):
    runs = sorted((attend_run / "wandb").glob("offline-run-*/*.wandb"))
    configs = [run_info(r)[2] for r in runs]
    guided = [c for c in configs if "pick-and-draw" in c.get("operating_point", "")]
    assert guided and json.loads(guided[0]["guidance"])["attend"]["weight"] == 50.0


def test_a_new_term_is_gated(registered, tmp_path, tiny_model, capsys, monkeypatch):
    config = tmp_path / "gate.yaml"
    config.write_text(yaml.safe_dump({
        "name": "gate", "seed": 0, "methods": ["vanilla-sd"], "model": {"source": str(tiny_model), "device": "cpu"},
        "sampler": {"steps": 3}, "dataset": {"subjects": ["ball1"], "max_prompts": 1, "images_per_prompt": 2},
        "guidance": {"name": "pick-and-draw", "appearance": {"enabled": False}, "layout": {"enabled": False},
                     "attend": {"enabled": True, "weight": 50.0}},
        "metrics": {"names": ["dino"], "bootstrap": 0}, "report": {"wandb": "disabled"}}))
    baseline = tmp_path / "baseline.json"
    assert main(["regress", str(config), "--baseline", str(baseline), "--update", "--reason", "first"]) == 0
    assert json.loads(baseline.read_text())["config"]["guidance"]["attend"]["weight"] == 50.0
    assert main(["regress", str(config), "--baseline", str(baseline)]) == 0
    capsys.readouterr()
    monkeypatch.setitem(SCALE, "value", 400.0)  # the term's effect changes: the guided row drifts
    assert main(["regress", str(config), "--baseline", str(baseline)]) == 1
    err = capsys.readouterr().err
    assert "vanilla-sd/pick-and-draw dino" in err and "vanilla-sd/none" not in err
