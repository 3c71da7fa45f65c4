"""What a benchmark is, whatever its source: subjects (a name, a class noun, reference images) and the prompt
templates each gets. Datasets build these (`persobench/datasets/`, the toy world's ToyBench); everything
else reads them."""

from __future__ import annotations

import dataclasses
import hashlib
from functools import cached_property
from pathlib import Path

from PIL import Image

from .images import LOADER_VERSION, load_image


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
