"""Random-weight twins of the real models (SD 1.5, DINO ViT-S/16 and /8, CLIP ViT-B/32, BLIP-Diffusion) in their real
on-disk layouts, built offline from the published configs; see `builders.py` for what loads through which path."""

from .builders import (
    MARKER,
    REDUCED,
    TWINS,
    TwinSpec,
    build_twin,
    ensure_twin,
    is_complete,
    is_twin,
    parameter_counts,
    twin_dir_name,
    twin_info,
)

__all__ = ["MARKER", "REDUCED", "TWINS", "TwinSpec", "build_twin", "ensure_twin", "is_complete", "is_twin", "parameter_counts",
           "twin_dir_name", "twin_info"]
