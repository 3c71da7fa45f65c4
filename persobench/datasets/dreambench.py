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
import hashlib
import logging
import re
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import UserError

logger = logging.getLogger(__name__)

# HEIC / AVIF count as images so that one Pillow cannot read is reported, not silently ignored
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".heic", ".heif", ".avif")
_PROMPT = re.compile(r"""['"](.*?)['"]\s*\.format\(\s*unique_token\s*,\s*class_token\s*\)""")
MIN_SIDE = 16
# 2: EXIF orientation applied, transparency composited on white. (16-bit / float grey, decoded since, were
# refused before, so no cached subject decodes differently: the version stays.)
LOADER_VERSION = 2


@dataclasses.dataclass(frozen=True)
class Subject:
    name: str
    class_noun: str
    kind: str  # "object" | "live"
    image_paths: tuple[Path, ...]
    folder: Path | None = None  # where the images are (for messages)

    def images(self) -> list[Image.Image]:
        """The reference images as RGB; a corrupt or tiny file is an error naming it (`check_images` checks
        them all at once before any work)."""
        return [load_image(p) for p in self.image_paths]

    @cached_property
    def content_hash(self) -> str:
        """The subject's identity for every cache key: its name, class, image bytes and the loader's version
        (the same bytes decode differently when `load_image` changes, e.g. EXIF orientation)."""
        h = hashlib.sha256(f"{self.name}|{self.class_noun}|loader{LOADER_VERSION}".encode())
        for p in self.image_paths:
            h.update(p.read_bytes())
        return h.hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """Subjects plus the prompt templates each gets ('{0}' = identifier, '{1}' = class noun)."""

    name: str
    root: Path
    subjects: tuple[Subject, ...]
    object_prompts: tuple[str, ...]
    live_prompts: tuple[str, ...]
    ground_truth: Path | None = None  # ToyBench's ground_truth.json, when the data has one (the oracle metric needs it)

    def prompts_for(self, subject: Subject) -> tuple[str, ...]:
        return self.live_prompts if subject.kind == "live" else self.object_prompts


class BadImage(Exception):
    """Why one file cannot be used as an image (the message is the reason alone; the caller names the file)."""


def load_image(path: Path) -> Image.Image:
    """An image as a viewer shows it, in 8-bit RGB: the one loader for subject, reference and generated images,
    so both sides of every similarity are read the same way. A file that cannot be used is a `UserError`
    naming it and why.

    - EXIF orientation is applied (phone photos are often stored sideways with an Orientation tag).
    - Transparency is composited on white (DreamBench++'s `load_image` does both, white background
      included); a plain `convert("RGB")` would instead expose whatever colour the transparent pixels hide.
    - Every bit depth is scaled to 8 bits, never clipped: 16-bit grey ("I;16*", and "I", Pillow's mode for
      16-bit PNG / TIFF grey) is divided by 257 (65535 -> 255); float images ("F") are read as 0..1
      (0..255 or 0..65535 when their values run past 1 or 255). 16-bit RGB PNGs Pillow already reduces.
    - CMYK (Adobe's inverted JPEGs included), palette, 1-bit, grey and the rest: Pillow's conversion.
      Embedded ICC profiles are not applied (as before: applying them would change how every cached
      subject decodes).
    """
    try:
        return decode_image(path)
    except BadImage as e:
        raise UserError(f"image '{path}': {e}; replace or remove the file") from None


def decode_image(path: Path) -> Image.Image:
    """`load_image` without the error wording: raises `BadImage(reason)`."""
    try:
        if path.stat().st_size == 0:
            raise BadImage("empty file, 0 bytes")
        with Image.open(path) as im:
            im.load()
            upright = ImageOps.exif_transpose(im)
            rgb = _on_white(upright) if _has_alpha(upright) else _to_rgb(upright)
    except BadImage:
        raise
    except Image.DecompressionBombError:
        raise BadImage("larger than Pillow's decompression-bomb limit; downscale it") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        hint = " (HEIC/AVIF: convert to JPEG or PNG)" if path.suffix.lower() in (".heic", ".heif", ".avif") else ""
        raise BadImage(f"cannot be read: {type(e).__name__}, not an image Pillow can decode{hint}") from None
    if min(rgb.size) < MIN_SIDE:
        raise BadImage(f"{rgb.size[0]}x{rgb.size[1]} px, at least {MIN_SIDE} px a side needed")
    return rgb


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode.startswith("I") or im.mode == "F":  # 16-bit, 32-bit int or float grey
        return Image.fromarray(_grey_to_8bit(im)).convert("RGB")
    try:
        return im.convert("RGB")
    except ValueError:
        raise BadImage(f"colour mode {im.mode} has no conversion to RGB, save it as 8-bit RGB") from None


def _grey_to_8bit(im: Image.Image) -> np.ndarray:
    arr = np.asarray(im).astype(np.float64)
    if not np.isfinite(arr).all():
        raise BadImage(f"{im.mode} image with NaN or infinite pixels")
    if im.mode == "F":
        top = arr.max(initial=0.0)
        scale = 255.0 if top <= 1.0 else 1.0 if top <= 255.0 else 255.0 / 65535.0
    else:  # I;16, I;16B, I;16L, I (Pillow reads 16-bit grey PNG / TIFF as I;16 or I)
        scale = 255.0 / 65535.0
    return np.clip(np.round(arr * scale), 0, 255).astype(np.uint8)


def _has_alpha(im: Image.Image) -> bool:
    """An alpha channel (RGBA, LA, PA, ...) or a transparent palette index / colour key (`transparency`)."""
    return "A" in im.getbands() or "transparency" in im.info


def _on_white(im: Image.Image) -> Image.Image:
    if im.mode.startswith("I") or im.mode == "F":  # high-bit grey with a colour key: scale first (convert would clip)
        key = im.info.get("transparency")
        grey = Image.fromarray(_grey_to_8bit(im))
        alpha = Image.fromarray(np.where(np.asarray(im) == key, 0, 255).astype(np.uint8)) if key is not None else None
        rgba = grey.convert("RGBA")
        if alpha is not None:
            rgba.putalpha(alpha)
    else:
        rgba = im.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")


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
