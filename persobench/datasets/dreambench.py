"""DreamBench (Ruiz et al., CVPR 2023) in its published on-disk layout, custom benchmarks in the same
layout (a `subject,class` CSV in place of its file allowed), and single custom subject folders.

Layout: `<root>/<subject>/NN.jpg` plus `<root>/prompts_and_classes.txt`, which holds the
subject -> class table and two prompt lists (objects, live subjects) written as
`'a {0} {1} in the jungle'.format(unique_token, class_token)`. A subject gets the live list when
its class is a live class (cat, dog in DreamBench).
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import re
from pathlib import Path

from ..core.benchmark import Benchmark, Subject
from ..core.errors import UserError
from ..core.images import IMAGE_SUFFIXES, BadImage, decode_image, load_image  # noqa: F401  (re-exported)

logger = logging.getLogger(__name__)

_PROMPT = re.compile(r"""['"](.*?)['"]\s*\.format\(\s*unique_token\s*,\s*class_token\s*\)""")


IGNORED_NAMES = {"thumbs.db", "desktop.ini", "ehthumbs.db", "icon\r"}


def is_image_file(p: Path) -> bool:
    """A file a subject folder counts as one of its images: an image suffix (any case), not hidden (`.DS_Store`,
    macOS `._x.jpg` resource forks, `.x.png`) and not a system file (`Thumbs.db`, `desktop.ini`)."""
    return (p.is_file() and not p.name.startswith(".") and p.name.lower() not in IGNORED_NAMES
            and p.suffix.lower() in IMAGE_SUFFIXES)


def subject_images(folder: Path) -> tuple[Path, ...]:
    """The image files of a subject folder, sorted by name (possibly none: `check_images` reports that with
    every other unusable image). Hidden and system files, sub-folders and non-images are ignored."""
    return tuple(sorted(p for p in folder.iterdir() if is_image_file(p)))


def check_images(subjects: list[Subject], skip_bad: bool = False) -> list[Subject]:
    """Decode every subject image before any work. Every file that cannot be used, and every subject folder
    with no image, is reported in ONE error listing each with its reason; with `skip_bad` the bad files are
    dropped with one warning line each and the subjects returned without them (a subject left with no usable
    image is still an error)."""
    bad: list[tuple[Path, str]] = []
    kept: list[Subject] = []
    for subject in subjects:
        good = []
        for path in subject.image_paths:
            try:
                decode_image(path)
                good.append(path)
            except BadImage as e:
                bad.append((path, str(e)))
        kept.append(dataclasses.replace(subject, image_paths=tuple(good)))
    none_found = [f"subject folder '{s.folder or s.name}' has no images (expected {'/'.join(IMAGE_SUFFIXES)})"
                  for s in subjects if not s.image_paths]
    if (bad or none_found) and not skip_bad:
        problems = [f"'{p}' ({reason})" for p, reason in bad]
        head = f"{len(bad)} image(s) cannot be used: " if bad else ""
        fix = "replace or remove them, or pass dataset.skip_bad_images=true to skip them" if bad else "add images"
        raise UserError(head + "; ".join(problems + none_found) + f"; {fix}")
    empty = [s for s in kept if not s.image_paths]
    if empty:  # an error either way: its files are named in it, not warned about first
        listing = "; ".join(f"subject '{s.name}' has no usable image ("
                            + ", ".join(f"'{p.name}': {reason}" for p, reason in bad if p.parent == _parent(s, subjects)) + ")"
                            for s in empty)
        raise UserError(f"{listing}; add images or leave it out of dataset.subjects")
    for path, reason in bad:
        logger.warning("skipped image '%s' (%s) (dataset.skip_bad_images=true)", path, reason)
    return kept


def _parent(subject: Subject, originals: list[Subject]) -> Path | None:
    original = next(s for s in originals if s.name == subject.name)
    return original.image_paths[0].parent if original.image_paths else original.folder


def parse_prompts_and_classes(text: str, source: str) -> tuple[dict[str, str], tuple[str, ...], tuple[str, ...]]:
    """(subject -> class, object prompt templates, live prompt templates)."""
    classes: dict[str, str] = {}
    lines = text.splitlines()
    for line in lines:
        m = re.fullmatch(r"\s*([^,\s]+)\s*,\s*([^,]+?)\s*", line)
        if m and m.group(1) != "subject_name":
            classes[m.group(1)] = m.group(2)
    lower = text.lower()
    obj_at, live_at = lower.find("object prompts"), lower.find("live subject prompts")
    if obj_at < 0 or live_at < 0:
        raise UserError(f"'{source}' has no 'Object Prompts' / 'Live Subject Prompts' sections; is it DreamBench's file?")
    first, second = sorted([obj_at, live_at])
    sections = {first: text[first:second], second: text[second:]}
    objects = tuple(_PROMPT.findall(sections[obj_at]))
    live = tuple(_PROMPT.findall(sections[live_at]))
    if not classes or not objects or not live:
        raise UserError(f"'{source}' lists no subjects or no prompts; is it DreamBench's prompts_and_classes.txt?")
    return classes, objects, live


CLASSES_FILES = ("prompts_and_classes.txt", "classes.csv")


def load_dreambench(root: str | Path, live_classes: list[str] | tuple[str, ...] = ("cat", "dog"), name: str = "dreambench") -> Benchmark:
    root = Path(root).expanduser()
    table = root / "prompts_and_classes.txt"
    if not root.is_dir():
        raise UserError(f"dataset folder '{root}' does not exist; pass dataset.path=<DreamBench folder>")
    if not table.is_file():
        raise UserError(f"'{root}' has no prompts_and_classes.txt; pass dataset.path=<DreamBench folder>")
    classes, objects, live = parse_prompts_and_classes(table.read_text(errors="replace"), str(table))
    return _benchmark(root, table, classes, objects, live, live_classes, name)


