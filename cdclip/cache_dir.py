"""Where cdclip keeps what it can rebuild (compiled kernels, text classifiers): one folder for all."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CACHE_ENV", "cache_dir"]

CACHE_ENV = "CDCLIP_CACHE_DIR"


def cache_dir() -> Path:
    """``$CDCLIP_CACHE_DIR``, else ``$XDG_CACHE_HOME/cdclip``, else ``~/.cache/cdclip``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cdclip"
