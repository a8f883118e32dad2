"""mkdocs hook: the functional API page lists every name of ``cdclip.functional.__all__``.

``cdclip.functional`` resolves its names lazily, which a static reader of the source cannot follow,
so the marker ``<!-- cdclip:functional-api -->`` is replaced by one mkdocstrings ``:::`` block per
function, under the module that defines it. mkdocstrings then renders their docstrings.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from _common import replace_marker

MARKER = "cdclip:functional-api"


def render() -> str:
    import cdclip.functional as functional

    blocks = []
    for name in sorted(functional.__all__):
        module = getattr(functional, name).__module__
        blocks += [f"::: {module}.{name}", ""]
    return "\n".join(blocks)


def on_page_markdown(markdown: str, **kwargs) -> str:
    return replace_marker(markdown, MARKER, render)
