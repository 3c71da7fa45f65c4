"""`persobench run CONFIG --shape-check`: the config's whole pipeline on random-weight twins of its models.

Before anyone spends GPU-hours on a config, this runs every stage of it (every method with its preset, every
guidance setting, the inversion, the metrics, the tables and the report) through the normal runner, on twins
(`persobench/twins/`: the real models' layouts and shapes with seeded random weights), with the work list cut to
1 subject x 1 prompt x 1 image per row, 2 sampling steps and 2 fit steps, at the config's resolution. It prints
each phase's wall time and peak memory and projects the full run's time and peak memory on this machine (each
phase's measured unit cost x the full work list's counts) and on a GPU (`worklist.unit_table()`, the table the
dry run reads).

What is swapped, and nothing else:
- `model.source` (anything but the embedded toy model) -> the sd15 twin; on a machine without CUDA the run is
  `model.device=cpu model.dtype=fp32` (fp16 is refused on the CPU, and the twins' fp16 files are cast on load);
- each real metric backbone the metrics embed with (dino-vits16, dino-vits8, clip-vit-b32) -> its twin, through
  `metrics.<kind>_weights` at full size (the real recipe's loader), or `<kind>:<folder>` for a reduced twin;
- BLIP-Diffusion's `real` backend -> the blipdiffusion twin (`weights`, `qformer_tokenizer`);
- fit lengths: `steps`, and DreamBooth's prior-preservation `num_class_images` / `class_steps`, where a method has them;
- the dataset: the config's own when it loads (first subject), else a generated stand-in subject.

The run goes to its own store folder, `<store>/<name>-shape-check` (`-w<d>` for reduced twins), marked with
`STORE_MARKER`: `runner.run` refuses a real run there and a run on twins in a store of real runs (`guard_store`).
Twin weights also fingerprint as `twin-...` (core/components.py, reports/metrics/backbones.py), so no cache key of
a twin's can equal a real model's.

Reduced twins (`--shape-check-scale 8`, or PERSOBENCH_SHAPE_CHECK_SCALE) divide every width by 8 and keep depths,
vocabularies and resolutions: the CI size, which runs the same code paths in a fraction of the time and memory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import resource
import shutil
import statistics
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..core.errors import UserError

logger = logging.getLogger(__name__)

STORE_MARKER = "persobench_shape_check.json"  # a store folder holding it was made with twins
TWINS_ENV = "PERSOBENCH_TWINS"  # where twins are cached (default: $XDG_CACHE_HOME/persobench/twins)
SCALE_ENV = "PERSOBENCH_SHAPE_CHECK_SCALE"  # the twins' width divisor when --shape-check-scale is not given
STEPS = 2  # sampling steps and fit steps of a shape check
SHRINK = {"steps": STEPS, "num_class_images": 1, "class_steps": STEPS}  # method fields cut, where a method has them
STAND_IN = {"name": "stand_in_dog", "class_noun": "dog", "images": 4, "size": 512}
REAL_BACKBONES = ("dino-vits16", "dino-vits8", "clip-vit-b32")  # backbone names that have a twin of the same name
RSS_INTERVAL = 0.01  # seconds between RSS samples

# DreamBench as published (google/dreambooth dataset/prompts_and_classes.txt): 30 subjects of 15 classes, 25 prompts
# each (the object list, or the live list for cats and dogs); what the projection counts when the data is not here.
DREAMBENCH_SUBJECTS = (
    ("backpack", "backpack"), ("backpack_dog", "backpack"), ("bear_plushie", "stuffed animal"), ("berry_bowl", "bowl"),
    ("can", "can"), ("candle", "candle"), ("cat", "cat"), ("cat2", "cat"), ("clock", "clock"), ("colorful_sneaker", "sneaker"),
    ("dog", "dog"), ("dog2", "dog"), ("dog3", "dog"), ("dog5", "dog"), ("dog6", "dog"), ("dog7", "dog"), ("dog8", "dog"),
    ("duck_toy", "toy"), ("fancy_boot", "boot"), ("grey_sloth_plushie", "stuffed animal"), ("monster_toy", "toy"),
    ("pink_sunglasses", "glasses"), ("poop_emoji", "toy"), ("rc_car", "toy"), ("red_cartoon", "cartoon"), ("robot_toy", "toy"),
    ("shiny_sneaker", "sneaker"), ("teapot", "teapot"), ("vase", "vase"), ("wolf_plushie", "stuffed animal"),
)
DREAMBENCH_PROMPTS = 25


def twins_cache() -> Path:
    """Where twins are built once and reused: $PERSOBENCH_TWINS, else the user's cache folder."""
    if os.environ.get(TWINS_ENV):
        return Path(os.environ[TWINS_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "persobench" / "twins"


def default_scale() -> int:
    raw = os.environ.get(SCALE_ENV, "1").strip() or "1"
    if not raw.isdigit():
        raise UserError(f"{SCALE_ENV} must be a width divisor (1, 2, 4 or 8), got {raw!r}")
    return int(raw)


# ---- the store guard ---------------------------------------------------------------------------------------------
_checking = False  # True while a shape check runs its points (its store is a twin store even on the toy model)


def uses_twins(cfg) -> bool:
    """Whether any model the config loads is a twin: the base model, a metric backbone's weights, BLIP-Diffusion's."""
    from ..core.sources import resolve_source
    from ..twins import is_twin

    paths = [resolve_source(cfg.model.source, cfg.model.local_files_only)]
    for kind in ("dino", "clip"):
        weights, backbone = getattr(cfg.metrics, f"{kind}_weights"), getattr(cfg.metrics, f"{kind}_backbone")
        paths += [Path(weights)] if weights else []
        paths += [Path(backbone.split(":", 1)[1])] if backbone.startswith(("dino:", "clip:")) else []
    if "blip-diffusion" in cfg.methods and cfg.method_params.get("blip-diffusion", {}).get("weights"):
        paths.append(Path(str(cfg.method_params["blip-diffusion"]["weights"])))
    return any(is_twin(p.expanduser()) for p in paths)


def _holds_runs(root: Path) -> bool:
    return root.is_dir() and any(p.name != STORE_MARKER for p in root.iterdir())


def mark_store(root: Path, info: dict[str, Any]) -> None:
    """Claim `root` for twins (refused when it already holds real runs)."""
    root = root.expanduser()
    if (root / STORE_MARKER).is_file():
        return
    if _holds_runs(root):
        raise UserError(f"store folder '{root}' holds real runs; a run on random-weight twins (--shape-check) writes only to a "
                        "store of its own: pass another name= or store=, or remove the folder")
    from ..core.atomic import write_json

    write_json(root / STORE_MARKER, {"shape_check": True, "what": "persobench run --shape-check: random-weight twins, not real "
                                     "weights; its scores mean nothing", **info})


def guard_store(cfg) -> None:
    """Before a run writes anything: a twin store takes only runs on twins, and a store of real runs takes none."""
    root = (Path(cfg.store) / cfg.name).expanduser()
    marked = (root / STORE_MARKER).is_file()
    twins = _checking or uses_twins(cfg)
    if marked and not twins:
        raise UserError(f"store folder '{root}' was made by `persobench run --shape-check` with random-weight twins; a run on "
                        "real weights never mixes with it: pass another name= or store=, or remove the folder")
    if twins and not marked:
        mark_store(root, {"config_name": cfg.name})


# ---- phases: wall time and peak memory ---------------------------------------------------------------------------
def rss_bytes() -> int | None:
    """This process's resident set size now (Linux /proc), or None where /proc is not there."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def maxrss_bytes() -> int:
    """The process's peak RSS so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


@dataclasses.dataclass
class Phase:
    kind: str
    method: str | None
    seconds: float = 0.0
    rss_start: int = 0
    rss_peak: int = 0
    cuda_peak: int | None = None
    images: int = 0
    vae_seconds: float = 0.0  # VAE encoder / decoder forwards inside the phase (a per-image cost, not per step)


class Recorder:
    """Phases in order, with their peak RSS (a background thread samples it every RSS_INTERVAL s; a phase in which
    ru_maxrss rose also takes the new ru_maxrss, so the process's true peak lands in the phase that made it)."""

    def __init__(self, cuda: bool = False) -> None:
        self.entries: list[Phase] = []
        self.current: Phase | None = None
        self.cuda = cuda
        self.fit_step_times: dict[str, list[list[float]]] = defaultdict(list)  # method -> per fit: its step end times
        self.unet_nograd = [0.0, 0]  # seconds and samples of the base UNet's no-grad forwards
        self._unet_started: tuple[float, int] | None = None
        self.peak = 0
        self.sampled = rss_bytes() is not None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="persobench-rss", daemon=True)
        self._vae_started: float | None = None

    def method(self) -> str:
        how = f"process RSS sampled every {RSS_INTERVAL * 1000:.0f} ms by a background thread, raised to ru_maxrss where that " \
              "rose in the phase" if self.sampled else "ru_maxrss where it rose in the phase (no /proc: RSS not sampled)"
        return how + ("; CUDA: torch.cuda.max_memory_allocated per phase" if self.cuda else "")

    def _sample(self) -> None:
        while not self._stop.wait(RSS_INTERVAL):
            now = rss_bytes()
            if now is None:
                return
            self.peak = max(self.peak, now)
            current = self.current
            if current is not None and now > current.rss_peak:
                current.rss_peak = now

    def start(self) -> None:
        self.peak = max(rss_bytes() or 0, self.peak)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1)
        self.peak = max(self.peak, maxrss_bytes())

    @contextlib.contextmanager
    def measure(self, kind: str, method: str | None, images: int):
        import torch

        p = Phase(kind, method, images=images)
        p.rss_start = p.rss_peak = rss_bytes() or maxrss_bytes()
        max_before = maxrss_bytes()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        self.current = p
        try:
            yield p
        finally:
            if self.cuda:
                torch.cuda.synchronize()
                p.cuda_peak = torch.cuda.max_memory_allocated()
            p.seconds = time.perf_counter() - started
            self.current = None
            p.rss_peak = max(p.rss_peak, rss_bytes() or 0)
            max_after = maxrss_bytes()
            if max_after > max_before:
                p.rss_peak = max(p.rss_peak, max_after)
            self.entries.append(p)

    def watch_vae(self, vae) -> None:
        """Time the VAE's encoder / decoder forwards, so a phase's per-image cost splits from its per-step cost."""
        def pre(module, args):
            self._vae_started = time.perf_counter()

        def post(module, args, output):
            if self._vae_started is not None and self.current is not None:
                if self.cuda:
                    import torch

                    torch.cuda.synchronize()
                self.current.vae_seconds += time.perf_counter() - self._vae_started
            self._vae_started = None

        for part in (vae.encoder, vae.decoder):
            part.register_forward_pre_hook(pre)
            part.register_forward_hook(post)

    def watch_unet(self, unet) -> None:
        """Time the base UNet's no-grad forwards (plain sampling, templates, inversion, class images): the machine's
        per-image step cost, for work the shape check cuts to nothing (DreamBooth's prior-preservation images)."""
        import torch

        def pre(module, args, kwargs):
            sample = args[0] if args else kwargs.get("sample")
            self._unet_started = (time.perf_counter(), len(sample)) if not torch.is_grad_enabled() else None

        def post(module, args, kwargs, output):
            if self._unet_started is not None:
                if self.cuda:
                    torch.cuda.synchronize()
                started, n = self._unet_started
                self.unet_nograd[0] += time.perf_counter() - started
                self.unet_nograd[1] += n
            self._unet_started = None

        unet.register_forward_pre_hook(pre, with_kwargs=True)
        unet.register_forward_hook(post, with_kwargs=True)


