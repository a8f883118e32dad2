"""Test session set-up: offline, deterministic, CPU, small."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

# Never touch the network: open_clip and timm go through huggingface_hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("CDCLIP_NO_PLUGINS", "0")
# Native kernels are built into a cache private to this test session (removed at exit), so the
# tests always exercise a fresh build and leave nothing in the user's cache.
if "CDCLIP_CACHE_DIR" not in os.environ:
    os.environ["CDCLIP_CACHE_DIR"] = tempfile.mkdtemp(prefix="cdclip-test-cache-")
    atexit.register(shutil.rmtree, os.environ["CDCLIP_CACHE_DIR"], ignore_errors=True)

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _sample_data_root() -> Path:
    """The real VOC/COCO samples: ``../shared/data`` beside the checkout, else the shipped copy."""
    env = os.environ.get("CDCLIP_SAMPLE_DATA")
    for candidate in (Path(env) if env else None, REPO.parent / "shared" / "data", REPO / "examples" / "data"):
        if candidate is not None and (candidate / "VOC2012" / "JPEGImages").is_dir():
            return candidate
    raise FileNotFoundError("no sample data: expected ../shared/data or examples/data with VOC2012/ and coco/")


@pytest.fixture(scope="session")
def data_root() -> Path:
    return _sample_data_root()


@pytest.fixture(scope="session")
def voc_root(data_root: Path) -> Path:
    return data_root / "VOC2012"


@pytest.fixture(scope="session")
def coco_root(data_root: Path) -> Path:
    return data_root / "coco"


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def tiny_backbones():
    """``tinyclip-cli:<any>`` and ``tinydino-cli:<any>`` registered for the test (see ``cli_driver.py``)."""
    from cli_driver import register_tiny_backbones

    from cdclip.registry import registry

    register_tiny_backbones()
    yield
    registry.unregister("tinyclip-cli")
    registry.unregister("tinydino-cli")
