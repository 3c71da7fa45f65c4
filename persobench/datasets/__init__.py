"""Benchmarks by name: DreamBench from a path, or your own data as `folder` (the toy world registers ToyBench).

`dataset.name=folder` with `dataset.path=<folder>` reads either

- one subject: a folder of its images, with `dataset.class_noun=<noun>`; or
- a custom benchmark: a folder of subject folders plus a classes file, either DreamBench's
  `prompts_and_classes.txt` (its own prompts) or `classes.csv` (one `subject,class` line per subject
  folder; DreamBench's 25 prompts). `dataset.classes=<file>` names another file.

Both get DreamBench's prompts by class noun (the live list for `dataset.live_classes`), and every DreamBench
feature (dataset.subjects / max_subjects / max_prompts, the live / object split) works the same on them.
In every subject folder, hidden and system files (`.DS_Store`, `._x.jpg`, `Thumbs.db`, `desktop.ini`) and
non-images are ignored; images load as a viewer shows them (`core/images.py::load_image`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..core.config import DatasetConfig
from ..core.errors import UserError
from ..core.registry import Registry
from .dreambench import (
    Benchmark,
    Subject,
    check_images,
    find_classes_file,
    load_custom_benchmark,
    load_dreambench,
    load_subject_folder,
)
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
    """Your own data at dataset.path: one subject folder (+ dataset.class_noun), or a folder of subject folders
    with a classes file (prompts_and_classes.txt, or classes.csv of subject,class lines; or dataset.classes).
    DreamBench's 25 prompts by class (the live list for a live class, as a DreamBench subject of that class
    would get)."""
    if not cfg.path:
        raise UserError("dataset folder needs your images: pass dataset.path=<a subject's folder, or a folder of subject folders "
                        "with classes.csv>")
    root = Path(cfg.path).expanduser()
    if cfg.classes is not None or (root.is_dir() and find_classes_file(root) is not None):
        if cfg.class_noun:
            raise UserError(f"dataset.class_noun is for one subject folder; '{root}' is a benchmark whose classes file gives each "
                            "subject's class: drop dataset.class_noun")
        if not root.is_dir():
            raise UserError(f"dataset folder '{root}' does not exist; pass dataset.path=<folder of subject folders>")
        return load_custom_benchmark(root, cfg.classes, cfg.live_classes)
    return load_subject_folder(root, cfg.class_noun or "", OBJECT_PROMPTS, cfg.live_classes, LIVE_PROMPTS)


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


__all__ = ["Benchmark", "Subject", "check_images", "datasets", "select_subjects", "load_custom_benchmark", "load_dreambench"]
