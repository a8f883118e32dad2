"""Shared by the mkdocs hooks in this folder: make the repository importable, replace markers."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # the checkout's cdclip, also without `pip install -e .`
    sys.path.insert(0, str(REPO))


def replace_marker(markdown: str, marker: str, render) -> str:
    """``markdown`` with the line ``<!-- marker -->`` replaced by ``render()`` (called only if present)."""
    tag = f"<!-- {marker} -->"
    if tag not in markdown:
        return markdown
    return markdown.replace(tag, render())
