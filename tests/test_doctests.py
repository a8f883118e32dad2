"""The ``>>>`` examples in the docstrings of the public components run and show what they print.

Every ``nn.Module`` exported from ``cdclip`` carries a short example (CPU, seeded, small tensors);
this test runs the doctests of the modules that define them.
"""

from __future__ import annotations

import doctest
import importlib
import warnings

import pytest
import torch
from torch import nn

import cdclip


def _public_modules() -> dict[str, type]:
    """``name -> class`` of every ``nn.Module`` subclass ``cdclip`` exports."""
    out: dict[str, type] = {}
    for name in cdclip.__all__:
        value = getattr(cdclip, name)
        if isinstance(value, type) and issubclass(value, nn.Module):
            out[name] = value
    return out


PUBLIC_MODULES = _public_modules()
DEFINING_MODULES = sorted({cls.__module__ for cls in PUBLIC_MODULES.values()})


def test_every_public_module_has_an_example() -> None:
    missing = [name for name, cls in PUBLIC_MODULES.items() if ">>>" not in (cls.__doc__ or "")]
    assert not missing, f"public nn.Modules without a >>> example: {missing}"


@pytest.mark.parametrize("module_name", DEFINING_MODULES)
def test_doctests(module_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if module_name == "cdclip.refine.crf":
        pytest.importorskip("pydensecrf")  # the optional extra cdclip[crf]
    monkeypatch.setenv("CDCLIP_TEXT_CACHE", "0")  # the examples leave no files behind
    module = importlib.import_module(module_name)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights warn; the examples use them on purpose
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.attempted > 0, f"{module_name}: no doctest ran"
    assert result.failed == 0, f"{module_name}: {result.failed} of {result.attempted} doctest examples failed"
