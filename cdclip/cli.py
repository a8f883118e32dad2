"""The ``cdclip`` command line.

Each sub-command lives in its own module under ``cdclip.commands`` and exposes
``add_arguments(parser)`` and ``run(args) -> int``; modules are imported only when their command
runs, so ``cdclip --help`` is fast. YAML configuration files are read here only (``--config``):
the library itself takes frozen dataclasses.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

# set to 1 to see the traceback of an error instead of the one-line message
TRACEBACK_ENV = "CDCLIP_TRACEBACK"

# command name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("cdclip.commands.demo", "the whole method on the shipped VOC sample, as a report with pictures"),
    "cams": ("cdclip.commands.cams", "initial CAMs, refined CAMs and pseudo labels (training-free)"),
    "refine": ("cdclip.commands.refine", "CDA on CAMs another method saved (CLIP-ES .npy, cdclip .npz, plain arrays)"),
    "coco-masks": ("cdclip.commands.coco_masks", "rasterise COCO instance annotations to semantic PNG masks"),
    "train": ("cdclip.commands.train", "single-stage CD-CLIP training (frozen CLIP + DINO, trainable decoder)"),
    "eval": ("cdclip.commands.evaluate", "mIoU of label PNGs or of a trained model (multi-scale + flip, optional CRF)"),
    "predict": ("cdclip.commands.predict", "a trained model's segmentation of a folder of images or a dataset split"),
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
    cmd_parser = argparse.ArgumentParser(prog=f"cdclip {name}", description=COMMANDS[name][1],
                                         formatter_class=_DefaultsFormatter)  # fmt: skip
    module.add_arguments(cmd_parser)
    args = cmd_parser.parse_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print(f"\ncdclip {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if os.environ.get(TRACEBACK_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
            raise
        return _report(name, err)


class _DefaultsFormatter(argparse.HelpFormatter):
    """``--help`` shows every option's default; ``None`` defaults (the preset's value) say so in their help."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = action.default not in (None, False, argparse.SUPPRESS, [])
        if shown and action.option_strings and "%(default)" not in text and "default" not in text:
            text += " (default: %(default)s)"
        return text


def _user_errors() -> tuple[type[BaseException], ...]:
    """What a user can fix (a path, a value, a busy folder, missing weights): a message, exit 2."""
    from cdclip.backbones._hub import PretrainedWeightsError
    from cdclip.folder_lock import FolderLockedError

    return (OSError, ValueError, KeyError, ImportError, FolderLockedError, PretrainedWeightsError)


def _report(name: str, err: Exception) -> int:
    """Print ``err`` as one message (no traceback); 2 for a user error, 1 for anything else."""
    from cdclip.data._io import MissingFilesError

    if isinstance(err, MissingFilesError):
        text = err.message("--skip-bad")
    elif isinstance(err, KeyError) and err.args:
        text = str(err.args[0])
    else:
        text = str(err) or type(err).__name__
    if isinstance(err, _user_errors()):
        print(f"cdclip {name}: error: {text}", file=sys.stderr)
        return 2
    print(
        f"cdclip {name}: internal error ({type(err).__name__}: {text}); "
        f"set {TRACEBACK_ENV}=1 for the traceback and please report it",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
