"""``cdclip list``: the registered components (built-ins and plugins), with kind, origin and summary."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kind", default=None, help="only components of this kind (kernel, loss, ...)")
    parser.add_argument("--plugins", action="store_true", help="only components registered by plugins or user code")


def run(args: argparse.Namespace) -> int:
    from cdclip.registry import registry

    rows = [info for info in registry.entries(kind=args.kind) if info.is_plugin or not getattr(args, "plugins", False)]
    width = max((len(info.name) for info in rows), default=4)
    kind_width = max((len(info.kind) for info in rows), default=4)
    origin_width = max((len(info.origin) for info in rows), default=8)
    for info in rows:
        print(f"{info.name:<{width}}  {info.kind:<{kind_width}}  {info.origin:<{origin_width}}  {info.doc}")
    plugins = sum(info.is_plugin for info in rows)
    if plugins:
        print(f"\n{plugins} of {len(rows)} components come from plugins or user code (origin other than built-in)")
    return 0
