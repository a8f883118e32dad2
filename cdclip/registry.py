"""A small registry of named components.

Every reusable piece of ``cdclip`` (kernels, affinities, CAM methods, losses, refiners, backbones)
is registered under a short name so that configuration files and other pipelines can ask for it by
name: ``cdclip.create("cda", fusion="replace")``. The registry is a convenience, never the only
way in: every class stays importable directly.

Design (after timm's registry, deliberately smaller):

* one plain dictionary from name to factory; no scopes, no config language;
* built-in components are imported lazily, only when a name is first looked up, so that
  ``import cdclip`` stays light;
* third-party packages extend the registry through the entry-point group ``cdclip.plugins``; each
  entry point names a module (or a callable) that registers its components when loaded. Plugins
  are loaded on the first miss, a broken plugin only warns, and ``CDCLIP_NO_PLUGINS=1`` turns
  autoloading off;
* prefixed names (``"openclip:ViT-B-16@openai"``, ``"timm:vit_base_patch16_224.dino"``) are
  resolved by a registered *prefix factory* that receives the part after the colon.

Clashes. A registration from outside the built-in modules (your code, a plugin) first loads the
built-ins, so a name that clashes with a built-in raises at once, naming the existing entry. With
``override=True`` the new entry replaces the built-in and keeps winning: a built-in module that
registers again later (a re-import, ``importlib.reload``) does not raise and does not take the name
back. :meth:`Registry.unregister` of the override restores the built-in. Unknown names, compared
case-insensitively, get a "Did you mean" hint.
"""

from __future__ import annotations

import difflib
import importlib
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

__all__ = [
    "ENTRY_POINT_GROUP",
    "ComponentInfo",
    "Registry",
    "create",
    "get",
    "list_components",
    "register",
    "registry",
]

ENTRY_POINT_GROUP = "cdclip.plugins"
NO_PLUGINS_ENV = "CDCLIP_NO_PLUGINS"

F = TypeVar("F", bound=Callable[..., Any])

# Modules that register the built-in components. They are imported on the first lookup, not at
# ``import cdclip``; a module whose optional dependency is missing is skipped (its names then
# stay unknown, and the KeyError says why).
BUILTIN_MODULES: tuple[str, ...] = (
    "cdclip.kernels.js",
    "cdclip.affinity.transition",
    "cdclip.affinity.cda",
    "cdclip.prototypes.superclass",
    "cdclip.losses.boundary",
    "cdclip.losses.segmentation",
    "cdclip.losses.affinity",
    "cdclip.refine.par",
    "cdclip.refine.crf",
    "cdclip.cam.gradcam",
    "cdclip.cam.patch_text",
    "cdclip.backbones.openclip",
    "cdclip.backbones.dino",
    "cdclip.pipeline.decoder",
)


@dataclass
class _Entry:
    factory: Callable[..., Any]
    kind: str
    doc: str
    origin: str = "built-in"  # "built-in", "plugin <entry point>" or "user"


class ComponentInfo(NamedTuple):
    """One registry entry as :meth:`Registry.entries` lists it (``name`` is ``"prefix:<name>"`` for prefixes)."""

    name: str
    kind: str
    doc: str
    origin: str

    @property
    def is_plugin(self) -> bool:
        """Registered by code outside cdclip's built-in modules (an entry-point plugin or the user)."""
        return self.origin != "built-in"


