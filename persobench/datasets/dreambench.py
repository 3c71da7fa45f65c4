"""DreamBench (Ruiz et al., CVPR 2023) in its published on-disk layout, and custom subject folders.

Layout: `<root>/<subject>/NN.jpg` plus `<root>/prompts_and_classes.txt`, which holds the
subject -> class table and two prompt lists (objects, live subjects) written as
`'a {0} {1} in the jungle'.format(unique_token, class_token)`. A subject gets the live list when
its class is a live class (cat, dog in DreamBench).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from functools import cached_property
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
_PROMPT = re.compile(r"""['"](.*?)['"]\s*\.format\(\s*unique_token\s*,\s*class_token\s*\)""")
MIN_SIDE = 16
LOADER_VERSION = 2  # 2: EXIF orientation applied, transparency composited on white


@dataclasses.dataclass(frozen=True)
class Subject:
    name: str
    class_noun: str
    kind: str  # "object" | "live"
    image_paths: tuple[Path, ...]

    def images(self) -> list[Image.Image]:
        """The reference images as RGB; a corrupt, tiny or exotic file is an error naming it."""
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

    def prompts_for(self, subject: Subject) -> tuple[str, ...]:
        return self.live_prompts if subject.kind == "live" else self.object_prompts


def load_image(path: Path) -> Image.Image:
    """An image as a viewer shows it, in RGB: the one loader for subject, reference and generated images,
    so both sides of every similarity are read the same way.

    EXIF orientation is applied (phone photos are often stored sideways with an Orientation tag), and
    transparency is composited on white (DreamBench++'s `load_image` does both, white background
    included); a plain `convert("RGB")` would instead expose whatever colour the transparent pixels hide.
    """
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                raise UserError(f"image '{path}' is {im.mode} (16-bit or float); convert it to 8-bit RGB")
            upright = ImageOps.exif_transpose(im)
            rgb = _on_white(upright) if _has_alpha(upright) else upright.convert("RGB")
    except UserError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UserError(f"image '{path}' cannot be read ({type(e).__name__}); replace or remove the file") from None
    if min(rgb.size) < MIN_SIDE:
        raise UserError(f"image '{path}' is {rgb.size[0]}x{rgb.size[1]}; subject images must be at least {MIN_SIDE} px a side")
    return rgb


def _has_alpha(im: Image.Image) -> bool:
    """An alpha channel (RGBA, LA, PA, ...) or a transparent palette index / colour key (`transparency`)."""
    return "A" in im.getbands() or "transparency" in im.info


def _on_white(im: Image.Image) -> Image.Image:
    rgba = im.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")


def subject_images(folder: Path) -> tuple[Path, ...]:
    files = tuple(sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
    if not files:
        raise UserError(f"subject folder '{folder}' has no images (expected {'/'.join(IMAGE_SUFFIXES)})")
    for p in files:
        if p.stat().st_size == 0:
            raise UserError(f"image '{p}' is empty (0 bytes); replace or remove the file")
    return files


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


def load_dreambench(root: str | Path, live_classes: list[str] | tuple[str, ...] = ("cat", "dog"), name: str = "dreambench") -> Benchmark:
    root = Path(root).expanduser()
    table = root / "prompts_and_classes.txt"
    if not root.is_dir():
        raise UserError(f"dataset folder '{root}' does not exist; pass dataset.path=<DreamBench folder>")
    if not table.is_file():
        raise UserError(f"'{root}' has no prompts_and_classes.txt; pass dataset.path=<DreamBench folder>")
    classes, objects, live = parse_prompts_and_classes(table.read_text(errors="replace"), str(table))
    subjects = []
    for subject, noun in classes.items():
        folder = root / subject
        if not folder.is_dir():
            raise UserError(f"'{table}' lists subject '{subject}' but '{folder}' does not exist")
        kind = "live" if noun in live_classes else "object"
        subjects.append(Subject(subject, noun, kind, subject_images(folder)))
    return Benchmark(name, root, tuple(subjects), objects, live)


def load_subject_folder(folder: str | Path, class_noun: str, prompts: tuple[str, ...], live_classes=("cat", "dog"),
                        live_prompts: tuple[str, ...] | None = None) -> Benchmark:
    """A user's own subject: a folder of images and its class noun, with the given prompt lists (the live
    list, default the same, for a live class)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise UserError(f"subject folder '{folder}' does not exist; pass dataset.path=<folder of images>")
    if not class_noun:
        raise UserError("a subject folder needs its class noun: pass dataset.class_noun=<noun> (e.g. dog)")
    kind = "live" if class_noun in live_classes else "object"
    subject = Subject(folder.name, class_noun, kind, subject_images(folder))
    return Benchmark("folder", folder.parent, (subject,), tuple(prompts), tuple(live_prompts or prompts))
