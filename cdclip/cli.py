"""The ``cdclip`` command line.

Each sub-command lives in its own module under ``cdclip.commands`` and exposes
``add_arguments(parser)`` and ``run(args) -> int``; modules are imported only when their command
runs, so ``cdclip --help`` is fast. YAML configuration files are read here only (``--config``):
the library itself takes frozen dataclasses.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# command name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "cams": ("cdclip.commands.cams", "initial CAMs, refined CAMs and pseudo labels (training-free)"),
    "coco-masks": ("cdclip.commands.coco_masks", "rasterise COCO instance annotations to semantic PNG masks"),
    "train": ("cdclip.commands.train", "single-stage CD-CLIP training (frozen CLIP + DINO, trainable decoder)"),
    "eval": ("cdclip.commands.evaluate", "mIoU of label PNGs or of a trained model (multi-scale + flip, optional CRF)"),
    "list": ("cdclip.commands.list_components", "list the registered components"),
}


def build_parser() -> argparse.ArgumentParser:
    from cdclip import __version__

    parser = argparse.ArgumentParser(prog="cdclip", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"cdclip {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.set_defaults(_module=module)
        # arguments are added lazily, only for the command actually invoked (see main)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] not in COMMANDS:
        args = parser.parse_args(argv)  # prints help / version / the "invalid choice" error
        parser.print_help()
        return 0 if not argv else 2
    name = argv[0]
    module = importlib.import_module(COMMANDS[name][0])
    cmd_parser = argparse.ArgumentParser(prog=f"cdclip {name}", description=COMMANDS[name][1])
    module.add_arguments(cmd_parser)
    args = cmd_parser.parse_args(argv[1:])
    return int(module.run(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
