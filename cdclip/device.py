"""The device a command runs on: the default, and a check made before anything is built."""

from __future__ import annotations

__all__ = ["check_device", "default_device"]


def default_device() -> str:
    """``"cuda"`` when a CUDA GPU is usable, else ``"cpu"``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str, name: str = "device") -> str:
    """Return ``device`` if this machine has it; else raise ``ValueError`` naming ``name``.

    Accepts ``cpu``, ``cuda``, ``cuda:N`` and ``mps``, as ``torch.device`` spells them.
    """
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"{name}: expected cpu, cuda or cuda:N, got {device!r}") from err
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name}: {device!r} asked for, but this machine has no usable CUDA GPU; use cpu")
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise ValueError(f"{name}: {device!r} asked for, but this machine has {count} CUDA device(s)")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{name}: 'mps' asked for, but it is not available here; use cpu")
    return device
