"""Benchmarks by name: DreamBench from a path, or one custom subject folder (the toy world registers ToyBench)."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import UserError
from ..harness.config import DatasetConfig
from ..registry import Registry
from .dreambench import Benchmark, Subject, load_dreambench, load_subject_folder
from .dreambench_prompts import LIVE_PROMPTS, OBJECT_PROMPTS

datasets: Registry[Callable[[DatasetConfig], Benchmark]] = Registry("dataset")


@datasets.register("dreambench")
def _dreambench(cfg: DatasetConfig) -> Benchmark:
    """DreamBench (30 subjects x 25 prompts) from dataset.path, in its published layout."""
    if not cfg.path:
        raise UserError("dataset dreambench needs its folder: pass dataset.path=<DreamBench folder>")
    return load_dreambench(cfg.path, cfg.live_classes)


@datasets.register("folder")
def _folder(cfg: DatasetConfig) -> Benchmark:
    """One custom subject: dataset.path (images) + dataset.class_noun, with DreamBench's 25 prompts (the live
    list for a live class, as a DreamBench subject of that class would get)."""
    if not cfg.path:
        raise UserError("dataset folder needs the subject's images: pass dataset.path=<folder>")
    return load_subject_folder(cfg.path, cfg.class_noun or "", OBJECT_PROMPTS, cfg.live_classes, LIVE_PROMPTS)


def select_subjects(bench: Benchmark, cfg: DatasetConfig) -> list[Subject]:
    subjects = list(bench.subjects)
    if cfg.subjects is not None:
        names = {s.name for s in subjects}
        missing = [n for n in cfg.subjects if n not in names]
        if missing:
            raise UserError(f"dataset.subjects names unknown subject(s) {missing}; {bench.name} has: {', '.join(sorted(names))}")
        subjects = [s for s in subjects if s.name in cfg.subjects]
    if cfg.max_subjects is not None:
        subjects = subjects[: cfg.max_subjects]
    return subjects


__all__ = ["Benchmark", "Subject", "datasets", "select_subjects", "load_dreambench"]
