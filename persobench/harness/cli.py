"""The `persobench` command line: run, sample, list, report, doctor, toyworld.

Every user-facing failure is a `UserError`: one line on stderr, exit code 2, nothing half-written.
`persobench --debug ...` (or `PERSOBENCH_DEBUG=1`) re-raises it instead, with its original cause and traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from ..core.errors import UserError

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"
logger = logging.getLogger(__name__)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at the time of the record (so a redirected stderr is honoured)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _configure_logging(level: int) -> None:
    """The `persobench` loggers: one handler on stderr, WARNING by default, INFO with --verbose, DEBUG with --debug."""
    root = logging.getLogger("persobench")
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(level)


def _debug_from_env() -> bool:
    return os.environ.get("PERSOBENCH_DEBUG", "").strip().lower() not in ("", "0", "false", "no", "off")


def _unsuppress(error: BaseException) -> None:
    """Show the exceptions a `raise ... from None` hid, for --debug tracebacks."""
    seen, e = set(), error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        e.__suppress_context__ = False
        e = e.__cause__ or e.__context__


def _split_overrides(items: list[str]) -> tuple[str | None, list[str]]:
    """`persobench run [CONFIG] [key=value ...]`: the one item without '=' is the config file."""
    files = [i for i in items if "=" not in i]
    if len(files) > 1:
        raise UserError(f"give at most one config file, got {files}; overrides look like key.sub=value")
    return (files[0] if files else None), [i for i in items if "=" in i]


def _point_name(overrides: list[str]) -> str:
    from .store import slug

    return "__".join(slug(o.replace("=", "-"), 40) for o in overrides) or "main"


def cmd_run(args: argparse.Namespace) -> int:
    from ..core.config import expand_sweep, load_config

    config_file, overrides = _split_overrides(args.items)
    config_file = config_file or str(DEFAULT_CONFIG)
    sweeps = load_config(config_file, overrides).sweep + args.sweep
    grid = expand_sweep(sweeps) if sweeps else [[]]
    configs = [(point, load_config(config_file, overrides + point)) for point in grid]  # validate all points first
    check = None
    if args.shape_check:  # the same points on random-weight twins, cut to a few units each (harness/shapecheck.py)
        if args.dry_run:
            raise UserError("--shape-check runs the config on twins and --dry-run loads no model: give one of them")
        from .shapecheck import ShapeCheck

        check = ShapeCheck(config_file, configs, args.shape_check_scale)
        configs = check.prepare(overrides)
        check.print_plan()
    if not args.dry_run:
        from ..core.sources import resolve_source

        for _, cfg in configs:  # a missing model fails here, before the heavy imports below
            resolve_source(cfg.model.source, cfg.model.local_files_only)
    from .runner import freeze_imports, progress_bar

    if args.dry_run:
        from .worklist import combined_gpu_seconds, unit_costs, unit_table, work_list

        lists = []
        for point, cfg in configs:
            w = work_list(cfg)
            lists.append(w)
            print(f"point {_point_name(point)}: {w['subjects']} subjects; fits {w['fits']} (steps {w['fit_steps']}); "
                  f"{w['images']} images x {cfg.sampler.steps} steps; {w['metric_passes']} metric passes; "
                  f"~{w['gpu_hours_estimate']} GPU-hours")
            print(f"  {len(w['rows'])} table rows (method/guidance): {', '.join(w['rows'])}")
        used = list(dict.fromkeys(m for _, cfg in configs for m in cfg.methods))
        total = sum(combined_gpu_seconds(lists).values()) / 3600  # fits shared by points counted once
        print(f"total ~{total:.2f} GPU-hours (SD 1.5 fp16 512 px unit costs, {unit_table()['source']}: {unit_costs(used)})")
        return 0
    freeze_imports()  # before the shape check's or the run's first model loads
    if check is None:
        return _run_points(args, configs, progress_bar())
    with check.measuring():
        code = _run_points(args, configs, check.progress_bar())
    check.print_summary()
    return code


def _run_points(args: argparse.Namespace, configs: list, bar) -> int:
    """Every point of the run, then the report and the results table."""
    from .runner import run
    from .shapecheck import phase

    point_dirs = []
    with bar:
        for point, cfg in configs:
            point_dirs.append(run(cfg, _point_name(point), progress=bar))
            bar.console.print(f"[green]point {_point_name(point)} done[/]: {point_dirs[-1]}")
    from ..reports.build import build_run_report, report_paths, results_table
    from .distributed import current_shard

    if not current_shard().is_main:
        return 0
    cfg = configs[0][1]
    run_root = Path(cfg.store) / cfg.name
    with phase("report"):
        build_run_report(run_root, args.wandb or cfg.report.wandb)
    if cfg.metrics.names:  # the results table (guided rows: change vs unguided), then where the report is
        print(f"\nresults ({run_root}; mean over (subject, prompt) cells; 95% intervals and live/object splits in table.md):")
        print(results_table(point_dirs))
    for path in report_paths(run_root):
        print(f"{'report' if path.suffix == '.html' else 'trade-off figure'}: {path}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from ..core.atomic import write_png
    from ..core.config import load_config
    from ..core.seeding import image_seed
    from .runner import ImageJob, generate

    overrides = [f"methods=[{args.method}]"] + args.overrides
    cfg = load_config(args.config, overrides)
    import dataclasses

    from ..core.components import load_components
    from ..methods import methods
    from .runner import preflight

    cfg = dataclasses.replace(cfg, dataset=dataclasses.replace(cfg.dataset, subjects=[args.subject], max_subjects=None))
    cfg, _, (subject,) = preflight(cfg, weights=False)  # the run's checks, so the subject (and its fit key) is the run's
    components = load_components(cfg.model)
    from .runner import fit_subject
    from .store import RunStore

    store = RunStore(Path(cfg.store) / cfg.name)
    fitted, _ = fit_subject(store, methods.get(args.method)(cfg.method_params.get(args.method, {}), components), components,
                            subject, cfg.seed)
    out = Path(args.out)
    jobs = [ImageJob(args.method, subject, p, t, i, image_seed(cfg.seed, subject.name, t, i), out / f"{p:03d}-{i}.png")
            for p, t in enumerate(args.prompt) for i in range(args.num_images)]
    prompts, images = generate(fitted, cfg, jobs)
    for job, prompt, image in zip(jobs, prompts, images):
        write_png(job.path, image)
        print(f"{job.path}\t{prompt}")
    return 0


def cmd_regress(args: argparse.Namespace) -> int:
    from .regress import regress
    from .runner import freeze_imports

    config_file, overrides = _split_overrides(args.items)
    freeze_imports()
    problems = regress(Path(args.baseline), config_file, overrides, args.update, args.reason)
    if args.update:
        print(f"baseline updated: {args.baseline}")
        return 0
    if problems:
        print(f"regression gate FAILED ({len(problems)} finding(s)):", file=sys.stderr)
        for line in problems:
            print(f"  {line}", file=sys.stderr)
        return 1
    print("regression gate passed: every score within tolerance")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from ..core.schedulers import schedulers
    from ..datasets import datasets
    from ..methods import methods
    from ..reports.metrics.backbones import backbones
    from ..reports.metrics.scores import metrics

    for registry in (methods, datasets, schedulers, metrics, backbones):
        print(f"{registry.kind}s:")
        for name, doc in registry.describe().items():
            print(f"  {name:<20} {doc}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ..reports.build import build_run_report, finished_points, report_paths, results_table

    run_root = Path(args.run)
    page = build_run_report(run_root, args.wandb)
    table = results_table(finished_points(run_root))  # the run's end-of-run table: deltas, a sweep's ablation path
    if table:
        print(f"results ({run_root}; mean over (subject, prompt) cells; 95% intervals and live/object splits in table.md):")
        print(table)
    for path in report_paths(run_root):
        if path != page:
            print(f"trade-off figure: {path}")
    print(f"report: {page}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    import importlib.metadata as md

    import torch

    from ..core.sources import EMBEDDED

    for pkg in ("torch", "torchvision", "diffusers", "transformers", "open_clip_torch", "timm", "accelerate", "peft"):
        try:
            print(f"{pkg:<16} {md.version(pkg)}")
        except md.PackageNotFoundError:
            print(f"{pkg:<16} MISSING (pip install {pkg})")
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(f"{'cuda':<16} {cuda}")
    print(f"{'threads':<16} {torch.get_num_threads()}")
    for name, path in EMBEDDED.items():
        state = "found" if (path / "model_index.json").is_file() else "MISSING (persobench toyworld train)"
        steps = (path / "TRAINED_STEPS").read_text().strip() if (path / "TRAINED_STEPS").is_file() else "?"
        print(f"{'model ' + name:<16} {state} at {path} (trained steps: {steps})")
    from ..core.sources import ASSETS

    for name in ("clip", "dino", "oracle"):
        found = any((ASSETS / name).glob("*.safetensors"))
        print(f"{'evaluator ' + name:<16} {'found' if found else 'MISSING (persobench toyworld train --stage ' + name + ')'}")
    from ..toyworld.plugin import TOYBENCH

    print(f"{'toybench':<16} {'found' if (TOYBENCH / 'prompts_and_classes.txt').is_file() else 'MISSING'} at {TOYBENCH}")
    return 0


def cmd_toyworld(args: argparse.Namespace) -> int:
    from ..core.sources import ASSETS

    if args.action == "train":
        from ..toyworld.training.stages import run_stages

        run_stages(args.stage, Path(args.out or ASSETS), Path(args.work), smoke=args.smoke, max_steps=args.max_steps)
    elif args.action == "eval":
        import json

        from ..toyworld.evaluate import evaluate_all

        names = ["vae", "t2i", "clip", "dino", "oracle"] if args.stage == "all" else args.stage.split(",")
        results = evaluate_all(names)
        print(json.dumps(results, indent=2))
        if args.write_cards:
            from ..toyworld.cards import write_cards

            for card in write_cards(Path(args.out or ASSETS), results, Path(args.work)):
                print(f"wrote {card}")
        if args.json:
            from ..core.atomic import write_json

            write_json(Path(args.json), results)
    elif args.action == "export":
        from ..toyworld.toybench import export_toybench

        print(export_toybench(Path(args.out or ASSETS / "toybench")))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="persobench", description="Benchmark text-to-image personalization methods.")
    parser.add_argument("--debug", action="store_true", help="debug log, and re-raise errors with their traceback (or PERSOBENCH_DEBUG=1)")
    parser.add_argument("--verbose", "-v", action="store_true", help="info log on stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="fit -> sample -> report for a config (default: the embedded toy world)")
    p.add_argument("items", nargs="*", help="[CONFIG.yaml] [key.sub=value ...]")
    p.add_argument("--sweep", action="append", default=[], help="key=v1,v2,... (repeat for a grid); each point is a run")
    p.add_argument("--dry-run", action="store_true", help="validate and print the work list, load no model")
    p.add_argument("--wandb", choices=["offline", "online", "disabled"], default=None, help="overrides report.wandb")
    p.add_argument("--shape-check", action="store_true",
                   help="run the whole config on random-weight twins of its models (1 subject, 1 prompt, 1 image, 2 steps) in "
                        "its own store; print each phase's time and memory and project the full run's")
    p.add_argument("--shape-check-scale", type=int, default=None, metavar="D",
                   help="twins' width divisor: 1 = the real sizes (default, or $PERSOBENCH_SHAPE_CHECK_SCALE), 8 = the CI size")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("sample", help="one method, one subject, given prompts")
    p.add_argument("--method", default="vanilla-sd")
    p.add_argument("--subject", required=True)
    p.add_argument("--prompt", action="append", required=True, help="DreamBench template, e.g. 'a {0} {1} in the snow'")
    p.add_argument("--num-images", type=int, default=1)
    p.add_argument("--out", default="samples")
    p.add_argument("--config", default=str(DEFAULT_CONFIG))
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("regress", help="run the fixed gate benchmark and compare with a baseline")
    p.add_argument("items", nargs="*", help="[CONFIG.yaml] [key=value ...] (default: the shipped gate config)")
    p.add_argument("--baseline", required=True)
    p.add_argument("--update", action="store_true", help="rewrite the baseline from this run")
    p.add_argument("--reason", default=None, help="why the baseline changes (recorded in its history)")
    p.set_defaults(func=cmd_regress)

    p = sub.add_parser("list", help="registered methods, datasets, schedulers")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("report", help="rebuild reports from a run folder")
    p.add_argument("run")
    p.add_argument("--wandb", choices=["offline", "online", "disabled"], default=None, help="default: the run's report.wandb")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("doctor", help="what models, data and devices are found")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("toyworld", help="train / export the embedded toy world")
    p.add_argument("action", choices=["train", "eval", "export"])
    p.add_argument("--stage", default="all")
    p.add_argument("--out", default=None, help="where models go (default: the package's assets)")
    p.add_argument("--work", default="training/toyworld", help="checkpoints, loss logs, data caches")
    p.add_argument("--smoke", action="store_true", help="one-minute configuration of the same code (tests)")
    p.add_argument("--max-steps", type=int, default=None, help="stop the t2i stage after this many steps this run")
    p.add_argument("--json", default=None, help="eval: also write the figures to this JSON file")
    p.add_argument("--write-cards", action="store_true", help="eval: write MODEL_CARD.md beside each model")
    p.set_defaults(func=cmd_toyworld)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides may come after options
        target = getattr(args, "items", getattr(args, "overrides", None))
        bad = [e for e in extra if e.startswith("-") or "=" not in e]
        if target is None or bad:
            parser.error(f"unrecognized arguments: {' '.join(bad or extra)}")
        target.extend(extra)
    debug = args.debug or _debug_from_env()
    _configure_logging(logging.DEBUG if debug else logging.INFO if args.verbose else logging.WARNING)
    try:
        return args.func(args)
    except UserError as e:
        if debug:  # the original exception, its cause chain and traceback
            _unsuppress(e)
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