_recorder: Recorder | None = None


def phase(kind: str, method: str | None = None, images: int = 0):
    """A measured phase of the run while a shape check records (`runner.run` marks its phases with it); a no-op
    otherwise. A phase inside a phase counts to the outer one."""
    rec = _recorder
    if rec is None or rec.current is not None:
        return contextlib.nullcontext()
    return rec.measure(kind, method, images)


class TimedProgress(Progress):
    """The run's progress bar, also noting when each fit step ends (`FitBar` advances a task named 'fit <method>
    <subject>' once per step), so a fit's per-step cost splits from its setup."""

    def __init__(self, recorder: Recorder) -> None:
        super().__init__(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=False)
        self._recorder = recorder
        self._fits: dict[Any, tuple[str, list[float]]] = {}

    def add_task(self, description: str, *args, **kwargs):
        task = super().add_task(description, *args, **kwargs)
        words = description.split()
        if len(words) >= 3 and words[0] == "fit":
            self._fits[task] = (words[1], [])
        return task

    def update(self, task_id, *args, **kwargs):
        if kwargs.get("advance") and task_id in self._fits:
            self._fits[task_id][1].append(time.perf_counter())
        return super().update(task_id, *args, **kwargs)

    def remove_task(self, task_id) -> None:
        if task_id in self._fits:
            method, times = self._fits.pop(task_id)
            self._recorder.fit_step_times[method].append(times)
        super().remove_task(task_id)


