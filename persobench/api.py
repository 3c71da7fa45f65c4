"""persobench from Python (a notebook): the CLI's code, called directly. Nothing here is a second path.

    import persobench
    cfg = persobench.load_config(overrides=["dataset.subjects=[ball2]"])  # persobench/configs/default.yaml + overrides
    result = persobench.run(cfg)          # = `persobench run dataset.subjects=[ball2]`: fit, sample, score, report
    result.table                          # pandas: one row per (method, guidance), metric means and 95% intervals
    result.scores                         # pandas: one row per image (points/<p>/scores.parquet)
    ti = persobench.fit("textual-inversion", "ball2", cfg)           # the run's cached fit (or a new one, stored)
    images = ti.sample("a {0} {1} on the beach", n=4, guidance="pick-and-draw")   # list[PIL.Image]

`run` is `harness.runner.run` and `reports.build.build_run_report`, as `persobench run` calls them; `fit` is
`harness.runner.fit_subject` (same store, same fit keys: a fit the run made is loaded, not redone);
`Subject.sample` is `harness.runner.generate` with `harness.guided`'s palette, and image i of a template gets the
run's seed for image i, so it is the run's image (the same noise; equal up to the last bits batched arithmetic
moves when the batch differs, exactly equal at sampler.batch_size=1).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from .core.config import RunConfig
from .core.config import load_config as _load_config
from .core.errors import UserError

if TYPE_CHECKING:
    import pandas as pd
    from PIL import Image

    from .datasets import Subject
    from .methods import Fitted

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "default.yaml"


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """A validated `RunConfig`: `path` (default: persobench/configs/default.yaml, the demo, as `persobench run`
    uses) with `key.sub=value` overrides on top, exactly as on the command line."""
    return _load_config(DEFAULT_CONFIG if path is None else path, overrides)


@dataclasses.dataclass
class RunResult:
    """What one run point left in the store, read back."""

    config: RunConfig
    point: Path  # runs/<name>/points/<point>/: config.yaml, records.parquet, scores.parquet, table.{csv,md,tex}
    records: pd.DataFrame  # one row per image: method, guidance, subject, prompt, seed, image path (relative to the run)
    scores: pd.DataFrame | None  # records + one column per metric value (None when metrics.names is empty)
    table: pd.DataFrame | None  # per (method, guidance) over all subjects: metric means and 95% bootstrap bounds
    report: Path | None  # runs/<name>/report/index.html (trade-off figures beside it); None with report=False

    @property
    def run_root(self) -> Path:
        return self.point.parent.parent

    def summary(self) -> str:
        """The table `persobench run` prints (guided rows: change vs unguided) and the report's paths."""
        from .reports.build import report_paths, results_table

        lines = [results_table([self.point])]
        lines += [f"{'report' if p.suffix == '.html' else 'trade-off figure'}: {p}" for p in report_paths(self.run_root)]
        return "\n".join(line for line in lines if line)

    def _repr_markdown_(self) -> str:  # notebooks show the table
        return self.summary()


def run(cfg: RunConfig, point: str = "main", report: bool = True, progress: bool = True) -> RunResult:
    """Fit, sample, score (and report) one operating point, as `persobench run` does; what exists in the store is
    reused. A config with a `sweep` is refused: load one config per point (`overrides=[...]`) and run each with
    its own `point` name."""
    if cfg.sweep:
        raise UserError(f"run() takes one point, but the config sweeps {cfg.sweep}; load each point's config with its overrides "
                        "and pass point=<name>, or use `persobench run` for the whole sweep")
    import pandas as pd

    from .core.sources import resolve_source
    from .harness.runner import progress_bar
    from .harness.runner import run as run_point

    resolve_source(cfg.model.source, cfg.model.local_files_only)
    bar = progress_bar()
    bar.disable = not progress
    with bar:
        point_dir = run_point(cfg, point, progress=bar)
    page = None
    if report:
        from .reports.build import build_run_report

        page = build_run_report(point_dir.parent.parent, cfg.report.wandb)
    scores = pd.read_parquet(point_dir / "scores.parquet") if cfg.metrics.names else None
    table = None
    if cfg.metrics.names:
        table = pd.read_csv(point_dir / "table.csv")
        table = table[table["split"] == "all"].drop(columns="split").reset_index(drop=True)
    return RunResult(cfg, point_dir, pd.read_parquet(point_dir / "records.parquet"), scores, table, page)


