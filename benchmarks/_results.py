"""How the benchmark scripts report: the Markdown table on stdout, and JSON plus the same table beside it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def report(result: dict[str, Any], markdown: str, out: Path | None) -> None:
    """Print ``markdown``; with ``out``, write ``result`` there as JSON and ``markdown`` to ``out`` with ``.md``."""
    print(markdown)
    if out is not None:
        out.write_text(json.dumps(result, indent=2))
        out.with_suffix(".md").write_text(markdown)
        print(f"wrote {out}")