# ---- the stand-in subject ----------------------------------------------------------------------------------------
def write_stand_in(folder: Path) -> Path:
    """A few synthetic 512 px photos of one made-up subject (a coloured blob on a textured ground), deterministic."""
    import numpy as np
    from PIL import Image

    from ..core.atomic import write_png

    n, size = STAND_IN["images"], STAND_IN["size"]
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        path = folder / f"{i:02d}.png"
        if path.is_file():
            continue
        rng = np.random.default_rng(i)
        ground = np.stack([0.55 + 0.3 * yy, 0.5 + 0.2 * xx, 0.35 + 0.1 * (xx + yy)], -1)
        cx, cy, r = 0.5 + 0.1 * rng.uniform(-1, 1), 0.55 + 0.08 * rng.uniform(-1, 1), 0.22 + 0.04 * rng.uniform()
        blob = ((xx - cx) / r) ** 2 + ((yy - cy) / (0.8 * r)) ** 2 < 1
        ear = ((xx - cx - 0.6 * r) / (0.3 * r)) ** 2 + ((yy - cy + 0.8 * r) / (0.3 * r)) ** 2 < 1
        ground[blob | ear] = (0.62, 0.42, 0.2)
        pixels = np.clip(ground + rng.normal(0, 0.04, ground.shape), 0, 1)
        write_png(path, Image.fromarray((pixels * 255).astype(np.uint8)))
    return folder


