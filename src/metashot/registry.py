"""One registry shape for everything constructible by name: algorithms, backbones, heads, datasets, batch
sources and evaluation settings.

A :class:`Registry` maps a name to an object (a class or a factory function) and the metadata it was
registered with (``@REG.register("name", key=value, ...)``; the keys a registry accepts, with their defaults,
are fixed when it is made). A second object under a taken name is an error in every registry; registering
the same object again is not (a module imported twice). Shared code reads the metadata instead of naming
entries: a dataset's modality, whether it takes an image spec, its standard number of test episodes.

``lazy`` entries name a module that registers them when imported (e.g. the ``timm`` backbone, whose module
imports timm): it is imported on the first lookup of that name, so the registry's own module never imports it.
This module imports nothing from metashot (and no torch): any part of the library may use it.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered object and its metadata (every key of the registry, defaults filled in)."""

    name: str
    obj: T
    meta: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, key: str) -> Any:
        if key == "meta":
            raise AttributeError(key)
        try:
            return self.meta[key]
        except KeyError:
            raise AttributeError(key) from None


class Registry(Generic[T]):
    """Name -> object with metadata; duplicate names are an error.

    Args:
        kind: what is registered, for messages ("algorithm", "dataset", ...).
        defaults: the metadata keys entries may carry, with their default values; any other key is an error.
        lazy: names registered by importing a module (name -> module), imported on first lookup.
        on_lookup: called once before the first lookup (e.g. import the package that registers the built-ins).
    """

    def __init__(self, kind: str, defaults: dict[str, Any] | None = None, lazy: dict[str, str] | None = None,
                 on_lookup: Callable[[], Any] | None = None) -> None:
        self.kind = kind
        self.defaults = dict(defaults or {})
        self.lazy = dict(lazy or {})
        self._on_lookup = on_lookup
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, **meta: Any) -> Callable[[T], T]:
        """Decorator: register the decorated object as ``name`` with ``meta``."""
        def deco(obj: T) -> T:
            self.add(name, obj, **meta)
            return obj
        return deco

    def add(self, name: str, obj: T, **meta: Any) -> Entry[T]:
        """Register ``obj`` as ``name``. Raises ValueError for a taken name or an unknown metadata key."""
        unknown = sorted(set(meta) - set(self.defaults))
        if unknown:
            raise ValueError(f"{self.kind} {name!r}: unknown metadata {unknown}; a {self.kind} may declare "
                             f"{sorted(self.defaults)}")
        old = self._entries.get(name)
        if old is not None and old.obj is not obj:
            raise ValueError(f"{self.kind} name {name!r} is already registered by {_label(old.obj)}; "
                             f"choose another name for {_label(obj)}")
        entry = Entry(name, obj, {**self.defaults, **meta})
        self._entries[name] = entry
        return entry

    def _ready(self, name: str | None = None) -> None:
        if self._on_lookup is not None:
            hook, self._on_lookup = self._on_lookup, None
            hook()
        if name is not None and name not in self._entries and name in self.lazy:
            importlib.import_module(self.lazy[name])

    def entry(self, name: str) -> Entry[T]:
        """The entry of ``name``. Raises ValueError naming the registered ones if there is none."""
        self._ready(name)
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; available: {self.names()}")
        return self._entries[name]

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def names(self) -> list[str]:
        """Every name, the lazy ones included, sorted."""
        self._ready()
        return sorted(set(self._entries) | set(self.lazy))

    def entries(self) -> Iterator[Entry[T]]:
        """The entries registered so far (lazy ones once imported), in name order."""
        self._ready()
        return iter([self._entries[n] for n in sorted(self._entries)])

    def __contains__(self, name: object) -> bool:
        self._ready()
        return name in self._entries or name in self.lazy


def call_with(fn: Callable[..., T], args: dict[str, Any], what: Callable[[TypeError], str], *pos: Any) -> T:
    """``fn(*pos, **args)``, after checking that ``fn``'s signature takes them (if not: ValueError with the
    message ``what(error)``). An error raised inside ``fn`` (a constructor's bug too) passes unchanged."""
    try:
        inspect.signature(fn).bind(*pos, **args)
    except TypeError as e:
        raise ValueError(what(e)) from e
    return fn(*pos, **args)


def _label(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"