@dataclass
class Registry:
    """Name → factory mapping with lazy built-ins and entry-point plugins.

    Args:
        builtin_modules: modules imported on the first lookup to register built-ins.
        entry_point_group: importlib.metadata group scanned for plugins on the first miss.
    """

    builtin_modules: tuple[str, ...] = BUILTIN_MODULES
    entry_point_group: str = ENTRY_POINT_GROUP
    _entries: dict[str, _Entry] = field(default_factory=dict)
    _prefixes: dict[str, _Entry] = field(default_factory=dict)
    _builtins_loaded: bool = False
    _plugins_loaded: bool = False
    _import_errors: dict[str, str] = field(default_factory=dict)
    # built-in entries replaced by an override, restored by unregister: {(prefix?, name): entry}
    _shadowed: dict[tuple[bool, str], _Entry] = field(default_factory=dict)
    _loading_plugin: str | None = None

    # ------------------------------------------------------------------ registration
    def register(
        self,
        name: str | None = None,
        obj: F | None = None,
        *,
        kind: str = "component",
        prefix: bool = False,
        override: bool = False,
    ) -> Any:
        """Register ``obj`` under ``name``; usable as a decorator.

        Args:
            name: the lookup name (defaults to ``obj.__name__``). With ``prefix=True`` it is a prefix
                such as ``"openclip"`` and the factory receives the text after ``"openclip:"`` as
                its first argument.
            obj: the class or function; omit to use ``register`` as a decorator.
            kind: a free-form tag shown by :func:`list_components` (``"kernel"``, ``"loss"`` ...).
            prefix: register a prefix factory instead of a plain name.
            override: replace an existing entry instead of raising.

        Raises:
            ValueError: if the name is already registered and ``override`` is false.
        """

        def _do(target: F) -> F:
            key = name if name is not None else getattr(target, "__name__", None)
            if not isinstance(key, str) or not key:
                raise ValueError(f"register: name must be a non-empty string, got {key!r}")
            if ":" in key and not prefix:
                raise ValueError(f"register: name {key!r} must not contain ':' (use prefix=True for prefixes)")
            builtin = self._is_builtin(target)
            if not builtin:
                self._load_builtins()  # a clash with a built-in must show now, not break a later import
            doc = (getattr(target, "__doc__", None) or "").strip().split("\n")[0]
            entry = _Entry(target, kind, doc, "built-in" if builtin else self._user_origin())
            self._insert(key, entry, prefix, override)
            return target

        if obj is not None:
            return _do(obj)
        return _do

    def _is_builtin(self, target: object) -> bool:
        return getattr(target, "__module__", None) in self.builtin_modules

    def _user_origin(self) -> str:
        return f"plugin {self._loading_plugin}" if self._loading_plugin else "user"

    def _insert(self, key: str, entry: _Entry, prefix: bool, override: bool) -> None:
        table = self._prefixes if prefix else self._entries
        existing = table.get(key)
        if existing is None or existing.factory is entry.factory:
            table[key] = entry
            return
        if entry.origin == "built-in" and existing.origin != "built-in":
            # a built-in module registering (again) under a name the user overrode: the user wins
            self._shadowed[(prefix, key)] = entry
            return
        if entry.origin == "built-in" and _same_definition(existing.factory, entry.factory):
            table[key] = entry  # importlib.reload of a built-in module: the new class object replaces the old
            return
        if not override:
            raise ValueError(
                f"register: {'prefix' if prefix else 'name'} {key!r} is already registered to "
                f"{_qualified(existing.factory)} ({existing.origin}); pass override=True to replace it"
            )
        if existing.origin == "built-in":
            self._shadowed[(prefix, key)] = existing
        table[key] = entry

    def unregister(self, name: str) -> None:
        """Remove a plain or prefix entry (mostly for tests); an overridden built-in comes back."""
        for prefix, table in ((False, self._entries), (True, self._prefixes)):
            removed = table.pop(name, None)
            shadowed = self._shadowed.pop((prefix, name), None)
            if removed is not None and shadowed is not None:
                table[name] = shadowed

    # ------------------------------------------------------------------ lookup
    def _load_builtins(self) -> None:
        if self._builtins_loaded:
            return
        self._builtins_loaded = True  # first: the modules' own registrations must not recurse here
        for module in self.builtin_modules:
            try:
                importlib.import_module(module)
            except ImportError as err:  # an optional dependency is missing
                self._import_errors[module] = f"{type(err).__name__}: {err}"

    def load_plugins(self, force: bool = False) -> list[str]:
        """Load third-party plugins from the ``cdclip.plugins`` entry-point group.

        Each entry point may name a module (imported for its registration side effects) or a
        callable (called with this registry). A plugin that fails to load emits a warning and is
        skipped. Returns the names of the plugins that loaded.
        """
        if self._plugins_loaded and not force:
            return []
        self._plugins_loaded = True
        from importlib.metadata import entry_points

        loaded = []
        self._load_builtins()  # a plugin's clash with a built-in is reported as that plugin's failure
        for ep in entry_points(group=self.entry_point_group):
            try:
                self._loading_plugin = ep.name
                try:
                    target = ep.load()
                    if callable(target):  # a module registers on import; a callable gets the registry
                        target(self)
                finally:
                    self._loading_plugin = None
                loaded.append(ep.name)
            except Exception as err:  # a broken plugin must never break the rest
                warnings.warn(
                    f"cdclip: plugin {ep.name!r} ({ep.value}) failed to load and was skipped: "
                    f"{type(err).__name__}: {err}",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return loaded

    def _autoload_allowed(self) -> bool:
        return os.environ.get(NO_PLUGINS_ENV, "").strip().lower() not in {"1", "true", "yes", "on"}

    def _find(self, name: str) -> tuple[_Entry, str | None] | None:
        if ":" in name:
            head, _, tail = name.partition(":")
            entry = self._prefixes.get(head)
            return (entry, tail) if entry is not None else None
        entry = self._entries.get(name)
        return (entry, None) if entry is not None else None

    def get(self, name: str) -> Callable[..., Any]:
        """Return the factory registered under ``name``.

        For a prefixed name (``"timm:vit_small_patch16_224.dino"``) the returned callable is the
        prefix factory with the text after the colon bound as its first argument.

        Raises:
            KeyError: unknown name; the message lists close matches and what is registered.
        """
        if not isinstance(name, str):
            raise TypeError(f"get: name must be a str, got {type(name).__name__}")
        found = self._find(name)
        if found is None:
            self._load_builtins()
            found = self._find(name)
        if found is None and self._autoload_allowed():
            self.load_plugins()
            found = self._find(name)
        if found is None:
            raise KeyError(self._unknown_message(name))
        entry, tail = found
        if tail is None:
            return entry.factory
        factory = entry.factory

        def _bound(*args: Any, **kwargs: Any) -> Any:
            return factory(tail, *args, **kwargs)

        _bound.__name__ = name
        _bound.__doc__ = factory.__doc__
        return _bound

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Build the component registered under ``name`` with the given arguments."""
        return self.get(name)(*args, **kwargs)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        try:
            self.get(name)
        except KeyError:
            return False
        return True

    def list_components(self, kind: str | None = None, pattern: str | None = None) -> list[str]:
        """Sorted registered names (prefixes shown as ``"prefix:<name>"``).

        Args:
            kind: keep only entries of this kind.
            pattern: keep only names matching this ``fnmatch`` pattern.
        """
        import fnmatch

        self._load_builtins()
        if self._autoload_allowed():
            self.load_plugins()
        names = [n for n, e in self._entries.items() if kind is None or e.kind == kind]
        names += [f"{n}:<name>" for n, e in self._prefixes.items() if kind is None or e.kind == kind]
        if pattern is not None:
            names = [n for n in names if fnmatch.fnmatch(n, pattern)]
        return sorted(names)

    def describe(self) -> dict[str, tuple[str, str]]:
        """``{name: (kind, first docstring line)}`` for every entry (built-ins and plugins)."""
        return {info.name: (info.kind, info.doc) for info in self.entries()}

    def entries(self, kind: str | None = None) -> list[ComponentInfo]:
        """Every entry with its kind, docstring summary and origin, sorted by name.

        Loads the built-ins and (unless ``CDCLIP_NO_PLUGINS`` is set) the entry-point plugins first.
        """
        self._load_builtins()
        if self._autoload_allowed():
            self.load_plugins()
        rows = [ComponentInfo(n, e.kind, e.doc, e.origin) for n, e in self._entries.items()]
        rows += [ComponentInfo(f"{n}:<name>", e.kind, e.doc, e.origin) for n, e in self._prefixes.items()]
        return sorted((r for r in rows if kind is None or r.kind == kind), key=lambda r: r.name)

    def _close_matches(self, name: str, known: list[str]) -> list[str]:
        """Up to three known names close to ``name``, compared case-insensitively (exact case-folds first)."""
        folded: dict[str, list[str]] = {}
        for k in known:
            folded.setdefault(k.lower(), []).append(k)
        target = name.lower() if ":" not in name else name.partition(":")[0].lower() + ":"
        close = difflib.get_close_matches(target, list(folded), n=3, cutoff=0.5)
        return [k for c in close for k in folded[c]][:3]

    def _unknown_message(self, name: str) -> str:
        known = sorted(self._entries) + [f"{p}:" for p in sorted(self._prefixes)]
        close = self._close_matches(name, known)
        msg = f"unknown cdclip component {name!r}."
        if ":" in name:
            head = name.partition(":")[0]
            msg = f"unknown cdclip component prefix {head!r} in {name!r}."
        if close:
            msg += f" Did you mean {', '.join(repr(c) for c in close)}?"
        msg += f" Registered: {', '.join(known) if known else '(nothing)'}."
        if self._import_errors:
            skipped = "; ".join(f"{m} ({e})" for m, e in self._import_errors.items())
            msg += f" Built-in modules skipped for missing dependencies: {skipped}."
        if not self._autoload_allowed():
            msg += f" Plugin autoloading is off ({NO_PLUGINS_ENV} is set)."
        return msg


def _qualified(obj: object) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', obj)}"


def _same_definition(a: object, b: object) -> bool:
    """The same module and qualified name: one class defined twice by a module reload."""
    return _qualified(a) == _qualified(b) and getattr(a, "__qualname__", None) is not None


registry = Registry()


def register(
    name: str | None = None,
    obj: Any = None,
    *,
    kind: str = "component",
    prefix: bool = False,
    override: bool = False,
) -> Any:
    """Register a component in the global registry (see :meth:`Registry.register`)."""
    return registry.register(name, obj, kind=kind, prefix=prefix, override=override)


def get(name: str) -> Callable[..., Any]:
    """Factory registered under ``name`` in the global registry."""
    return registry.get(name)


def create(name: str, *args: Any, **kwargs: Any) -> Any:
    """Build a registered component: ``cdclip.create("cda", fusion="replace")``."""
    return registry.create(name, *args, **kwargs)


def list_components(kind: str | None = None, pattern: str | None = None) -> list[str]:
    """Names of every registered component, optionally filtered by kind or fnmatch pattern."""
    return registry.list_components(kind=kind, pattern=pattern)
