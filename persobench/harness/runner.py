"""One run: config -> work list -> fit (method x subject) -> sample (per image) -> records -> report.

Each stage reads what the previous one stored; every artefact's path carries the hash of the config
slice that produced it (see `store.py`), so re-runs skip what exists and resume what was cut off.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from PIL import Image
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..core.atomic import remove_stale_temps, write_json, write_parquet, write_png, write_yaml
from ..core.attention import capture_cross_attention, select_layers
from ..core.components import SDComponents, load_components
from ..core.config import RunConfig, stable_hash, to_dict, written
from ..core.errors import UserError
from ..core.registry import load_plugins
from ..core.sampling import StepContext, decode, denoise, token_positions
from ..core.schedulers import build_scheduler
from ..core.seeding import image_seed, initial_noise, step_seed
from ..datasets import Subject, check_images, datasets, select_subjects
from ..guidance import Palette, guidances
from ..methods import Fitted, methods
from .distributed import current_shard
from .guided import (
    TemplateStore,
    build_hooks,
    check_guidance,
    guidance_signature,
    record_template,
    reference_palette,
    template_key,
    template_layers,
    template_recorder,
)
from .shapecheck import guard_store, phase
from .store import RunStore, file_lock, subject_slug
from .worklist import batch_seconds, fit_seconds, setup_seconds

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ImageJob:
    method: str
    subject: Subject
    prompt_index: int
    template: str
    index: int
    seed: int
    path: Path


def progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=False
    )


def sample_signature(cfg: RunConfig, components: SDComponents, fit_key: str, guidance: str = "none") -> dict[str, Any]:
    """Everything that changes an image besides its seed (what a sample key hashes)."""
    s = cfg.sampler
    return {
        "fit": fit_key,
        "model": components.fingerprint,
        "dtype": cfg.model.dtype,
        "scheduler": s.scheduler,
        "steps": s.steps,
        "cfg_scale": s.cfg_scale,
        "eta": s.eta,
        "negative_prompt": s.negative_prompt,
        "resolution": resolution(cfg, components),
        "seed": cfg.seed,
        "guidance": guidance_signature(cfg.guidance, guidance),
    }


def resolution(cfg: RunConfig, components: SDComponents) -> int:
    return cfg.sampler.resolution or components.latent_shape[1] * components.vae_scale


def fit_key(personalizer, components: SDComponents, subject: Subject, seed: int) -> str:
    return stable_hash({"method": personalizer.name, "params": personalizer.fit_signature(), "subject": subject.content_hash,
                        "model": components.fingerprint, "seed": seed})


def fit_subject(store: RunStore, personalizer, components: SDComponents, subject: Subject, seed: int,
                progress: Progress | None = None) -> tuple[Fitted, str]:
    key = fit_key(personalizer, components, subject, seed)
    folder = store.fit_dir(personalizer.name, subject.name, key)
    with file_lock(folder.parent / f".{folder.name}.lock"):
        started = time.perf_counter()
        fitted = personalizer.fit(subject, folder, seed, progress)
        if not (folder / "fit.json").exists():  # first fit: record how long it took
            logger.info("fitted %s on %s in %.1f s -> %s", personalizer.name, subject.name, time.perf_counter() - started, folder)
            write_json(folder / "fit.json", {"method": personalizer.name, "subject": subject.name, "key": key,
                                             "params": personalizer.fit_signature(), "model": components.fingerprint,
                                             "seconds": round(time.perf_counter() - started, 2)})
    return fitted, key


SUBJECT_MASK_LAYERS = ["up"]  # the decoder's cross-attention layers, every resolution (core/attention.py::select_layers)


class SubjectMaskRecorder:
    """Records where each image's subject is, for the subject-region metrics (`dino-subject`, reports/metrics/scores.py):
    at the loop's middle iteration (`len(scheduler.timesteps) // 2`: step 10 of DDIM 20) it watches the main forward
    and keeps the head-averaged cross-attention of the class noun's token columns (the identifier's when the prompt
    has no class noun) in the conditional rows, on the decoder's cross-attention layers (`SUBJECT_MASK_LAYERS`), each
    upsampled bilinearly to the latent grid and averaged. `masks()`: per image a grey image at latent resolution, the
    map's log min-max scaled to 0..255 (the metric keeps >= 0.4 x 255). The layers' outputs are left to their own
    processors (`capture_cross_attention(observe=True)`), so the images do not change by a bit. Recipe: DAAM's
    (Tang et al., ACL 2023: a word's cross-attention upsampled and aggregated over layers, then thresholded),
    at one step and on the decoder's layers; calibrated on ToyBench's references (scores.py::ATTENTION_MASK_THRESHOLD)."""

    def __init__(self, unet: torch.nn.Module, columns: list[list[int]], latent_hw: tuple[int, int]) -> None:
        self.unet, self.columns, self.hw = unet, columns, latent_hw
        self.layers = select_layers(unet, SUBJECT_MASK_LAYERS)
        self.current_step, self.at = 0, -1
        self.maps: list[torch.Tensor | None] = [None] * len(columns)

    def __call__(self, step: int, t: torch.Tensor, latents: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        if step == 0:
            self.at = len(ctx.scheduler.timesteps) // 2
        self.current_step = step
        return latents

    def wrap_denoiser(self, model):
        """Outermost: `model` may be another hook's wrapper (the vanilla template's recorder observes inside it)."""

        def observed(sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor):
            if self.current_step != self.at:
                return model(sample, timestep, encoder_hidden_states=encoder_hidden_states)
            with capture_cross_attention(self.unet, self.layers, observe=True) as cap:
                out = model(sample, timestep, encoder_hidden_states=encoder_hidden_states)
            self._keep(cap.maps, len(sample))
            return out

        return observed

    @torch.no_grad()
    def _keep(self, maps: dict[str, torch.Tensor], rows: int) -> None:
        n = len(self.columns)  # CFG rows are [uncond | cond]; rows past the main batch are another hook's
        grids = []
        for m in maps.values():
            cond = m[rows - n : rows].float()
            side = int(round(cond.shape[1] ** 0.5))
            if side * side != cond.shape[1]:
                continue
            per = torch.stack([cond[b][:, c].mean(-1) if c else torch.zeros(cond.shape[1], device=cond.device)
                               for b, c in enumerate(self.columns)])
            grids.append(torch.nn.functional.interpolate(per.reshape(n, 1, side, side), size=self.hw, mode="bilinear")[:, 0])
        if grids:
            mean = torch.stack(grids).mean(0).cpu()
            self.maps = [mean[b] if self.columns[b] else None for b in range(n)]

    def finish(self) -> None:
        return None

    def masks(self) -> list:
        """Per image the grey map (PIL, latent resolution), or None (no subject token, or a flat map)."""
        out = []
        for m in self.maps:
            if m is None:
                out.append(None)
                continue
            log = m.clamp_min(1e-8).log()
            lo, hi = log.min(), log.max()
            out.append(None if hi <= lo else Image.fromarray(((log - lo) / (hi - lo) * 255).round().byte().numpy()))
        return out


def subject_columns(fitted: Fitted, prompts: list[str]) -> list[list[int]]:
    """Per prompt, the class noun's token columns, or the identifier's where the method's wording omits the noun."""
    noun = [token_positions(fitted.tokenizer, p, [fitted.subject.class_noun]) for p in prompts]
    return [c or token_positions(fitted.tokenizer, p, fitted.subject_words) for c, p in zip(noun, prompts)]


