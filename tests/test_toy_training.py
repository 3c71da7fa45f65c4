"""The toy world's one training loop (persobench/toyworld/training/loop.py): every stage trains through it,
an interrupted run resumes to the same weights as an uninterrupted one, the EMA is diffusers' EMAModel,
the schedule is diffusers' cosine with the old floor, and the previous loops' checkpoints still resume.
And the model cards are the evaluation's JSON rendered (no measured figure lives in cards.py)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from persobench.core.components import ASSETS
from persobench.toyworld.training.common import batch_indices
from persobench.toyworld.training.loop import LoopConfig, Stage, checkpoints, cosine_schedule, train
from persobench.toyworld.training.stages import ORDER, STAGES, stage_config

REPO = Path(__file__).resolve().parent.parent

# A few steps of every stage at the smoke sizes, small enough for the whole file to take well under a minute.
TINY = {
    "vae": dict(steps=4, n_images=32, checkpoint_every=2, log_every=1),
    "t2i": dict(steps=4, n_images=32, batch_size=4, checkpoint_every=2, export_every=2, log_every=1, attention_loss_from=2),
    "vae-decoder": dict(steps=2, wide_steps=2, polish_steps=2, n_images=32, checkpoint_every=2, export_every=2, log_every=1),
    **{name: dict(steps=4, n_images=32, batch_size=4, checkpoint_every=2, log_every=1) for name in ("clip", "dino", "oracle", "blip")},
}
EXPORTS = {"vae": ["sd/vae"], "t2i": ["sd/unet", "sd/text_encoder"], "vae-decoder": ["sd/vae"], "clip": ["clip"],
           "dino": ["dino"], "oracle": ["oracle"], "blip": ["blip"]}


def tiny(name: str, **overrides):
    return stage_config(name, smoke=True, **{**TINY[name], **overrides})


def total_steps(cfg) -> int:
    return cfg.steps + getattr(cfg, "wide_steps", 0) + getattr(cfg, "polish_steps", 0)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """Every stage, in order, a few steps each: out/ (models), work/ (checkpoints, logs, data caches)."""
    root = tmp_path_factory.mktemp("toy-training")
    for name in ORDER:
        STAGES[name].train(root / "out", root / "work", tiny(name))
        if name == "vae":  # the vae-decoder stage starts from the narrow VAE
            shutil.copytree(root / "out" / "sd" / "vae", root / "vae-narrow")
    return root


def test_every_stage_runs_through_the_loop_and_exports(world):
    work = world / "work"
    for name in ORDER:
        folders = [work / name] if name != "vae-decoder" else [work / name / "narrow", work / name / "wide"]
        for folder in folders:
            found = checkpoints(folder)
            assert found, f"{name}: no accelerate checkpoint in {folder}"
            files = {p.name for p in found[-1][1].iterdir()}
            assert {"model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl"} <= files
        assert checkpoints(folders[-1])[-1][0] == total_steps(tiny(name))
        logged = [json.loads(line) for line in (work / f"{name}.loss.jsonl").read_text().splitlines()]
        assert [r["step"] for r in logged] == list(range(1, total_steps(tiny(name)) + 1))  # log_every 1, no duplicates
        for part in EXPORTS[name]:
            assert any((world / "out" / part).glob("*.safetensors")), f"{name}: nothing exported to {part}"
    assert (world / "out" / "sd" / "TRAINED_STEPS").read_text().strip() == "4"
    t2i = [json.loads(line) for line in (work / "t2i.loss.jsonl").read_text().splitlines()]
    assert "localisation" not in t2i[1] and 0 <= t2i[2]["localisation"] <= 1  # on from step 2 (the third step)
    # the learning rate of each step: diffusers' warmup s / 200 (stages too short to leave it); vae-decoder
    # restarts it for the widened decoder (phase 2) and holds polish_lr in phase 3, as the old loop did
    assert [r["lr"] for r in t2i] == pytest.approx([3e-4 * s / 200 for s in range(4)])
    decoder = [json.loads(line)["lr"] for line in (work / "vae-decoder.loss.jsonl").read_text().splitlines()]
    assert decoder == pytest.approx([0, 3e-4 / 200, 0, 3e-4 / 200, 3e-5, 3e-5])


# What trained the shipped models (the previous loops' hard-coded values; model cards, training/toyworld/).
SHIPPED = {
    "vae": dict(steps=2000, batch_size=16, lr=1e-3, weight_decay=0.0, n_images=20000, seed=0, ema_decay=None, grad_clip=None,
                kl_weight=1e-6),
    "t2i": dict(steps=40000, batch_size=32, lr=3e-4, weight_decay=1e-2, n_images=40000, seed=0, ema_decay=0.999, grad_clip=1.0,
                caption_dropout=0.1, attention_loss=0.1, attention_loss_from=5000, attention_loss_max_t=700),
    "vae-decoder": dict(steps=6000, wide_steps=9000, polish_steps=3000, polish_lr=3e-5, batch_size=16, lr=3e-4, weight_decay=0.0,
                        n_images=20000, seed=1, ema_decay=None, grad_clip=None),
    "clip": dict(steps=3000, batch_size=64, lr=5e-4, weight_decay=0.05, n_images=20000, seed=0, ema_decay=None, grad_clip=None),
    "dino": dict(steps=2000, batch_size=64, lr=5e-4, weight_decay=0.05, n_images=20000, seed=0, ema_decay=None, grad_clip=None),
    "oracle": dict(steps=4000, batch_size=64, lr=5e-4, weight_decay=0.05, n_images=20000, seed=0, ema_decay=None, grad_clip=None),
    "blip": dict(steps=1000, batch_size=16, lr=1e-3, weight_decay=0.05, n_images=20000, seed=0, ema_decay=None, grad_clip=None),
}


@pytest.mark.parametrize("name", ORDER)
def test_full_configs_are_the_ones_that_trained_the_shipped_models(name):
    cfg = STAGES[name].full
    assert cfg.warmup == 200 and cfg.lr_floor == 0.1 and not cfg.tiny and cfg.max_steps_this_run is None
    assert {k: getattr(cfg, k) for k in SHIPPED[name]} == SHIPPED[name]


def test_t2i_ships_its_ema_weights_not_its_raw_weights(world):
    from diffusers import UNet2DConditionModel

    ckpt = checkpoints(world / "work" / "t2i")[-1][1]
    raw = load_file(ckpt / "model.safetensors")  # the UNet: the first module the loop prepares
    ema = torch.load(ckpt / "custom_checkpoint_0.pkl", weights_only=False)  # diffusers EMAModel.state_dict()
    shipped = list(UNet2DConditionModel.from_pretrained(world / "out" / "sd" / "unet").named_parameters())
    assert ema["decay"] == 0.999 and ema["optimization_step"] == 4
    assert len(shipped) == len(ema["shadow_params"])
    assert all(torch.equal(p, s) for (_, p), s in zip(shipped, ema["shadow_params"]))
    assert any(not torch.equal(p, raw[k]) for k, p in shipped)


def _state(work: Path) -> dict[str, object]:
    """Every tensor of the latest checkpoint of each checkpoint folder under `work`."""
    out: dict[str, object] = {}
    for folder in sorted({p.parent for p in work.rglob("checkpoint-*")}):
        step, ckpt = checkpoints(folder)[-1]
        for f in sorted(ckpt.iterdir()):
            key = f"{folder.relative_to(work)}/{step}/{f.name}"
            if f.suffix == ".safetensors":
                out[key] = load_file(f)
            elif f.name.startswith(("custom_checkpoint", "optimizer")):
                out[key] = torch.load(f, weights_only=False)
    return out


def _same(a, b, path="") -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{path} differs (max {(a.float() - b.float()).abs().max():.3g})"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _same(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a} != {b}"


def _setup(world: Path, root: Path, name: str) -> tuple[Path, Path]:
    out, work = root / "out", root / "work"
    shutil.copytree(world / "out", out)
    shutil.copytree(world / "work" / "cache", work / "cache")  # rendered data: the same inputs, no re-rendering
    if name == "vae-decoder":
        shutil.rmtree(out / "sd" / "vae")
        shutil.copytree(world / "vae-narrow", out / "sd" / "vae")
    return out, work


# every stage interrupted mid-run; vae-decoder also at its phase boundary (2) and inside its polish phase (5)
RESUMES = [(name, 2) for name in ORDER if name != "vae-decoder"] + [("vae-decoder", 1), ("vae-decoder", 2), ("vae-decoder", 5)]


@pytest.mark.parametrize(("name", "k"), RESUMES, ids=[f"{n}-after-{k}" for n, k in RESUMES])
def test_an_interrupted_stage_resumes_to_the_uninterrupted_weights(world, tmp_path, name, k):
    """Stop after k steps (the loop checkpoints there), start again, and reach bit-identical weights, EMA,
    optimizer state and exports as one run of the same length (torch.equal: same code, same thread count)."""
    out_a, work_a = _setup(world, tmp_path / "a", name)
    STAGES[name].train(out_a, work_a, tiny(name))
    out_b, work_b = _setup(world, tmp_path / "b", name)
    STAGES[name].train(out_b, work_b, tiny(name, max_steps_this_run=k))
    assert max(s for f in {p.parent for p in work_b.rglob("checkpoint-*")} for s, _ in checkpoints(f)) == k
    STAGES[name].train(out_b, work_b, tiny(name))
    _same(_state(work_a), _state(work_b))
    for part in EXPORTS[name]:
        for f in (out_a / part).glob("*.safetensors"):
            _same(load_file(f), load_file(out_b / part / f.name), f"{part}/{f.name}")
    assert (work_a / f"{name}.loss.jsonl").read_text() == (work_b / f"{name}.loss.jsonl").read_text()


def _toy(cfg: LoopConfig, global_noise: bool = True, fail_at: int | None = None, after_step=None) -> Stage:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(1))
    y = x.sin().sum(1, keepdim=True)

    def loss(step: int, idx) -> torch.Tensor:
        if step == fail_at:
            raise KeyboardInterrupt  # a kill between checkpoints
        noise = 0.01 * torch.randn(len(idx), 1) if global_noise else 0  # the global RNG: restored on resume
        return F.mse_loss(model(x[idx]) + noise, y[idx])

    return Stage("toy", cfg, {"model": model}, lambda step: batch_indices(64, 8, 0, step), loss, ema=("model",),
                 after_step=after_step)


TOY = LoopConfig(steps=9, lr=3e-2, warmup=3, ema_decay=0.9, checkpoint_every=3, log_every=1)


def test_a_killed_run_resumes_from_its_last_checkpoint_without_duplicate_log_lines(tmp_path):
    reference = train(_toy(TOY), tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        train(_toy(TOY, fail_at=5), tmp_path / "b")  # steps 0-4 done, checkpoint at 3
    assert [s for s, _ in checkpoints(tmp_path / "b" / "toy")] == [3]
    resumed = train(_toy(TOY), tmp_path / "b")
    for a, b in zip(reference.modules["model"].parameters(), resumed.modules["model"].parameters()):
        assert torch.equal(a, b)
    for a, b in zip(reference.ema["model"].shadow_params, resumed.ema["model"].shadow_params):
        assert torch.equal(a, b)
    assert (tmp_path / "a" / "toy.loss.jsonl").read_text() == (tmp_path / "b" / "toy.loss.jsonl").read_text()
    assert [s for s, _ in checkpoints(tmp_path / "b" / "toy")] == [9]  # checkpoints_total_limit 1
    again = train(_toy(TOY), tmp_path / "b")  # finished: no step is trained again
    assert again.step == 9 and (tmp_path / "b" / "toy.loss.jsonl").read_text().count("\n") == 9


def test_the_ema_is_diffusers_emamodel_over_the_raw_weights(tmp_path):
    from diffusers.training_utils import EMAModel

    raw: list[list[torch.Tensor]] = []
    def record(step, last, state):  # Parameters (requires_grad): EMAModel.step copies frozen tensors instead of averaging
        raw.append([torch.nn.Parameter(p.detach().clone()) for p in state.modules["model"].parameters()])

    stage = _toy(TOY, after_step=record)
    replay = EMAModel([p.detach().clone() for p in stage.modules["model"].parameters()], decay=TOY.ema_decay)
    trained = train(stage, tmp_path)
    for params in raw:
        replay.step(params)
    ema = trained.ema["model"]
    assert ema.optimization_step == len(raw) == TOY.steps
    assert all(torch.equal(a, b) for a, b in zip(ema.shadow_params, replay.shadow_params))
    assert all(not torch.equal(a, b) for a, b in zip(ema.shadow_params, raw[-1]))  # an average, not the weights
    copy = trained.ema_copy("model")
    assert all(torch.equal(a, b) for a, b in zip(copy.parameters(), ema.shadow_params))


def test_the_schedule_is_diffusers_cosine_with_the_old_floor():
    """After the warmup, the old hand-written cosine_lr exactly; during it, diffusers' s / warmup where the
    old loop used (s + 1) / warmup (the difference loop.py documents)."""
    peak, warmup, horizon, floor = 3e-4, 20, 120, 0.1
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=peak)
    sched = cosine_schedule(opt, warmup, horizon, floor)
    for step in range(horizon + 30):
        if step < warmup:
            expected = peak * step / warmup
        else:
            t = min(1.0, (step - warmup) / max(1, horizon - warmup))
            expected = peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))
        assert opt.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-12, abs=1e-15), step
        opt.step()
        sched.step()


def test_a_previous_loop_checkpoint_resumes(tmp_path):
    """`<work>/<stage>.ckpt` in the old format ({module, ema_<module>, opt, step}) continues where it stopped."""
    import dataclasses

    reference = train(_toy(TOY, global_noise=False), tmp_path / "a")  # no global RNG: the old format has none
    half = train(_toy(dataclasses.replace(TOY, max_steps_this_run=4), global_noise=False), tmp_path / "b")
    ckpt = checkpoints(tmp_path / "b" / "toy")[-1][1]
    names = [k for k, _ in half.modules["model"].named_parameters()]
    legacy = {"model": half.modules["model"].state_dict(), "opt": torch.load(ckpt / "optimizer.bin", weights_only=False),
              "ema_model": dict(zip(names, half.ema["model"].shadow_params)), "step": 4}
    work = tmp_path / "legacy"
    work.mkdir()
    torch.save(legacy, work / "toy.ckpt")
    resumed = train(_toy(TOY, global_noise=False), work)
    assert resumed.step == 9 and checkpoints(work / "toy")[-1][0] == 9
    for a, b in zip(reference.modules["model"].parameters(), resumed.modules["model"].parameters()):
        assert torch.equal(a, b)
    for a, b in zip(reference.ema["model"].shadow_params, resumed.ema["model"].shadow_params):
        assert torch.equal(a, b)


def test_the_committed_t2i_checkpoint_holds_the_shipped_unet(tmp_path):
    """The committed training/toyworld/t2i.ckpt (the previous loop's format) resumes through the new loop, and
    its EMA is the shipped UNet (exported in fp16 then stored as fp32, hence the rounding)."""
    from transformers import CLIPTokenizer

    from persobench.toyworld.tokenizer import build_tokenizer_files
    from persobench.toyworld.training.architectures import make_text_encoder, make_unet
    from persobench.toyworld.training.t2i import LEGACY_KEYS, T2iConfig

    committed = REPO / "training" / "toyworld" / "t2i.ckpt"
    if not committed.is_file():
        pytest.skip("training/toyworld/t2i.ckpt not present")
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "t2i.ckpt").symlink_to(committed)
    tokenizer = CLIPTokenizer.from_pretrained(build_tokenizer_files(tmp_path / "tokenizer"))
    text = make_text_encoder(tokenizer)
    unet = make_unet(text.config.hidden_size)
    stage = Stage("t2i", T2iConfig(max_steps_this_run=0), {"unet": unet, "text_encoder": text}, lambda s: None, lambda s, b: None,
                  ema=("unet", "text_encoder"), legacy_keys=LEGACY_KEYS)
    resumed = train(stage, tmp_path / "work")
    steps = int((ASSETS / "sd" / "TRAINED_STEPS").read_text())
    assert resumed.step == steps and resumed.ema["unet"].optimization_step == steps
    shipped = load_file(ASSETS / "sd" / "unet" / "diffusion_pytorch_model.safetensors")
    ema = resumed.ema_copy("unet").state_dict()
    assert all(torch.equal(ema[k].half().float(), v) for k, v in shipped.items())
    assert not checkpoints(tmp_path / "work" / "t2i")  # zero steps: nothing written


CARDS = ("sd", "clip", "dino", "oracle", "blip")


def _render(tmp_path: Path, evaluation: dict) -> dict[str, str]:
    from persobench.toyworld.cards import write_cards

    assets = tmp_path / "assets"
    for name in CARDS:
        (assets / name).mkdir(parents=True, exist_ok=True)
    (assets / "evaluation.json").write_text(json.dumps(evaluation, indent=2))
    write_cards(assets, None, REPO / "training" / "toyworld")
    return {name: (assets / name / "MODEL_CARD.md").read_text() for name in CARDS}


def test_the_shipped_cards_are_the_committed_evaluation_json_rendered(tmp_path):
    evaluation = json.loads((ASSETS / "evaluation.json").read_text())
    cards = _render(tmp_path, evaluation)
    for name in CARDS:
        assert cards[name] == (ASSETS / name / "MODEL_CARD.md").read_text(), name
    # every figure a card states comes from the JSON: change them there and the cards follow
    evaluation["vae_psnr_db"] = 12.5
    evaluation["parameters"]["clip"] = 123
    evaluation["history"]["t2i_without_localisation_loss"]["attention_mass_in_mask"]["class_word"] = 0.5
    evaluation["blip_toy_per_subject"]["dino"] = 0.111
    evaluation["t2i_trained_steps"] = 777
    cards = _render(tmp_path, evaluation)
    assert '"vae_psnr_db": 12.5' in cards["sd"] and "(class 0.50 vs context 0.31 " in cards["sd"]
    assert "**UNet steps trained.** 777 (schedule horizon 40,000)" in cards["sd"]
    assert "**Parameters.** 123\n" in cards["clip"] and '"dino": 0.111' in cards["blip"]


def test_an_evaluation_of_some_stages_keeps_the_other_recorded_figures(tmp_path):
    from persobench.toyworld.evaluate import record_evaluation

    path = tmp_path / "evaluation.json"
    shutil.copy(ASSETS / "evaluation.json", path)
    before = json.loads(path.read_text())
    merged = record_evaluation({"dino_auroc": 0.5}, path)
    assert json.loads(path.read_text()) == merged
    assert merged["dino_auroc"] == 0.5 and merged["bars"]["dino auroc"] == {"value": 0.5, "goal": 0.95, "met": False}
    assert {k: v for k, v in merged.items() if k not in ("dino_auroc", "bars")} == {
        k: v for k, v in before.items() if k not in ("dino_auroc", "bars")}

