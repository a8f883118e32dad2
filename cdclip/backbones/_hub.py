"""Offline detection for pretrained weights, shared by the open_clip and timm backbones.

Both libraries download through huggingface_hub, which retries for about a minute when the
machine has no network. Before asking them for weights that are not cached, the backbones call
:func:`hub_unavailable_reason`: it answers from the offline flags at once, else after one short TCP
connect, so that an offline request fails within seconds with a message saying how to pass a
local file.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from urllib.parse import urlparse

__all__ = [
    "CONNECT_TIMEOUT_S",
    "PretrainedWeightsError",
    "cached_hub_file",
    "hub_unavailable_reason",
    "is_offline",
]

# Seconds allowed to reach the Hugging Face endpoint before declaring the machine offline.
CONNECT_TIMEOUT_S = 3.0
_TRUE = {"1", "true", "yes", "on"}


class PretrainedWeightsError(RuntimeError):
    """Weights were requested that can be neither found locally, downloaded nor loaded."""


def is_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TIMM_OFFLINE``) is set, as huggingface_hub reads it."""
    flags = [os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TIMM_OFFLINE", "")]
    try:
        from huggingface_hub import constants

        flags.append("1" if constants.HF_HUB_OFFLINE else "")
    except ImportError:  # pragma: no cover - huggingface_hub comes with timm and open_clip
        pass
    return any(f.strip().lower() in _TRUE for f in flags)


def _hub_reachable(timeout: float) -> bool:
    """One short TCP connect to the hub; a proxy setting skips the probe (it cannot be judged here)."""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    parsed = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def hub_unavailable_reason(timeout: float = CONNECT_TIMEOUT_S) -> str | None:
    """Why weights cannot be downloaded now (``None`` if the hub looks reachable)."""
    if is_offline():
        return "offline (HF_HUB_OFFLINE is set)"
    if not _hub_reachable(timeout):
        return f"the Hugging Face hub is unreachable (no connection within {timeout:g} s)"
    return None


def cached_hub_file(repo_id: str, filenames: Iterable[str], cache_dir: str | None = None, revision: str | None = None) -> str | None:
    """Path of the first of ``filenames`` already in the Hugging Face cache, or None. Never networks."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return None
    for filename in filenames:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=revision)
        if isinstance(found, str) and os.path.isfile(found):
            return found
    return None
