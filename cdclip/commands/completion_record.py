"""The record a finished ``cdclip cams`` run leaves, so that the same command again returns at once.

Re-running a finished command used to rebuild everything the full check needs: torch, the dataset,
each output's integrity check and the score, several seconds before "nothing to do". A run that
completed every image without error writes ``completed.json``: the request (every argument, the
cdclip version, the shipped presets' text), the state of its inputs (size and modification time
of the weights, the label file, the input folder, its folders three levels down and the split /
label / annotation files in them) and of every output it wrote, and the summary it printed.

A rerun first compares that record with the request and the files as they are now, using only the
standard library; when all of it is unchanged it prints the stored summary and returns. Any
difference (another flag, a touched split file, an output removed or rewritten, ``--overwrite``,
sharding) takes the full path, which checks everything as before and deletes the record before it
writes anything.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["RECORD_NAME", "describe_request", "forget", "remember", "replay"]

RECORD_NAME = "completed.json"
_VERSION = 1
# files next to a dataset's images that decide which images and labels a run sees
_INPUT_SUFFIXES = frozenset({".txt", ".npy", ".json", ".csv"})
_INPUT_DEPTH = 3  # VOC: ROOT/ImageSets/Segmentation/train.txt


def _state(path: Path) -> list[int] | None:
    """``[size, mtime_ns]`` of a file or folder, ``None`` when it does not exist."""
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _input_states(roots: Iterable[Path]) -> dict[str, list[int] | None]:
    """The state of each root, of the folders below it (three levels) and of the list files in them.

    Adding, removing or renaming an image changes its folder's time; editing a split or label file
    changes that file's. Image files themselves are not listed (a dataset folder holds thousands).
    """
    states: dict[str, list[int] | None] = {}
    frontier = [(Path(r), 0) for r in roots]
    while frontier:
        path, depth = frontier.pop()
        states[str(path)] = _state(path)
        if depth >= _INPUT_DEPTH or not path.is_dir():
            continue
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.is_dir():
                    frontier.append((Path(entry.path), depth + 1))
                elif Path(entry.name).suffix.lower() in _INPUT_SUFFIXES:
                    states[entry.path] = _state(Path(entry.path))
    return dict(sorted(states.items()))


def _presets_text() -> dict[str, str]:
    """The shipped presets' YAML text: an upgrade that changes a preset changes the request."""
    from cdclip.presets import preset_files

    return {f.name: f.read_text() for f in preset_files()}


def describe_request(arguments: Mapping[str, Any], inputs: Iterable[Path]) -> dict[str, Any]:
    """What a run is asked to do, and the state of what it reads, as a JSON-ready dict."""
    from cdclip import __version__

    return {
        "record": _VERSION,
        "cdclip": __version__,
        "arguments": {k: (str(v) if isinstance(v, Path) else v) for k, v in sorted(arguments.items())},
        "presets": _presets_text(),
        "inputs": _input_states(inputs),
    }


def forget(out: Path) -> None:
    """Delete the record: the folder is about to change."""
    (out / RECORD_NAME).unlink(missing_ok=True)


def remember(out: Path, request: dict[str, Any], outputs: Iterable[Path], summary: str) -> None:
    """Write the record of a finished run: its request, its outputs' state and what it printed."""
    from cdclip.atomic import atomic_write_text

    record = {
        "request": request,
        "outputs": {str(p.relative_to(out)): _state(p) for p in sorted(outputs)},
        "summary": summary,
    }
    atomic_write_text(out / RECORD_NAME, json.dumps(record) + "\n")


def replay(out: Path, request: dict[str, Any]) -> str | None:
    """The stored summary when ``out`` holds the record of this very request, unchanged; else ``None``."""
    try:
        record = json.loads((out / RECORD_NAME).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("request") != request:
        return None
    outputs = record.get("outputs")
    if not isinstance(outputs, dict) or not outputs:
        return None
    if any(_state(out / name) != state for name, state in outputs.items()):
        return None
    summary = record.get("summary")
    return summary if isinstance(summary, str) else None
