"""Where a base model lives: the embedded toy world, a diffusers folder, or a hub id in the local
cache. Deliberately free of torch / diffusers imports, so a missing model fails in well under a
second, before anything heavy loads."""

from __future__ import annotations

import logging
from pathlib import Path

from .errors import UserError

logger = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "toyworld"
EMBEDDED = {"toyworld": ASSETS / "sd"}
REQUIRED = ("model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler")
# The marker file of a random-weight twin (persobench/twins: builders.MARKER). A fingerprint of weights in a folder
# holding it starts with TWIN_PREFIX, so no cache key or report of a twin's is ever a real model's.
TWIN_MARKER = "persobench_twin.json"
TWIN_PREFIX = "twin-"


def twin_folder(path: Path) -> Path | None:
    """The twin folder holding `path` (the folder itself, or a file or folder up to two levels inside it), or None."""
    path = Path(path)
    for folder in ([path] if path.is_dir() else []) + list(path.parents)[:2]:
        if (folder / TWIN_MARKER).is_file():
            return folder
    return None


def resolve_source(source: str, local_files_only: bool = True) -> Path:
    """A folder holding a diffusers Stable Diffusion pipeline, or a clear error saying what to pass."""
    if source in EMBEDDED:
        path = EMBEDDED[source]
        if not (path / "model_index.json").is_file():
            raise UserError(
                f"the embedded model '{source}' is not in this install ({path}); "
                "train it with `persobench toyworld train --stage vae,t2i` or pass model.source=<diffusers folder>"
            )
        return path
    path = Path(source).expanduser()
    if path.exists() or source.startswith((".", "/", "~")) or source.count("/") != 1:
        if not path.is_dir():
            raise UserError(f"model folder '{source}' does not exist; pass model.source=<diffusers folder> or a hub id")
        return _check_folder(path, source)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    try:
        local = snapshot_download(source, local_files_only=local_files_only)
    except LocalEntryNotFoundError as e:  # no complete snapshot cached (and, when downloads are allowed, the hub unreachable)
        raise UserError(
            f"model '{source}' is not in the local Hugging Face cache; download it on a connected machine "
            f"(`hf download {source}`) or pass model.source=/path/to/diffusers/folder"
        ) from e
    except HFValidationError as e:
        raise UserError(f"model.source '{source}' is not a folder and not a valid Hugging Face hub id; "
                        "pass model.source=<diffusers folder> or <org>/<name>") from e
    except HfHubHTTPError as e:  # model.local_files_only=false: the hub refused (repository not found, gated, no access)
        raise UserError(f"model '{source}' could not be downloaded ({type(e).__name__}); check the id and your access, "
                        "or pass model.source=<diffusers folder>") from e
    logger.info("model.source %r is the cached snapshot %s", source, local)
    return _check_folder(Path(local), source)


def _check_folder(path: Path, source: str) -> Path:
    missing = [p for p in REQUIRED if not (path / p).exists()]
    if missing:
        raise UserError(
            f"model folder '{source}' is not a diffusers Stable Diffusion pipeline (missing {', '.join(missing)}); "
            "pass a folder saved with StableDiffusionPipeline.save_pretrained"
        )
    return path


