"""ToyBench: ~20 toy-world subjects exported in DreamBench's exact on-disk layout.

The DreamBench loader reads it unchanged. Each subject is one instance (fixed identity) shown in
4-6 reference images with varied poses and contexts; its ground truth is kept in `ground_truth.json`
beside the prompts file (an extra file DreamBench's loader ignores) for the oracle metrics. Each reference
image's subject mask (the renderer's, accessories included) is `masks/<subject>/<image stem>.png` (grey, 255 =
subject), the layout the subject-region metrics read (`reports/metrics/scores.py::reference_mask_path`); it is
beside the subject folders, not in them, so the masks change no subject's images or content hash.
"""

from __future__ import annotations

import dataclasses
import io
import json
import random
from pathlib import Path

from PIL import Image

from ..core.atomic import write_bytes, write_text
from ..reports.metrics.scores import reference_mask_path
from .render import render
from .world import ACCESSORIES, CLASSES, CONTEXTS, PROMPT_CONTEXTS, Identity, Pose, Scene

OBJECT_PROMPTS = [f"a {{0}} {{1}} {CONTEXTS[c]}" for c in PROMPT_CONTEXTS] + [
    "a red {0} {1}",
    "a purple {0} {1}",
    "a shiny {0} {1}",
]
LIVE_PROMPTS = [f"a {{0}} {{1}} {CONTEXTS[c]}" for c in PROMPT_CONTEXTS] + [
    f"a {{0}} {{1}} {ACCESSORIES[a]}" for a in ("hat", "glasses")
] + ["a shiny {0} {1}"]
REFERENCE_CONTEXTS = ("studio", "wood", "grass", "fabric", "studio", "snow")


def toybench_subjects(per_class: int = 4, seed: int = 2024) -> list[tuple[str, Identity]]:
    """Deterministic subjects: instances of one class differ in colours and pattern."""
    rng = random.Random(seed)
    out = []
    for cls in CLASSES:
        used: set[str] = set()
        for k in range(per_class):
            while True:
                ident = Identity.sample(rng, cls)
                if ident.primary not in used:
                    break
            used.add(ident.primary)
            out.append((f"{cls}{k + 1}", ident))
    return out


def reference_scenes(name: str, ident: Identity, n: int, seed: int) -> list[Scene]:
    rng = random.Random(f"{seed}:{name}")
    return [
        Scene(identity=ident, pose=Pose.sample(rng), context=REFERENCE_CONTEXTS[i % len(REFERENCE_CONTEXTS)], seed=rng.randrange(2**31))
        for i in range(n)
    ]


def _template_line(t: str) -> str:
    return f"'{t}'.format(unique_token, class_token),"


def prompts_and_classes(subjects: list[tuple[str, Identity]]) -> str:
    lines = ["Classes", "", "subject_name,class"]
    lines += [f"{name},{ident.cls}" for name, ident in subjects]
    lines += ["", "Prompts", "", "Object Prompts", "", "prompt_list = ["]
    lines += [_template_line(t) for t in OBJECT_PROMPTS]
    lines += ["]", "", "Live Subject Prompts", "", "prompt_list = ["]
    lines += [_template_line(t) for t in LIVE_PROMPTS]
    lines += ["]", ""]
    return "\n".join(lines)


def mask_png(mask) -> bytes:
    """A boolean subject mask as a grey PNG (0 background, 255 subject)."""
    buf = io.BytesIO()
    Image.fromarray(mask.astype("uint8") * 255).save(buf, format="PNG")  # 2-D uint8: mode L
    return buf.getvalue()


def export_toybench(out: Path, per_class: int = 4, references: int = 5, seed: int = 2024, size: int = 64) -> Path:
    """Write ToyBench to `out` (JPEG quality 95, as the downscaled DreamBench copy)."""
    subjects = toybench_subjects(per_class, seed)
    truth = {}
    for name, ident in subjects:
        scenes = reference_scenes(name, ident, references, seed)
        for i, scene in enumerate(scenes):
            rendered = render(scene, size)
            buf = io.BytesIO()
            Image.fromarray(rendered.image).save(buf, format="JPEG", quality=95)
            write_bytes(out / name / f"{i:02d}.jpg", buf.getvalue())
            write_bytes(reference_mask_path(out / name / f"{i:02d}.jpg"), mask_png(rendered.mask))
        truth[name] = {"identity": dataclasses.asdict(ident), "references": [dataclasses.asdict(s) for s in scenes]}
    write_text(out / "prompts_and_classes.txt", prompts_and_classes(subjects))
    write_text(out / "ground_truth.json", json.dumps(truth, indent=1))
    return out
