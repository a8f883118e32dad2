"""``cdclip list``: the registered components, with their kind and summary."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kind", default=None, help="only components of this kind (kernel, loss, ...)")


def run(args: argparse.Namespace) -> int:
    from cdclip.registry import registry

    rows = [(n, k, d) for n, (k, d) in registry.describe().items() if args.kind in (None, k)]
    width = max((len(n) for n, _, _ in rows), default=4)
    for name, kind, doc in rows:
        print(f"{name:<{width}}  {kind:<10}  {doc}")
    return 0
