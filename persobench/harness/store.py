"""The run store: one folder tree per run, every artefact keyed by the hash of what produces it.

    <store>/<run>/fits/<method>/<subject>-<fit key>/         fitted adapter + fit.json (written last)
    <store>/<run>/images/<method>/<subject>/<sample key>/    NNN-<prompt>-<i>.png + .json record
    <store>/<run>/points/<point>/                            config.yaml, records.parquet, reports

A fit key covers (method, its hyperparameters, subject images, base model); a sample key adds the
sampler, resolution, run seed and guidance. So a changed guidance weight re-samples without
re-fitting, and a re-run with nothing changed finds every image and does nothing. An item is done
when its last file exists: every write is atomic, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..core.atomic import write_json, write_png


def slug(text: str, n: int = 48) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:n] or "empty"


def subject_slug(name: str) -> str:
    """A subject's folder name in the store: its slug, plus a hash of the name when the name is not plain ASCII
    (so 'été' and 'ete', or two names in another script that both slug to 'empty', stay apart). ASCII names keep
    their plain slug (existing stores resume); the runner refuses two ASCII names with one slug."""
    if name.isascii():
        return slug(name)
    plain = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return f"{slug(plain, 39)}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock, so two processes never fit the same subject at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


class RunStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def fit_dir(self, method: str, subject: str, key: str) -> Path:
        return self.root / "fits" / method / f"{subject_slug(subject)}-{key}"

    def sample_dir(self, method: str, subject: str, key: str) -> Path:
        return self.root / "images" / method / subject_slug(subject) / key

    def image_path(self, method: str, subject: str, key: str, prompt_index: int, template: str, index: int) -> Path:
        name = f"{prompt_index:03d}-{slug(template.format('', '').strip() or 'prompt', 32)}-{index}"
        return self.sample_dir(method, subject, key) / f"{name}.png"

    def point_dir(self, point: str) -> Path:
        return self.root / "points" / point

    @staticmethod
    def record_path(image: Path) -> Path:
        return image.with_suffix(".json")

    def is_done(self, image: Path) -> bool:
        """An image counts once its record (written after the PNG) exists."""
        return self.record_path(image).is_file() and image.is_file()

    def save_image(self, image_path: Path, image, record: dict[str, Any]) -> None:
        write_png(image_path, image)
        write_json(self.record_path(image_path), record)

    def read_record(self, image: Path) -> dict[str, Any]:
        return json.loads(self.record_path(image).read_text())

    def relative(self, path: Path) -> str:
        return os.path.relpath(path, self.root)
