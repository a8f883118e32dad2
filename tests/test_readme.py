"""The README's quickstart runs as written."""

from __future__ import annotations

import re

import torch
from conftest import REPO


def test_readme_quickstart_runs():
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Quickstart") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["refined"].shape == (2, 2, 32, 32)
    assert torch.isfinite(namespace["refined"]).all()
    per_image = namespace["per_image"]
    assert per_image.shape == (2, 20, 32, 32) and not per_image[0, 3].any() and per_image[1, 3].any()
    assert isinstance(namespace["cda"], namespace["CDAModule"])
