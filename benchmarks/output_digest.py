"""Digests of what ``cdclip cams`` and a 20-iteration CPU ``cdclip train`` write on the shipped VOC sample.

A refactoring that claims "no behaviour change" runs this before and after and compares: every
array in the CAM files, every pseudo-label PNG, the metrics and every tensor of the final
checkpoint (decoder, optimiser, RNG states) must hash the same, bit for bit.

    python benchmarks/output_digest.py --out-json /tmp/before.json
    ... change the code ...
    python benchmarks/output_digest.py --compare /tmp/before.json

Random seeded weights (no download): ``cams`` with the ``clip-es`` and ``cdclip-voc`` presets on a
random ViT-B/16, ``train`` with the ``smoke`` preset (tiny random ViTs, 20 iterations).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
VOC = REPO / "examples" / "data" / "VOC2012"


def _cdclip(*argv: str) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CDCLIP_TEXT_CACHE": "0"}
    subprocess.run([sys.executable, "-m", "cdclip", *argv], check=True, env=env, stdout=subprocess.DEVNULL)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _array_digest(array: Any) -> str:
    array = np.ascontiguousarray(array)
    return _sha(f"{array.dtype}{array.shape}".encode() + array.tobytes())


def _cam_file_digests(path: Path) -> dict[str, str]:
    if path.suffix == ".npz":
        with np.load(path) as data:
            return {f"{path.name}:{k}": _array_digest(data[k]) for k in sorted(data.files)}
    record = np.load(path, allow_pickle=True).item()
    return {f"{path.name}:{k}": _array_digest(record[k]) for k in sorted(record)}


def _cams_digests(out: Path) -> dict[str, str]:
    digests: dict[str, str] = {}
    for path in sorted((out / "cams").iterdir()):
        digests.update(_cam_file_digests(path))
    for folder in ("pseudo", "overlay"):
        for path in sorted((out / folder).glob("*.png")):
            digests[f"{folder}/{path.name}"] = _sha(path.read_bytes())
    metrics = json.loads((out / "metrics.json").read_text())
    digests["metrics.miou"] = repr(metrics["miou"])
    return digests


def _tensor_digests(prefix: str, value: Any, digests: dict[str, str]) -> None:
    import torch

    if isinstance(value, torch.Tensor):
        digests[prefix] = _array_digest(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, dict):
        for key in sorted(value, key=str):
            _tensor_digests(f"{prefix}.{key}", value[key], digests)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _tensor_digests(f"{prefix}[{i}]", item, digests)
    elif isinstance(value, (int, float, str, bool, bytes)) or value is None:
        digests[prefix] = _sha(repr(value).encode())
    elif isinstance(value, np.ndarray):
        digests[prefix] = _array_digest(value)


def _train_digests(out: Path) -> dict[str, str]:
    import torch

    checkpoint = max(out.glob("**/*.pt"), key=lambda p: p.stat().st_mtime)
    state = torch.load(io.BytesIO(checkpoint.read_bytes()), map_location="cpu", weights_only=False)
    digests: dict[str, str] = {}
    for key in ("model", "decoder", "optimizer", "scheduler", "iteration", "step", "rng"):
        if key in state:
            _tensor_digests(key, state[key], digests)
    return digests


def digests() -> dict[str, dict[str, str]]:
    result: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for preset in ("clip-es", "cdclip-voc"):
            out = Path(tmp) / preset
            _cdclip("cams", "--preset", preset, "--voc", str(VOC), "--split", "val", "--weights", "none",
                    "--seed", "0", "--out", str(out))  # fmt: skip
            result[f"cams {preset}"] = _cams_digests(out)
        out = Path(tmp) / "train"
        _cdclip("train", "--preset", "smoke", "--data-root", str(VOC), "--out", str(out), "--device", "cpu",
                "--seed", "0", "--no-progress")  # fmt: skip
        result["train smoke"] = _train_digests(out)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-json", type=Path, help="write the digests here")
    parser.add_argument("--compare", type=Path, help="digests recorded before; exit 1 on any difference")
    args = parser.parse_args()
    now = digests()
    if args.out_json:
        args.out_json.write_text(json.dumps(now, indent=1) + "\n")
    total = sum(len(v) for v in now.values())
    if args.compare:
        before = json.loads(args.compare.read_text())
        changed = [f"{run}: {key}" for run in sorted(set(before) | set(now))
                   for key in sorted(set(before.get(run, {})) | set(now.get(run, {})))
                   if before.get(run, {}).get(key) != now.get(run, {}).get(key)]  # fmt: skip
        for line in changed:
            print(f"differs: {line}")
        print(f"{total} digests, {len(changed)} differ from {args.compare}")
        return 1 if changed else 0
    print(f"{total} digests" + (f", written to {args.out_json}" if args.out_json else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