def _benchmark(root: Path, table: Path, classes: dict[str, str], objects: tuple[str, ...], live: tuple[str, ...],
               live_classes, name: str) -> Benchmark:
    subjects = []
    for subject, noun in classes.items():
        folder = root / subject
        if not folder.is_dir():
            raise UserError(f"'{table}' lists subject '{subject}' but '{folder}' does not exist")
        kind = "live" if noun in live_classes else "object"
        subjects.append(Subject(subject, noun, kind, subject_images(folder), folder))
    truth = root / "ground_truth.json"
    return Benchmark(name, root, tuple(subjects), objects, live, truth if truth.is_file() else None)


def parse_classes_csv(text: str, source: str) -> dict[str, str]:
    """`subject,class` lines (subject = its folder's name). A header line (`subject,class`), blank lines and
    `#` comments are allowed; a spreadsheet's byte-order mark is ignored."""
    classes: dict[str, str] = {}
    first_line: dict[str, int] = {}
    seen_row = False
    for number, row in enumerate(csv.reader(text.lstrip("\ufeff").splitlines()), start=1):
        cells = [c.strip() for c in row]
        if not any(cells) or cells[0].startswith("#"):
            continue
        if len(cells) != 2 or not all(cells):
            raise UserError(f"'{source}' line {number}: expected subject,class (e.g. my_mug,mug), got {','.join(row)!r}")
        subject, noun = cells
        first, seen_row = not seen_row, True
        if first and subject.lower() in ("subject", "subject_name") and noun.lower() in ("class", "class_noun", "class_token"):
            continue  # header
        if subject in classes:
            raise UserError(f"'{source}' lists subject '{subject}' twice (lines {first_line[subject]} and {number}); keep one")
        classes[subject], first_line[subject] = noun, number
    if not classes:
        raise UserError(f"'{source}' lists no subjects; write one subject,class line per subject folder (e.g. my_mug,mug)")
    return classes


def load_custom_benchmark(root: str | Path, classes_file: str | Path | None = None,
                          live_classes: list[str] | tuple[str, ...] = ("cat", "dog"), name: str = "folder") -> Benchmark:
    """Your own benchmark: `<root>/<subject>/<images>` plus a classes file, either DreamBench's
    `prompts_and_classes.txt` (its subject -> class table and its own prompt lists) or a `subject,class` CSV
    (`classes.csv`), whose subjects get DreamBench's 25 prompts: the live list for a live class
    (`live_classes`), the object list otherwise, exactly as a DreamBench subject of that class would.
    `classes_file` defaults to whichever of the two is in `root`."""
    from .dreambench_prompts import LIVE_PROMPTS, OBJECT_PROMPTS

    root = Path(root).expanduser()
    table = find_classes_file(root, classes_file)
    if table is None:
        raise UserError(f"'{root}' has no classes file: add {CLASSES_FILES[1]} (one subject,class line per subject folder) "
                        f"or DreamBench's {CLASSES_FILES[0]}, or pass dataset.classes=<file>")
    text = table.read_text(encoding="utf-8-sig", errors="replace")
    lower = text.lower()
    if "object prompts" in lower and "live subject prompts" in lower:
        classes, objects, live = parse_prompts_and_classes(text, str(table))
    else:
        classes, objects, live = parse_classes_csv(text, str(table)), OBJECT_PROMPTS, LIVE_PROMPTS
    return _benchmark(root, table, classes, tuple(objects), tuple(live), live_classes, name)


def find_classes_file(root: Path, classes_file: str | Path | None = None) -> Path | None:
    """The benchmark's classes file: `classes_file` (as given, or inside `root`), else the one of
    `prompts_and_classes.txt` / `classes.csv` that `root` holds (both: an error asking which)."""
    if classes_file is not None:
        given = Path(classes_file).expanduser()
        for candidate in (given, root / given):
            if candidate.is_file():
                return candidate
        raise UserError(f"dataset.classes: '{classes_file}' does not exist (nor in '{root}'); point it at the subject,class file")
    found = [root / n for n in CLASSES_FILES if (root / n).is_file()]
    if len(found) > 1:
        raise UserError(f"'{root}' has both {CLASSES_FILES[0]} and {CLASSES_FILES[1]}; pass dataset.classes=<the one to use>")
    return found[0] if found else None


def load_subject_folder(folder: str | Path, class_noun: str, prompts: tuple[str, ...], live_classes=("cat", "dog"),
                        live_prompts: tuple[str, ...] | None = None) -> Benchmark:
    """A user's own subject: a folder of images and its class noun, with the given prompt lists (the live
    list, default the same, for a live class)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise UserError(f"subject folder '{folder}' does not exist; pass dataset.path=<folder of images>")
    images = subject_images(folder)
    if not images and any(p.is_dir() and not p.name.startswith(".") and subject_images(p) for p in folder.iterdir()):
        raise UserError(f"'{folder}' holds subject folders but no classes file: add {CLASSES_FILES[1]} (one subject,class "
                        f"line per folder, e.g. my_mug,mug) or DreamBench's {CLASSES_FILES[0]}")
    if not class_noun:
        raise UserError("a subject folder needs its class noun: pass dataset.class_noun=<noun> (e.g. dog)")
    kind = "live" if class_noun in live_classes else "object"
    subject = Subject(folder.name, class_noun, kind, images, folder)
    return Benchmark("folder", folder.parent, (subject,), tuple(prompts), tuple(live_prompts or prompts))