@dataclasses.dataclass
class FittedSubject:
    """One method fitted on one subject, ready to sample; `fitted` is the harness's `Fitted`."""

    config: RunConfig
    method: str
    subject: Subject
    fitted: Fitted
    fit_key: str
    folder: Path  # runs/<name>/fits/<method>/<subject>-<fit key>/ (the adapter files, fit.json)
    store_root: Path

    def prompt(self, template: str) -> str:
        """The prompt this method samples for a DreamBench template ('a {0} {1} on the beach': {0} the identifier, {1} the class)."""
        return self.fitted.prompt(template)

    def sample(self, template: str, n: int = 4, guidance: str = "none", seed: int | None = None) -> list[Image.Image]:
        """`n` images of `template` (a DreamBench template: '{0}' = the method's identifier, '{1}' = the class noun),
        without guidance (`"none"`) or with a registered guidance method (`"pick-and-draw"`, set by `config.guidance.*`).
        Image i has the seed a run gives image i of this template (run seed `seed`, default the config's); guided ones
        read the vanilla template the run recorded in its store (or record it there), as the run's images do."""
        from .core.seeding import image_seed
        from .harness.guided import TemplateStore, check_guidance, reference_palette
        from .harness.runner import ImageJob, chunks, generate

        if guidance != "none":
            from .guidance import guidances

            if guidance not in guidances:
                raise UserError(f"unknown guidance '{guidance}'; known: none, {', '.join(guidances.names())}")
        cfg = self.config if seed is None else dataclasses.replace(self.config, seed=seed)
        check_guidance(guidance, cfg, self.fitted, [template])
        palette = None
        if guidance != "none" and cfg.guidance.palette_term() is not None:
            palette = reference_palette(self.fitted, cfg, self.fit_key, self.store_root / "cache" / "inversions")
        jobs = [ImageJob(self.method, self.subject, 0, template, i, image_seed(cfg.seed, self.subject.name, template, i),
                         Path(f"{i:03d}.png")) for i in range(n)]
        images: list[Image.Image] = []
        templates = TemplateStore(self.store_root / "cache" / "templates")  # the run's recorded vanilla templates, or new ones
        for batch in chunks(jobs, cfg.sampler.batch_size):
            images += generate(self.fitted, cfg, batch, guidance, palette, templates)[1]
        return images


def fit(method: str, subject: str, cfg: RunConfig | None = None, progress: bool = True) -> FittedSubject:
    """Fit `method` on the dataset's subject named `subject` (any subject of `cfg.dataset`, whatever
    `dataset.subjects` lists), or load the fit a run or an earlier call stored under the same key."""
    from .core.components import load_components
    from .core.sources import resolve_source
    from .harness.runner import fit_subject, preflight, progress_bar
    from .harness.store import RunStore
    from .methods import methods

    cfg = cfg or load_config()
    make = methods.get(method)  # an unknown name fails listing the known ones
    dataset = dataclasses.replace(cfg.dataset, subjects=[subject], max_subjects=None)
    # the run's checks and image filtering (dataset.skip_bad_images), so the subject, hence the fit key, is the run's
    _, _, (chosen,) = preflight(dataclasses.replace(cfg, dataset=dataset), weights=False)
    resolve_source(cfg.model.source, cfg.model.local_files_only)
    components = load_components(cfg.model)
    store = RunStore(Path(cfg.store) / cfg.name)
    bar = progress_bar()
    bar.disable = not progress
    with bar:
        fitted, key = fit_subject(store, make(cfg.method_params.get(method, {}), components), components, chosen, cfg.seed, bar)
    return FittedSubject(cfg, method, chosen, fitted, key, store.fit_dir(method, chosen.name, key), store.root)


__all__ = ["DEFAULT_CONFIG", "FittedSubject", "RunResult", "fit", "load_config", "run"]
