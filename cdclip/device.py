"""The device a command runs on: the default, a check made before anything is built, mixed precision."""

from __future__ import annotations

from typing import Any

__all__ = ["amp_dtype", "check_device", "default_device"]


def amp_dtype(amp: str) -> Any:
    """The compute dtype of a ``TrainConfig.amp`` value: ``None`` for ``"none"``, else bfloat16 / float16."""
    import torch

    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


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
