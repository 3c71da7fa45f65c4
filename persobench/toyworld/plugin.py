"""Where the toy world plugs into persobench, and the only place: the `toybench` dataset, the `toy-clip` /
`toy-dino` backbones, the `oracle` metric and the `toy` BLIP-Diffusion backend, registered into the
registries they extend. Nothing outside `persobench/toyworld/` imports its internals; the registries
load this module the first time a name is looked up (`persobench/core/registry.py`, BUILTIN_PLUGINS).
"""

from __future__ import annotations

from ..core.config import DatasetConfig
from ..core.sources import ASSETS
from ..datasets import datasets, load_dreambench
from ..methods.blip_diffusion import backends as blip_backends
from ..reports.metrics.backbones import FolderSpec, backbones
from ..reports.metrics.scores import Column, MetricSpec, metrics
from .blip_backend import ToyBlip
from .oracle_metric import oracle

TOYBENCH = ASSETS / "toybench"


@datasets.register("toybench")
def _toybench(cfg: DatasetConfig):
    """ToyBench: 20 toy-world subjects in DreamBench's layout, shipped with persobench."""
    return load_dreambench(cfg.path or TOYBENCH, cfg.live_classes, name="toybench")


backbones.register("toy-clip", "the toy world's open_clip model (embedded)")(FolderSpec("clip", ASSETS / "clip"))
backbones.register("toy-dino", "the toy world's timm ViT (embedded)")(FolderSpec("dino", ASSETS / "dino"))


metrics.register("oracle", "toy world only: oracle identity (strict, per attribute) and context accuracy vs ToyBench's "
                 "ground truth; the secondary colour counts only where the prompt lets it show")(
    MetricSpec("oracle", oracle, (Column("oracle_identity", "Oracle-ID", tolerance=0.1),
                                  Column("oracle_attributes", "Oracle-Attr", tolerance=0.05),
                                  Column("oracle_context", "Oracle-Ctx", tolerance=0.1)), needs_ground_truth=True))
blip_backends.register("toy", "the toy world's subject encoder (embedded, or encoder=<folder>)")(ToyBlip)