def mask_path(store: RunStore, image: Path) -> Path:
    """An image's recorded subject map: the image's path with `masks/` for `images/` (`<run>/masks/<method>/<subject>/
    <sample key>/<image name>.png`), so `images/` keeps holding the generated images only."""
    return store.root / "masks" / image.relative_to(store.root / "images")


def records_subject_maps(cfg: RunConfig) -> bool:
    """Whether the run records each image's subject map: only when a metric reads it (the subject-region metrics,
    which need reference masks too); otherwise the middle step's observed forward and a PNG per image are skipped."""
    from ..reports.metrics.spec import metrics

    return any(metrics.get(n).needs_reference_masks for n in cfg.metrics.names)


def blank_map(image, fitted: Fitted):
    """The map of an image whose prompt names no subject token (or whose map is flat): all black at latent
    resolution, which the metric reads as "no mask" (scores.py::generated_masks), so the image counts as done."""
    c = fitted.components
    return Image.new("L", (image.width // c.vae_scale, image.height // c.vae_scale), 0)


def _load_weights(personalizer) -> None:
    """Load what a method loads lazily (BLIP-Diffusion's backend) now, inside the "load method" phase, so the shape
    check counts it once per run and not inside every fit."""
    load = getattr(personalizer, "load", None)
    if load is not None:
        load()


_frozen = False


def freeze_imports() -> None:
    """Move everything alive now out of the garbage collector's view, once per process: meant for the CLI, after
    it has imported the libraries (torch, diffusers, transformers, the registries' plugins) and before any model
    loads. Each `gc.collect` that frees a dropped method's weights then walks only what the run made (0.3 s ->
    0.02 s here), and so do the collector's automatic passes and the interpreter's exit (1.7 -> 0.4 s): fixed
    costs every process of a sharded run pays (issue 17). Not called by the library functions (`run`, the Python
    API), because frozen objects are never collected: a notebook's or a test's heap is not ours to freeze."""
    global _frozen
    if not _frozen:
        _frozen = True
        load_plugins()  # the toy world and third-party plugins, imported now rather than after the freeze
        gc.freeze()


def _keep_only(personalizers: dict[str, Any], method_name: str) -> None:
    """Drop every other method's personalizer (and collect), so its weights are freed before the next loads."""
    for name in [name for name in personalizers if name != method_name]:
        del personalizers[name]
    gc.collect()


def generate(fitted: Fitted, cfg: RunConfig, jobs: Sequence[ImageJob], guidance: str = "none", palette: Palette | None = None,
             templates: TemplateStore | None = None, masks: bool = False):
    """Sample one batch of images for one fitted subject; each image's noise comes from its own seed.

    `templates`: where the vanilla template's maps are kept (the run store). A guided batch reads its images'
    templates from there, recording them first with one plain pass of the base model when missing; a plain
    batch that is the template itself (vanilla SD) records them as it samples, at no cost to its images.
    Without it (the Python API's `sample`) the guidance hook runs the template itself.
    `masks`: also record each image's subject map (`SubjectMaskRecorder`, the images unchanged) and return
    (prompts, images, maps) instead of (prompts, images)."""
    c = fitted.components
    res = resolution(cfg, c)
    shape = (c.latent_shape[0], res // c.vae_scale, res // c.vae_scale)
    prompts = [fitted.prompt(j.template) for j in jobs]
    cond = fitted.encode(prompts, cfg.sampler.negative_prompt)
    latents = initial_noise([j.seed for j in jobs], shape).to(c.device, c.dtype)
    step_seeds = [step_seed(j.seed) for j in jobs]
    gens = [torch.Generator("cpu").manual_seed(s) for s in step_seeds]
    scheduler = build_scheduler(cfg.sampler.scheduler, c.scheduler_config)
    templates_of = [j.template for j in jobs]
    layers = template_layers(cfg, c.unet) if templates is not None else []
    keys = [template_key(cfg, c, res, fitted.clip_text(j.template), j.seed, layers) for j in jobs] if layers else []
    stored, recorder = None, None
    if keys and guidance != "none":
        stored = templates.get(keys)
        if stored is None:
            stored = record_template(cfg, fitted, templates_of, [j.seed for j in jobs], shape)
            templates.put(keys, stored)
    elif keys:  # a plain batch records only if it is the template (vanilla) and a template is missing: no loads
        recorder = template_recorder(cfg, fitted, prompts, templates_of)
        recorder = recorder if recorder is not None and not templates.has(keys) else None
    hooks = build_hooks(guidance, cfg, fitted, prompts, templates_of, cond, latents, palette, step_seeds, stored)
    hooks += [recorder] if recorder is not None else []
    subject_maps = SubjectMaskRecorder(fitted.unet, subject_columns(fitted, prompts), shape[1:]) if masks else None
    hooks += [subject_maps] if subject_maps is not None else []  # last: its wrapper is the outermost
    out = denoise(fitted.unet, scheduler, latents, cond, cfg.sampler.steps, cfg.sampler.cfg_scale, cfg.sampler.eta, hooks, gens)
    for hook in hooks:
        hook.finish()
    if recorder is not None:
        templates.put(keys, recorder.maps)
    if not torch.isfinite(out).all():
        bad = [j.path.name for j, ok in zip(jobs, torch.isfinite(out).flatten(1).all(1).tolist()) if not ok]
        raise UserError(f"sampling produced NaN/inf latents for {bad}; lower sampler.cfg_scale or use model.dtype=fp32")
    if subject_maps is not None:
        return prompts, decode(c.vae, out), subject_maps.masks()
    return prompts, decode(c.vae, out)


def templates_for(cfg: RunConfig, bench, subject: Subject) -> list[str]:
    templates = list(bench.prompts_for(subject))
    return templates if cfg.dataset.max_prompts is None else templates[: cfg.dataset.max_prompts]


def image_jobs(cfg: RunConfig, bench, store: RunStore, method: str, subject: Subject, sample_key: str) -> list[ImageJob]:
    jobs = []
    for p, template in enumerate(templates_for(cfg, bench, subject)):
        for i in range(cfg.dataset.images_per_prompt):
            seed = image_seed(cfg.seed, subject.name, template, i)
            path = store.image_path(method, subject.name, sample_key, p, template, i)
            jobs.append(ImageJob(method, subject, p, template, i, seed, path))
    return jobs


def chunks(items: Sequence, n: int) -> Iterator[Sequence]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def run(cfg: RunConfig, point: str = "main", progress: Progress | None = None) -> Path:
    """Fit, sample and record one operating point; returns its folder in the store."""
    cfg, bench, subjects = preflight(cfg)
    guard_store(cfg)  # a store made with random-weight twins (--shape-check) never mixes with real runs, and vice versa
    personalizer_types = [methods.get(m) for m in cfg.methods]
    with phase("load base model"):
        components = load_components(cfg.model)
    store = RunStore(Path(cfg.store) / cfg.name)
    point_dir = store.point_dir(point)
    templates = TemplateStore(store.root / "cache" / "templates")  # the vanilla template, recorded once per image
    if current_shard().is_main:
        remove_stale_temps(store.root)  # what a SIGKILL mid-write left behind
        write_yaml(point_dir / "config.yaml", to_dict(cfg))
    shard = current_shard()
    bar = progress or progress_bar()
    if not shard.is_main:
        bar.disable = True
    units = [(m, make, s) for m, make in zip(cfg.methods, personalizer_types) for s in subjects]
    personalizers: dict[str, Any] = {}

    def resident(method_name: str, make) -> Any:
        """The method's personalizer, its weights loaded, after every other method's is dropped: one method's weights
        resident at a time (issue 15: the peak at real shapes). The caller lets go of its own references first."""
        if any(name != method_name for name in personalizers):
            _keep_only(personalizers, method_name)
        with phase("load method", method_name):
            if method_name not in personalizers:
                personalizers[method_name] = make(cfg.method_params.get(method_name, {}), components)
            _load_weights(personalizers[method_name])
        return personalizers[method_name]

    with bar if progress is None else contextlib.nullcontext():
        # fits by their declared cost, longest first onto the least-loaded process (a TI fit is not a vanilla "fit")
        mine = shard.assign(units, [fit_seconds(m, cfg.method_params.get(m, {})) for m, _, _ in units])
        share = {"fit units": len(mine), "images": 0}  # what this process did, reported per rank when sharded
        task = bar.add_task("fit", total=len(mine))
        for method_name, make, subject in mine:  # fit jobs by (method, subject), method-major as `units`
            personalizer = None  # the previous method's weights go before the next loads
            personalizer = resident(method_name, make)
            with phase("fit", method_name):
                fitted, _ = fit_subject(store, personalizer, components, subject, cfg.seed, bar)
                for guidance in guidance_settings(cfg):
                    check_guidance(guidance, cfg, fitted, templates_for(cfg, bench, subject))
                fitted = None  # a LoRA-patched UNet copy is not kept while the next fit trains or loads
            bar.advance(task)
        personalizer = None
        _keep_only(personalizers, "")
        shard.barrier()
        task = bar.add_task("sample", total=len(units))
        all_jobs: list[ImageJob] = []
        batches = []  # (unit index, guidance, sample key, batch) over the whole point
        keys = {}  # unit index -> fit key
        signatures = {m: make(cfg.method_params.get(m, {}), components) for m, make in zip(cfg.methods, personalizer_types)}
        for u, (method_name, _, subject) in enumerate(units):  # constructing a personalizer loads no weights
            key = keys[u] = fit_key(signatures[method_name], components, subject, cfg.seed)
            for guidance in guidance_settings(cfg):
                sample_key = stable_hash(sample_signature(cfg, components, key, guidance))
                jobs = image_jobs(cfg, bench, store, method_name, subject, sample_key)
                all_jobs += jobs
                # Batches are cut from the full job list, the same on every process, so an image's
                # batch-mates (hence its last bits under batched BLAS) never depend on what was already
                # done or on the process count; then the whole point's batches are scheduled by cost
                # (a guided batch weighs its guided/plain ratio), and each process skips what is done.
                batches += [(u, guidance, sample_key, b) for b in chunks(jobs, cfg.sampler.batch_size)]
        # scheduled by cost, a (method, subject)'s batches kept on one process where balance allows: each process
        # that samples any of them loads its fit and inverts its palette (`distributed.affine`)
        mine_batches = shard.assign_grouped(batches, [batch_seconds(cfg, len(b), g) for _, g, _, b in batches],
                                            [u for u, _, _, _ in batches], dict.fromkeys(keys, setup_seconds(cfg)))
        fitted = None
        maps_wanted = records_subject_maps(cfg)

        def done(job: ImageJob) -> bool:  # with subject maps asked for, an image sampled without one is not done yet
            return store.is_done(job.path) and (not maps_wanted or mask_path(store, job.path).is_file())

        for u, (method_name, make, subject) in enumerate(units):  # sample jobs by image
            key = keys[u]
            todo = []
            for guidance in guidance_settings(cfg):
                mine = [b for v, g, _, b in mine_batches if v == u and g == guidance and not all(done(j) for j in b)]
                todo += [(guidance, next(k for v, g, k, _ in batches if v == u and g == guidance), mine)] if mine else []
            if todo:  # a warm re-run loads no fit at all
                fitted = personalizer = palette = None  # the previous unit's: two LoRA UNet copies are never resident
                personalizer = resident(method_name, make)
                with phase("load fit", method_name):
                    fitted, _ = fit_subject(store, personalizer, components, subject, cfg.seed, bar)
            for guidance, sample_key, mine in todo:
                palette = None
                if guidance != "none" and cfg.guidance.palette_term() is not None:
                    with phase("inversion", method_name):
                        palette = reference_palette(fitted, cfg, key, store.root / "cache" / "inversions")
                for batch in mine:
                    started = time.perf_counter()
                    with phase("sampling" if guidance == "none" else "guided sampling", method_name, images=len(batch)):
                        out = generate(fitted, cfg, batch, guidance, palette, templates, masks=maps_wanted)
                    prompts, images, maps = out if maps_wanted else (*out, [None] * len(batch))
                    per_image = (time.perf_counter() - started) / len(batch)
                    for job, prompt, image, subject_map in zip(batch, prompts, images, maps):
                        mask = mask_path(store, job.path) if maps_wanted else None
                        the_map = None if mask is None else subject_map if subject_map is not None else blank_map(image, fitted)
                        if not store.is_done(job.path):
                            if mask is not None:  # before the image and its record: a done image has its map
                                write_png(mask, the_map)
                            store.save_image(job.path, image, _record(cfg, store, job, fitted, prompt, key, sample_key,
                                                                      per_image, guidance, mask))
                            share["images"] += 1
                        elif mask is not None and not mask.is_file():
                            # sampled before a subject-region metric was asked for: the image stays, its record names
                            # the map, then the map (a kill in between leaves the map missing: the image is redone)
                            record = store.read_record(job.path)
                            if record.get("mask") is None:
                                write_json(store.record_path(job.path), {**record, "mask": store.relative(mask)})
                            write_png(mask, the_map)
            bar.advance(task)
        if shard.world > 1:
            print(f"rank {shard.rank}/{shard.world}: {share['fit units']} fit unit(s), {share['images']} image(s) sampled",
                  file=sys.stderr, flush=True)
        shard.barrier()
    fitted = personalizer = palette = signatures = None  # the last method's weights are not resident beside the metric backbones
    _keep_only(personalizers, "")
    frame = pd.DataFrame.from_records([store.read_record(j.path) for j in all_jobs])
    if cfg.metrics.names:  # metric jobs by image: each process scores its rows, rank 0 merges
        with phase("metrics", images=len(frame)):
            score(cfg, frame, store, point_dir, bench, subjects, shard)
    if not shard.is_main:
        return point_dir
    with phase("tables"):
        write_parquet(point_dir / "records.parquet", frame)
        from ..reports.summary import write_summary

        write_summary(store.root, point_dir)
    return point_dir


def preflight(cfg: RunConfig, weights: bool = True) -> tuple[RunConfig, Any, list[Subject]]:
    """Everything a run checks before any model loads, shared by `run`, `--dry-run`, `persobench sample` and the
    Python API, so each sees the same subjects (hence the same fit keys) and reports every bad input at once:
    names, every image (the unusable ones listed in one error, or skipped with dataset.skip_bad_images), what
    the run asks of each subject, the metrics the data can score, the store, and (`weights`) each real metric
    backbone's weights on disk. Returns the config (metrics the data lacks ground truth for dropped), the
    benchmark and the usable subjects."""
    unknown = [m for m in cfg.method_params if m not in methods]
    if unknown:
        raise UserError(f"method_params names unknown method(s) {unknown}; known methods: {', '.join(methods.names())}")
    for m in cfg.methods:
        methods.get(m)  # unknown names fail, listing the known ones
    guidance_settings(cfg)
    bench = datasets.get(cfg.dataset.name)(cfg.dataset)
    subjects = check_images(select_subjects(bench, cfg.dataset), cfg.dataset.skip_bad_images)
    check_subjects(cfg, subjects)
    cfg = applicable_metrics(cfg, bench, subjects)
    if weights:
        check_metrics(cfg)
    check_store(Path(cfg.store), cfg.name)
    return cfg, bench, subjects


def check_subjects(cfg: RunConfig, subjects: list[Subject]) -> None:
    """What the run asks of each subject's images, and store folders that stay apart, before any model loads."""
    term, section = cfg.guidance.palette_term() or ("", None)
    n = getattr(section, "num_references", None)
    if cfg.guidance.name != "none" and n is not None:
        short = [f"subject '{s.name}' has {len(s.image_paths)}" for s in subjects if len(s.image_paths) < n]
        if short:
            raise UserError(f"guidance.{term}.num_references={n} but {', '.join(short)} usable image(s); "
                            "lower it, or set it to null (all of each subject's images)")
    folders: dict[str, str] = {}
    for s in subjects:
        other = folders.setdefault(subject_slug(s.name), s.name)
        if other != s.name:
            raise UserError(f"subjects '{other}' and '{s.name}' would share the store folder '{subject_slug(s.name)}'; "
                            "rename one of their folders")


def applicable_metrics(cfg: RunConfig, bench, subjects: list[Subject] | None = None) -> RunConfig:
    """The config without the metrics whose ground truth the data lacks (the toy world's oracle needs ToyBench's
    ground_truth.json) or whose reference masks it lacks (the subject-region metrics read one beside each
    reference image): dropped with one notice line when they came from the defaults, refused when the user
    named metrics.names."""
    from ..reports.metrics.scores import missing_reference_masks, reference_masks_error
    from ..reports.metrics.spec import metrics

    masked = [n for n in cfg.metrics.names if metrics.get(n).needs_reference_masks]
    subjects = list(bench.subjects) if subjects is None else subjects
    unmasked = [s.name for s in subjects if missing_reference_masks(s, cfg.metrics.reference_set)] if masked else []
    no_masks = masked if unmasked else []
    if no_masks and written(cfg, "metrics.names"):
        raise UserError(reference_masks_error(no_masks, bench.name, unmasked))
    if no_masks:
        logger.warning("metric(s) %s not scored: dataset '%s' has no reference masks for subject(s) %s",
                       ", ".join(no_masks), bench.name, ", ".join(unmasked[:5]))
        cfg = _without_metrics(cfg, no_masks)
    lacking = [n for n in cfg.metrics.names if metrics.get(n).needs_ground_truth and bench.ground_truth is None]
    if not lacking:
        return cfg
    if written(cfg, "metrics.names"):
        raise UserError(f"metric(s) {lacking} need ground truth that dataset '{bench.name}' lacks (ToyBench's ground_truth.json); "
                        "remove them from metrics.names, or use dataset.name=toybench")
    logger.warning("metric(s) %s not scored: dataset '%s' has no ground truth for them (ToyBench's ground_truth.json)",
                   ", ".join(lacking), bench.name)
    return _without_metrics(cfg, lacking)


def _without_metrics(cfg: RunConfig, names: list[str]) -> RunConfig:
    kept = [n for n in cfg.metrics.names if n not in names]
    trimmed = dataclasses.replace(cfg, metrics=dataclasses.replace(cfg.metrics, names=kept))
    trimmed.written_keys = getattr(cfg, "written_keys", None)
    return trimmed


def check_store(store: Path, name: str) -> None:
    """The run's store folder exists or can be created (nothing is created here: a refused run leaves no trace)."""
    target = (store / name).expanduser()
    for folder in [target, *target.parents]:
        if folder.exists() or folder.is_symlink():
            if not folder.is_dir():
                raise UserError(f"store '{store}' cannot be created: '{folder}' is not a folder; pass store=<a writable folder>")
            if not os.access(folder, os.W_OK | os.X_OK):
                raise UserError(f"store '{store}' cannot be created: '{folder}' is not writable; pass store=<a writable folder>")
            return


def check_metrics(cfg: RunConfig) -> None:
    """Every metric and backbone the run will score with exists, and each real backbone's weights are on
    disk (a file, a folder or the local HF cache), before anything is fitted or sampled."""
    from ..reports.metrics.backbones import locate_weights
    from ..reports.metrics.scores import backbone_kinds

    for kind in backbone_kinds(cfg.metrics):  # unknown metric names fail here, listing the known ones
        locate_weights(getattr(cfg.metrics, f"{kind}_backbone"), getattr(cfg.metrics, f"{kind}_weights"))


def score(cfg: RunConfig, frame: pd.DataFrame, store: RunStore, point_dir: Path, bench, subjects: list[Subject],
          shard=None) -> pd.DataFrame | None:
    """Per-image metric values -> scores.parquet, then the aggregate tables (on rank 0)."""
    from ..reports.metrics.scores import score_frame
    from ..reports.tables import write_tables

    shard = shard or current_shard()
    rows = shard.split(list(range(len(frame))))
    part = score_frame(frame.iloc[rows], store.root, {s.name: s for s in subjects}, cfg.metrics, bench.root / "ground_truth.json")
    if shard.world > 1:
        write_parquet(point_dir / f"scores.part-{shard.rank}.parquet", part.assign(_row=rows))
        shard.barrier()
        if not shard.is_main:
            return None
        parts = [point_dir / f"scores.part-{r}.parquet" for r in range(shard.world)]
        part = pd.concat([pd.read_parquet(p) for p in parts]).sort_values("_row").drop(columns="_row").reset_index(drop=True)
        for p in parts:
            p.unlink()
    write_parquet(point_dir / "scores.parquet", part)
    from ..reports.metrics.scores import protocol

    write_json(point_dir / "metrics_protocol.json", protocol(cfg.metrics))
    write_tables(point_dir, part, cfg.metrics.bootstrap, cfg.metrics.baseline_method)  # + deltas.csv
    return part


def guidance_settings(cfg: RunConfig) -> list[str]:
    """'none', and the configured guidance (both when guidance.compare_unguided: the paper's rows)."""
    name = cfg.guidance.name
    if name == "none":
        return ["none"]
    guidances.get(name)  # an unknown name fails before any work
    return ["none", name] if cfg.guidance.compare_unguided else [name]


def _record(cfg: RunConfig, store: RunStore, job: ImageJob, fitted: Fitted, prompt: str, fit_key: str, sample_key: str,
            seconds: float, guidance: str, mask: Path | None = None) -> dict:
    return {
        "method": job.method,
        "subject": job.subject.name,
        "class_noun": job.subject.class_noun,
        "kind": job.subject.kind,
        "prompt_index": job.prompt_index,
        "prompt_template": job.template,
        "prompt": prompt,
        "clip_text": fitted.clip_text(job.template),
        "index": job.index,
        "seed": job.seed,
        "fit_key": fit_key,
        "sample_key": sample_key,
        "guidance": guidance,
        "guidance_hash": stable_hash(guidance_signature(cfg.guidance, guidance)),
        "image": store.relative(job.path),
        # the subject map (SubjectMaskRecorder; all black where the prompt has no subject token); None: not recorded
        # (no subject-region metric asked for)
        "mask": store.relative(mask) if mask is not None else None,
        "reference": str(job.subject.image_paths[0].resolve()),
        "seconds": round(seconds, 4),
    }
