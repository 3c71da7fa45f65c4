"""Atomic file writes: a temp file in the target's folder, then `os.replace`.

An interrupted run never leaves a half-written image or table: a reader sees the old file or the
new one. Temp names carry the pid so two writers never share one.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError

TEMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yields a temp path beside `path`; on success it replaces `path`, on error it is removed.

    A full disk or a read-only store becomes a one-line `UserError` naming the file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError(f"no space left on the device writing '{path}'; free space or pass store=<a larger disk>") from None
        if e.errno in (errno.EACCES, errno.EROFS, errno.EPERM, errno.ENOTDIR, errno.EEXIST, errno.ENAMETOOLONG):
            raise UserError(f"cannot write '{path}' ({os.strerror(e.errno)}); pass store=<a writable folder>") from None
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def remove_stale_temps(root: Path) -> int:
    """Delete temp files left by killed writers (their pid is gone); returns how many."""
    removed = 0
    for p in root.rglob(f".*{TEMP_SUFFIX}") if root.is_dir() else []:
        pid = p.name.rsplit(".", 2)[-2]
        if pid.isdigit() and not pid_alive(int(pid)):
            p.unlink(missing_ok=True)
            removed += 1
    return removed


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_yaml(path: Path, obj: Any) -> None:
    write_text(path, yaml.safe_dump(obj, sort_keys=False))


def write_png(path: Path, image) -> None:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    write_bytes(path, buf.getvalue())


def write_parquet(path: Path, frame) -> None:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)
