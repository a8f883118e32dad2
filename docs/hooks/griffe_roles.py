"""Griffe extension: Sphinx roles in docstrings (``:func:`x```) render as code spans.

cdclip's docstrings use Google sections with a few reStructuredText roles. Markdown has no roles,
so ``:class:`~cdclip.affinity.cda.CDAModule``` becomes ```CDAModule``` (the ``~`` keeps the last
part, as in Sphinx) and ``:func:`cda_refine``` becomes ```cda_refine```. The docstrings themselves
are not changed.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|exc|obj|const):`(~?)([^`]+)`")


def _replace(match: re.Match[str]) -> str:
    short, target = match.group(1), match.group(2).strip()
    if short:
        target = target.rsplit(".", 1)[-1]
    return f"`{target}`"


class SphinxRoles(griffe.Extension):
    """Rewrite roles when each object is created, before any docstring is parsed."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None and ":`" in obj.docstring.value:
            obj.docstring.value = ROLE.sub(_replace, obj.docstring.value)
