"""Lazy attributes of a package (PEP 562): one helper instead of a copied ``__getattr__`` per namespace.

A namespace lists ``public name -> defining module`` and gets its ``__getattr__`` / ``__dir__``
from :func:`lazy_attributes`, so that importing it costs nothing until a name is used (``import
cdclip`` must not import open_clip, timm or torchvision's transforms).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["lazy_attributes"]


def lazy_attributes(
    module_name: str, table: Mapping[str, str], submodules: Iterable[str] = ()
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for the module ``module_name`` resolving ``table`` on first access.

    Args:
        module_name: the namespace's ``__name__``.
        table: public name -> the module that defines it.
        submodules: names resolved to ``module_name.<name>`` (imported on first access).

    A resolved value is cached in the namespace, so later lookups skip ``__getattr__``.
    """
    children = frozenset(submodules)

    def __getattr__(name: str) -> Any:
        if name in table:
            value = getattr(importlib.import_module(table[name]), name)
            setattr(sys.modules[module_name], name, value)  # cache: later lookups skip __getattr__
            return value
        if name in children:
            return importlib.import_module(f"{module_name}.{name}")
        raise AttributeError(f"module {module_name!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[module_name])) | set(table) | children)

    return __getattr__, __dir__
