"""String-addressable registries (methods, datasets, schedulers, metrics, guidance terms).

One small type, as in lm-evaluation-harness / timm: register by decorator, look up by name, and an
unknown name's error lists the known ones.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import UserError

T = TypeVar("T")

# Packages that extend the registries (the toy world: its dataset, backbones, metric and BLIP backend).
# Loaded by name the first time any registry is read, so this bottom layer imports nothing above it;
# third-party packages add theirs under the `persobench.plugins` entry-point group.
BUILTIN_PLUGINS = ("persobench.toyworld.plugin",)
_plugins_loaded = False


def load_plugins() -> None:
    """Import every plugin once (each registers its names as it is imported)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True  # first, so a plugin that reads a registry while importing does not recurse
    for name in BUILTIN_PLUGINS:
        importlib.import_module(name)
    for entry in importlib.metadata.entry_points(group="persobench.plugins"):
        entry.load()


_groups_loaded: set[str] = set()


def load_group(group: str) -> None:
    """Import every entry point of one light plugin group once (see `Registry(plugins=...)`)."""
    if group in _groups_loaded:
        return
    _groups_loaded.add(group)
    for entry in importlib.metadata.entry_points(group=group):
        entry.load()


class Registry(Generic[T]):
    def __init__(self, kind: str, builtins: tuple[str, ...] = (), plugins: str | None = "persobench.plugins") -> None:
        """`builtins`: modules that register this registry's built-in names, imported by name on first
        lookup (before the plugins), so a registry defined below them imports nothing above it.
        `plugins`: the entry-point group that extends it. The default, `persobench.plugins`, is the packages
        that extend everything (the toy world: datasets, backbones, a metric, a BLIP backend), which import
        models; a registry that config validation reads (guidance terms, metric presets) names a light group
        of its own instead, or None, so checking a config never imports a model library."""
        self.kind = kind
        self._items: dict[str, T] = {}
        self._docs: dict[str, str] = {}
        self._builtins = builtins
        self._plugins = plugins
        self._builtins_loaded = self._loaded = False

    def _load_builtins(self) -> None:
        if not self._builtins_loaded:
            self._builtins_loaded = True  # first, so a builtin that registers into this registry does not recurse
            for name in self._builtins:
                importlib.import_module(name)

    def _load(self) -> None:
        self._load_builtins()
        if self._loaded:
            return
        self._loaded = True
        if self._plugins == "persobench.plugins":
            load_plugins()
        elif self._plugins:
            load_group(self._plugins)

    def register(self, name: str, doc: str | None = None) -> Callable[[T], T]:
        self._load_builtins()  # the built-ins first, whoever registers first: their order is the registry's order

        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            text = doc or (getattr(obj, "__doc__", None) or "").strip()
            self._docs[name] = text.splitlines()[0] if text else ""
            return obj

        return add

    def unregister(self, name: str) -> T:
        """Remove a name (a test's, or a plugin's being reloaded); returns what it named."""
        self._docs.pop(name, None)
        return self._items.pop(name)

    @contextlib.contextmanager
    def registered(self, name: str, obj: T, doc: str | None = None) -> Iterator[T]:
        """`name` registered for the block's duration, then removed (tests that add a plugin of their own)."""
        self._load()  # the built-ins and plugins first, so they register in their order and stay loaded
        self.register(name, doc)(obj)
        try:
            yield obj
        finally:
            self.unregister(name)

    def get(self, name: str) -> T:
        self._load()
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "(none registered)"
            raise UserError(f"unknown {self.kind} {name!r}; known {self.kind}s: {known}") from None

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def values(self) -> list[T]:
        """Everything registered, in registration order (built-ins, then plugins, then later additions)."""
        self._load()
        return list(self._items.values())

    def ordered_names(self) -> list[str]:
        """Names in registration order (built-ins, then plugins, then later additions)."""
        self._load()
        return list(self._items)

    def describe(self) -> dict[str, str]:
        return {n: self._docs[n] for n in self.names()}

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items
