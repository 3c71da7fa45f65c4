"""The `oracle` metric: the toy world's ground truth read back off generated images (registered in plugin.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..core.errors import UserError
from ..reports.metrics.scores import ScoringContext
from .evaluate import load_oracle, oracle_read
from .render import secondary_drawn
from .training.common import to_tensor
from .world import ACCESSORIES, COLOURS, CONTEXTS, Identity


def oracle(ctx: ScoringContext, frame: pd.DataFrame) -> pd.DataFrame:
    """Oracle identity (strict, per attribute) and context accuracy against ToyBench's ground truth; the
    secondary colour counts only where the prompt lets it show."""
    if ctx.ground_truth is None:
        raise UserError("metric 'oracle' needs the toy world's ground truth (ground_truth.json): use dataset.name=toybench "
                        "or remove 'oracle' from metrics.names")
    model, heads = load_oracle(Path(ctx.cfg.oracle_path)) if ctx.cfg.oracle_path else load_oracle()
    arr = np.stack([np.asarray(im.convert("RGB").resize((64, 64), Image.BICUBIC)) for im in ctx.images])
    read = oracle_read(model, heads, to_tensor(arr))
    phrase_to_context = {v: k for k, v in CONTEXTS.items() if v}
    identity, attributes, context = [], [], []
    for i, row in enumerate(frame.itertuples()):
        truth = ctx.ground_truth[row.subject]["identity"]
        recolour = next((c for c in COLOURS if row.prompt_template.startswith(f"a {c} ")), None)
        accessory = next((a for a, phrase in ACCESSORIES.items() if phrase and row.prompt_template.endswith(phrase)), "none")
        want = {"class": truth["cls"], "secondary": truth["secondary"], "pattern": truth["pattern"],
                "primary": recolour or truth["primary"]}
        if not secondary_drawn(Identity(**truth), recolour or "none", accessory):
            del want["secondary"]  # e.g. "a purple ..." of a subject whose trim is purple: nothing to read
        hits = [read[k][i] == v for k, v in want.items()]
        identity.append(float(all(hits)))  # strict: class, both colours and pattern all right
        attributes.append(float(np.mean(hits)))  # graded: the fraction of them right
        ctx_name = next((name for phrase, name in phrase_to_context.items() if row.prompt_template.endswith(phrase)), None)
        context.append(float(read["context"][i] == ctx_name) if ctx_name else np.nan)
    return pd.DataFrame({"oracle_identity": identity, "oracle_attributes": attributes, "oracle_context": context})
