"""mkdocs hook: the presets page, generated from the YAML files in ``cdclip/presets/``.

The marker ``<!-- cdclip:presets -->`` is replaced by a summary table (from
``cdclip.presets.list_presets()``) and, per preset, the keys its own file sets and every key it
ends up with once its ``extends`` chain is applied (``cdclip.presets.preset_dict``). Keys a preset
does not mention keep the defaults of ``TrainConfig``.
"""

from __future__ import annotations

import json
import os
import sys
from importlib import resources
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))
from _common import replace_marker

MARKER = "cdclip:presets"
META_KEYS = ("description", "extends", "training")


def _flatten(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            rows += _flatten(value, dotted + ".")
        else:
            rows.append((dotted, value))
    return rows


def _cell(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)  # JSON is YAML flow syntax: what --set accepts
    return "`" + text.replace("|", "\\|") + "`"


def _table(rows: list[tuple[str, Any]], indent: str = "") -> list[str]:
    if not rows:
        return [indent + "*(no keys of its own)*"]
    out = [indent + "| key | value |", indent + "|---|---|"]
    out += [f"{indent}| `{key}` | {_cell(value)} |" for key, value in rows]
    return out


def raw_preset(name: str) -> dict[str, Any]:
    """The YAML file of one preset as written (meta keys included)."""
    import yaml

    text = (resources.files("cdclip.presets") / f"{name}.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text) or {}


def render() -> str:
    from cdclip.presets import list_presets, preset_dict

    presets = list_presets()
    lines = [
        "| preset | used by | extends | description |",
        "|---|---|---|---|",
    ]
    for info in presets:
        raw = raw_preset(info["name"])
        parent = raw.get("extends")
        kind = "`train`, `cams`" if info["training"] else "`cams` only (training-free)"
        parent_cell = f"[`{parent}`](#{parent})" if parent else "—"
        lines.append(
            f"| [`{info['name']}`](#{info['name']}) | {kind} | {parent_cell} | {info['description']} |"
        )
    lines.append("")
    for info in presets:
        name = info["name"]
        raw = raw_preset(name)
        own = _flatten({k: v for k, v in raw.items() if k not in META_KEYS})
        parent = raw.get("extends")
        lines += [f"## {name}", "", info["description"], ""]
        usage = "cdclip train" if info["training"] else "cdclip cams"
        extends = f" Extends [`{parent}`](#{parent})." if parent else ""
        lines += [f"Use: `{usage} --preset {name} ...`.{extends}", ""]
        lines += ["Keys set in its file:", "", *_table(own), ""]
        if parent:
            lines += [f'??? note "All keys of `{name}` after its `extends` chain"', ""]
            lines += [*_table(_flatten(preset_dict(name)), indent="    "), ""]
    return "\n".join(lines)


def on_page_markdown(markdown: str, **kwargs) -> str:
    return replace_marker(markdown, MARKER, render)
