"""persobench: a benchmark harness for text-to-image personalization.

From Python (see docs/python_api.md): `persobench.load_config`, `persobench.run` -> `RunResult`,
`persobench.fit` -> `FittedSubject` (`.sample(template, n, guidance)` -> PIL images). They are loaded on first
use, so `import persobench` (and the CLI) stay light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FittedSubject", "RunResult", "UserError", "fit", "load_config", "run"]


def __getattr__(name: str) -> Any:
    if name == "UserError":
        from .core.errors import UserError

        return UserError
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'persobench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