# ---- preparing the configs ---------------------------------------------------------------------------------------
def _override(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value)}"  # JSON is YAML: paths with ':' or '#' stay strings


def _has_field(method: str, params: dict, field: str, value: Any) -> bool:
    """Whether the method's parameters take `field` (its preset resolution rejects unknown fields)."""
    from ..methods import methods

    try:
        methods.get(method).fit_steps({**params, field: value})
    except UserError:
        return False
    return True


@dataclasses.dataclass
class Plan:
    """What a shape check swaps in, and the notes it prints."""

    twins: dict[str, Path] = dataclasses.field(default_factory=dict)
    overrides: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    stand_in: Path | None = None
    cuda: bool = False


class ShapeCheck:
    """Prepares the shrunk configs, measures their run through the normal runner, and prints the projection."""

    def __init__(self, config_file: str, configs: list[tuple[list[str], Any]], scale: int | None = None) -> None:
        self.config_file = config_file
        self.full = configs  # (sweep point overrides, the config as the user asked for it)
        self.scale = default_scale() if scale is None else scale
        self.recorder: Recorder | None = None
        self.shrunk: list[tuple[list[str], Any]] = []
        self.plan = Plan()
        self._hooked: set[int] = set()

    # -- the plan --
    def prepare(self, overrides: list[str]) -> list[tuple[list[str], Any]]:
        """Build (or reuse) the twins, mark the store, write the stand-in if needed; the shrunk config per point."""
        import torch

        from ..core.config import load_config
        from ..core.sources import EMBEDDED
        from ..twins import ensure_twin

        if self.scale not in (1, 2, 4, 8):
            raise UserError(f"--shape-check-scale must be 1 (the real sizes), 2, 4 or 8 (the CI size), got {self.scale}")
        cfg = self.full[0][1]
        plan = self.plan
        plan.cuda = torch.cuda.is_available() and cfg.model.device in ("auto", "cuda")
        cache = twins_cache()
        wanted: dict[str, list[str]] = {}  # twin name -> what it stands in for
        if cfg.model.source not in EMBEDDED:
            wanted.setdefault("sd15", []).append(f"model.source {cfg.model.source}")
        from ..reports.metrics.scores import backbone_kinds

        kinds = {k: getattr(cfg.metrics, f"{k}_backbone") for k in backbone_kinds(cfg.metrics)}
        for kind, backbone in kinds.items():
            if backbone in REAL_BACKBONES:
                wanted.setdefault(backbone, []).append(f"metrics.{kind}_backbone {backbone}")
        blip = self._blip_backend(cfg)
        if blip == "real":
            wanted.setdefault("blipdiffusion", []).append("blip-diffusion's real backend")
        started = time.perf_counter()
        for name in wanted:
            plan.twins[name] = ensure_twin(name, cache, width_divisor=self.scale)
        built = time.perf_counter() - started
        size = "the real sizes" if self.scale == 1 else f"widths / {self.scale} (reduced: the real layouts, depths and resolutions)"
        if plan.twins:
            plan.notes.append(f"twins ({size}; cache {cache}, ready in {built:.1f} s):")
            plan.notes += [f"  {name}: {path}  <- {', '.join(wanted[name])}" for name, path in plan.twins.items()]
        else:
            plan.notes.append("no twin needed: every model this config names is embedded (the toy world)")

        ov = plan.overrides
        name = f"{cfg.name}-shape-check" + ("" if self.scale == 1 else f"-w{self.scale}")
        ov.append(_override("name", name))
        if "sd15" in plan.twins:
            ov.append(_override("model.source", str(plan.twins["sd15"])))
        if plan.cuda:
            ov.append(_override("model.device", "cuda"))
            plan.notes.append(f"device cuda, dtype {cfg.model.dtype} (the config's)")
        else:
            ov += [_override("model.device", "cpu"), _override("model.dtype", "fp32")]
            why = [] if cfg.model.device in ("auto", "cpu") else [f"no CUDA device for model.device={cfg.model.device}"]
            why += [] if cfg.model.dtype == "fp32" else [f"model.dtype={cfg.model.dtype} is not supported on the CPU"]
            plan.notes.append("device cpu, dtype fp32" + (f" ({'; '.join(why)}): the twins' fp16 files are cast to fp32 on load"
                                                            if why else ""))
        ov.append(_override("sampler.steps", STEPS))
        for kind, backbone in kinds.items():
            if backbone in plan.twins:
                if self.scale == 1:  # the real backbone's own loader and recipe, on the twin's weights
                    ov.append(_override(f"metrics.{kind}_weights", str(plan.twins[backbone])))
                else:  # a reduced twin is not the published architecture: its folder, as a folder backbone
                    ov += [_override(f"metrics.{kind}_backbone", f"{kind}:{plan.twins[backbone]}"), f"metrics.{kind}_weights=null"]
        if "blipdiffusion" in plan.twins:
            ov += [_override("method_params.blip-diffusion.weights", str(plan.twins["blipdiffusion"])),
                   _override("method_params.blip-diffusion.qformer_tokenizer", str(plan.twins["blipdiffusion"] / "qformer_tokenizer"))]
        cuts = []
        for m in cfg.methods:
            params = cfg.method_params.get(m, {})
            from ..methods import methods

            if not methods.get(m).fit_steps(params):
                continue
            changed = []
            for field, value in SHRINK.items():
                if _has_field(m, params, field, value):
                    ov.append(_override(f"method_params.{m}.{field}", value))
                    changed.append(f"{field} {methods.get(m).fit_steps(params)} -> {value}" if field == "steps" else f"{field} -> {value}")
            cuts.append(f"{m}: {', '.join(changed)}")

        root = (Path(cfg.store) / name).expanduser()
        mark_store(root, {"config": str(self.config_file), "width_divisor": self.scale,
                          "twins": {k: str(v) for k, v in plan.twins.items()}})
        stale = [p for p in root.iterdir() if p.name not in (STORE_MARKER, "stand-in")]
        for p in stale:  # a check measures a cold run: nothing of a previous check's is reused (the twins are)
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        if stale:
            plan.notes.append(f"the previous shape check's results in {root} were removed (a check measures a cold run)")
        ov += self._dataset(cfg, root)
        res = cfg.sampler.resolution
        plan.notes.append(f"work: 1 subject x 1 prompt x 1 image per row, {STEPS} sampling steps at "
                          f"{f'{res} px (sampler.resolution)' if res else 'the model native resolution'}"
                          + (f"; fits cut ({'; '.join(cuts)})" if cuts else ""))
        plan.notes.append(f"store: {root} (marked {STORE_MARKER}: a run on real weights refuses it)")
        config_log = logging.getLogger("persobench.core.config")
        level = config_log.level
        if self.plan.stand_in is not None:  # its "dataset section does not apply" warning: the plan's dataset line says so
            config_log.setLevel(logging.ERROR)
        try:
            self.shrunk = [(point, load_config(self.config_file, overrides + point + ov)) for point, _ in self.full]
        finally:
            config_log.setLevel(level)
        return self.shrunk

    @staticmethod
    def _blip_backend(cfg) -> str | None:
        if "blip-diffusion" not in cfg.methods:
            return None
        from ..methods.blip_diffusion import PRESETS, BlipParams
        from ..methods.training import resolve_params

        return resolve_params(BlipParams, PRESETS, cfg.method_params.get("blip-diffusion", {}), "blip-diffusion").backend

    def _dataset(self, cfg, root: Path) -> list[str]:
        from ..datasets import datasets, select_subjects

        try:
            bench = datasets.get(cfg.dataset.name)(cfg.dataset)
            first = select_subjects(bench, cfg.dataset)[:1]
        except UserError as e:
            reason = str(e)
            first = None
        if first:
            self.plan.notes.append(f"dataset: the config's {cfg.dataset.name}, its first subject ({first[0].name})")
            return [_override("dataset.subjects", [first[0].name]), "dataset.max_subjects=1", "dataset.max_prompts=1",
                    "dataset.images_per_prompt=1"]
        if first is not None:
            reason = "it selects no subject"
        folder = write_stand_in(root / "stand-in" / STAND_IN["name"])
        self.plan.stand_in = folder
        self.plan.notes.append(f"dataset: the config's {cfg.dataset.name} is not available ({reason}); a generated stand-in "
                               f"subject instead: {STAND_IN['images']} synthetic {STAND_IN['size']} px images in {folder} "
                               f"(a folder dataset, class {STAND_IN['class_noun']}; the config's dataset section does not apply)")
        return [_override("dataset.name", "folder"), _override("dataset.path", str(folder)),
                _override("dataset.class_noun", STAND_IN["class_noun"]), "dataset.max_prompts=1", "dataset.images_per_prompt=1"]

    def print_plan(self) -> None:
        print(f"shape check of {self.config_file}: the whole pipeline on random-weight twins (their scores mean nothing)")
        for line in self.plan.notes:
            print(f"  {line}")

    # -- measuring --
    @contextlib.contextmanager
    def measuring(self):
        """Record phases while the points run (the base model and metric backbones load first, as phases of their own:
        the runner's loads then hit the same in-process caches, so nothing loads twice)."""
        global _recorder, _checking
        self.recorder = rec = Recorder(cuda=self.plan.cuda)
        rec.start()
        _recorder, _checking = rec, True
        try:
            from ..core.components import load_components

            for _, cfg in self.shrunk:
                with phase("load base model"):
                    components = load_components(cfg.model)
                if id(components.vae) not in self._hooked:
                    rec.watch_vae(components.vae)
                    rec.watch_unet(components.unet)
                    self._hooked.add(id(components.vae))
            with phase("load metric backbones"):
                self._load_backbones()
            yield rec
        finally:
            _recorder, _checking = None, False
            rec.stop()

    def _load_backbones(self) -> None:
        from ..reports.metrics.backbones import get_backbone
        from ..reports.metrics.scores import backbone_kinds

        cfg = self.shrunk[0][1]
        for kind in backbone_kinds(cfg.metrics):
            get_backbone(getattr(cfg.metrics, f"{kind}_backbone"), getattr(cfg.metrics, f"{kind}_weights"))

    def progress_bar(self) -> Progress:
        return TimedProgress(self.recorder)

    # -- the projection --
    def full_work(self) -> tuple[list[dict], str]:
        """The full run's work list per point: the config's own data when it loads, else DreamBench as published."""
        from .worklist import work_list

        if self.plan.stand_in is None:
            return [work_list(cfg) for _, cfg in self.full], "the config's dataset"
        out = []
        for _, cfg in self.full:
            if cfg.dataset.name == "dreambench":
                chosen = [(n, c) for n, c in DREAMBENCH_SUBJECTS if cfg.dataset.subjects is None or n in cfg.dataset.subjects]
                chosen = chosen[: cfg.dataset.max_subjects] if cfg.dataset.max_subjects else chosen
                out.append(work_list(cfg, [(c, DREAMBENCH_PROMPTS) for _, c in chosen]))
                source = f"DreamBench as published ({len(DREAMBENCH_SUBJECTS)} subjects, {DREAMBENCH_PROMPTS} prompts each)"
            else:
                out.append(work_list(cfg, [(cfg.dataset.class_noun or "object", DREAMBENCH_PROMPTS)]))
                source = f"one subject with DreamBench's {DREAMBENCH_PROMPTS} prompts (the dataset is not here)"
        return out, source

    def projection(self) -> dict[str, Any]:
        """Per phase: measured, and projected to the full run on this machine and on a GPU."""
        from .worklist import combined_gpu_seconds, prior_image_steps, unit_table, work_list

        rec = self.recorder
        measured = [work_list(cfg) for _, cfg in self.shrunk]
        full, source = self.full_work()
        r_subj = sum(w["subjects"] for w in full) / max(1, sum(w["subjects"] for w in measured))
        r_img = sum(w["images"] for w in full) / max(1, sum(w["images"] for w in measured))
        r_metric = sum(w["metric_passes"] for w in full) / max(1, sum(w["metric_passes"] for w in measured))
        r_steps = (sum(w["images"] * c.sampler.steps for w, (_, c) in zip(full, self.full))
                   / max(1, sum(w["images"] * c.sampler.steps for w, (_, c) in zip(full, self.shrunk))))
        groups: dict[tuple[str, str | None], list[Phase]] = {}
        for p in rec.entries:
            groups.setdefault((p.kind, p.method), []).append(p)
        deltas = {m: statistics.median(b - a for t in runs for a, b in zip(t, t[1:])) for m, runs in rec.fit_step_times.items()
                  if any(len(t) > 1 for t in runs)}
        # this machine's CFG step of one image: two no-grad forwards of the base UNet per image (timed by its hooks)
        seconds, samples = rec.unet_nograd
        image_step = 2 * seconds / samples if samples else None
        gpu = combined_gpu_seconds(full)
        n_methods = len(self.full[0][1].methods)
        batch = max(1, min(self.full[0][1].sampler.batch_size,
                           max(w["images"] // max(1, len(w["rows"]) * w["subjects"]) for w in full)))
        rows = []
        for (kind, method), ps in groups.items():
            seconds, vae = sum(p.seconds for p in ps), sum(p.vae_seconds for p in ps)
            peak = max(p.rss_peak for p in ps)
            start = min(p.rss_start for p in ps)
            cuda = max((p.cuda_peak or 0) for p in ps) if rec.cuda else None
            row = {"phase": kind, "method": method or "", "seconds": seconds, "peak": peak, "cuda_peak": cuda,
                   "units": "once", "full_units": "once (not scaled)", "projected": seconds, "projected_peak": peak, "gpu": None}
            if kind == "fit":
                trainings = len(rec.fit_step_times.get(method, []))
                steps_full, steps_now = full[0]["fit_steps"].get(method, 0), measured[0]["fit_steps"].get(method, 0)
                delta = deltas.get(method, (seconds / max(1, trainings) / steps_now) if trainings and steps_now else 0.0)
                projected = (seconds + trainings * delta * (steps_full - steps_now)) * r_subj
                prior = prior_image_steps(method, self.full[0][1].method_params.get(method, {}))
                if prior and trainings and image_step is not None:
                    projected += full[0]["classes"] * prior * image_step
                row.update(units=f"{trainings} fit(s) x {steps_now} steps" if trainings else f"{len(ps)} subject(s), no training",
                           full_units=(f"{full[0]['fits'][method]} fits x {steps_full} steps" if trainings else f"x {r_subj:g} (subjects)")
                           + (f" + {full[0]['classes']} classes x {prior} class-image steps" if prior and trainings else ""),
                           projected=projected, gpu=gpu.get(f"fit {method}", 0.0) + gpu.get(f"class images {method}", 0.0),
                           step_seconds=delta if trainings else None)
            elif kind == "load fit":
                row.update(units=f"{len(ps)} fit(s)", full_units=f"x {r_subj:g} (subjects)", projected=seconds * r_subj)
            elif kind == "inversion":
                row.update(units=f"{len(ps)} subject(s) x {STEPS} steps", full_units=f"x {r_subj:g} (subjects), steps x {r_steps:g}",
                           projected=(vae + (seconds - vae) * r_steps) * r_subj,
                           gpu=gpu["inversion"] / max(1, n_methods) if "inversion" in gpu else None)
            elif kind in ("sampling", "guided sampling"):
                images = sum(p.images for p in ps)
                growth = max(0, peak - start)
                row.update(units=f"{images} image(s) x {STEPS} steps", full_units=f"images x {r_img:g}, steps x {r_steps:g}, batch {batch}",
                           projected=(vae + (seconds - vae) * r_steps) * r_img, projected_peak=start + growth * batch,
                           gpu=gpu.get(kind, 0.0) / max(1, n_methods))
            elif kind == "metrics":
                row.update(units=f"{sum(p.images for p in ps)} image(s)", full_units=f"metric passes x {r_metric:g}",
                           projected=seconds * r_metric, gpu=gpu.get("metrics", 0.0))
            row["vae_seconds"] = vae
            rows.append(row)
        units = unit_table()
        return {"rows": rows, "source": source, "full": full, "measured": measured, "gpu_seconds": gpu,
                "gpu_hours": sum(gpu.values()) / 3600, "unit_source": units["source"],
                "gpu_peak_gib": units["peak_memory_gib"], "peak": rec.peak, "r_steps": r_steps, "image_step": image_step}

    def print_summary(self) -> dict[str, Any]:
        import torch

        from .worklist import unit_costs

        proj = self.projection()
        rec = self.recorder
        gib = 2**30
        measured_total = sum(r["seconds"] for r in proj["rows"])
        projected_total = sum(r["projected"] for r in proj["rows"])
        device = "cuda" if rec.cuda else f"cpu, fp32, {torch.get_num_threads()} torch thread(s)"
        print(f"\nshape check: phases (wall time; peak memory = {rec.method()})")
        cuda_col = " peak CUDA GiB |" if rec.cuda else ""
        print(f"| phase | method | measured units | wall s | peak RSS GiB |{cuda_col} full run units | full run, this machine | "
              "full run, GPU estimate |")
        print("|---|---|---|---|---|" + ("---|" if rec.cuda else "") + "---|---|---|")
        for r in proj["rows"]:
            cuda = f" {r['cuda_peak'] / gib:.2f} |" if rec.cuda else ""
            gpu = "-" if r["gpu"] is None else _duration(r["gpu"])
            step = f" ({r['step_seconds']:.2f} s/step)" if r.get("step_seconds") else ""
            print(f"| {r['phase']} | {r['method']} | {r['units']}{step} | {r['seconds']:.1f} | {r['peak'] / gib:.2f} |{cuda} "
                  f"{r['full_units']} | {_duration(r['projected'])} | {gpu} |")
        full = proj["full"]
        peak_full = max(r["projected_peak"] for r in proj["rows"]) if proj["rows"] else proj["peak"]
        print(f"measured: {measured_total:.1f} s in phases, peak RSS {proj['peak'] / gib:.2f} GiB over the whole check")
        print(f"full run ({proj['source']}: {sum(w['subjects'] for w in full) // len(full)} subjects, {len(full)} point(s), "
              f"{sum(w['images'] for w in full)} images, {sum(w['metric_passes'] for w in full)} metric passes, "
              f"{self.full[0][1].sampler.steps} sampling steps):")
        print(f"  this machine ({device}): ~{_duration(projected_total)}, peak memory ~{peak_full / gib:.1f} GiB (each phase's "
              "measured unit cost x the full counts: fits x steps, images x steps, metric images; a sampling phase's memory "
              "growth x the batch)")
        if self.scale != 1:
            print(f"  (twins at widths / {self.scale}: this machine's projection is the reduced models' cost, not the real ones'; "
                  "--shape-check-scale 1 measures the real sizes)")
        gpu_peak = proj["gpu_peak_gib"]
        peak_text = (f"peak memory {max(gpu_peak.values()):.1f} GiB (measured)" if gpu_peak
                     else "peak memory not measured on a GPU (benchmarks/gpu_checks.json has none)")
        used = list(dict.fromkeys(m for _, c in self.full for m in c.methods))
        print(f"  GPU: ~{proj['gpu_hours']:.2f} GPU-hours, the dry run's figure ({proj['unit_source']}; unit costs "
              f"{unit_costs(used)}); {peak_text}")
        root = Path(self.shrunk[0][1].store) / self.shrunk[0][1].name
        from ..core.atomic import write_json

        write_json(root / "shape_check.json", {
            "config": str(self.config_file), "width_divisor": self.scale, "device": device, "memory": rec.method(),
            "twins": {k: str(v) for k, v in self.plan.twins.items()}, "stand_in": str(self.plan.stand_in) if self.plan.stand_in else None,
            "phases": [dataclasses.asdict(p) for p in rec.entries], "fit_step_times": rec.fit_step_times,
            "projection": {"rows": proj["rows"], "source": proj["source"], "seconds": projected_total, "peak_bytes": peak_full,
                           "gpu_hours": proj["gpu_hours"], "gpu_seconds": proj["gpu_seconds"], "unit_source": proj["unit_source"]},
            "measured": {"seconds": measured_total, "peak_bytes": proj["peak"]}})
        print(f"  figures: {root / 'shape_check.json'}")
        return proj


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
