"""mkdocs hook: the CLI reference, generated from ``cdclip.cli.build_parser()`` at build time.

The marker ``<!-- cdclip:cli-reference -->`` in a page is replaced by the ``--help`` of ``cdclip``
and of every sub-command. Sub-commands add their arguments lazily (only the command that runs
imports its module), so each one's ``add_arguments`` is called here on the sub-parser that
``build_parser()`` made for it, with the formatter ``cdclip <command> --help`` uses. Nothing is
copied by hand: a new flag appears in the site on the next build.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from _common import replace_marker

MARKER = "cdclip:cli-reference"
WIDTH = 100  # fixed, so the page does not depend on the terminal that runs the build


def _formatter(base: type[argparse.HelpFormatter]):
    def make(prog: str) -> argparse.HelpFormatter:
        return base(prog, width=WIDTH)

    return make


def _plain(parser: argparse.ArgumentParser) -> None:
    """No ANSI colours in the page (Python 3.14's argparse colours help when the environment asks)."""
    if hasattr(parser, "color"):
        parser.color = False


def command_parsers() -> tuple[argparse.ArgumentParser, dict[str, tuple[str, argparse.ArgumentParser]]]:
    """``build_parser()`` and ``{command: (one-line help, its complete parser)}`` in the CLI's order."""
    from cdclip import cli

    parser = cli.build_parser()
    parser.formatter_class = _formatter(argparse.HelpFormatter)
    _plain(parser)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help or "" for a in sub._get_subactions()}
    formatter = getattr(cli, "_DefaultsFormatter", argparse.HelpFormatter)
    commands: dict[str, tuple[str, argparse.ArgumentParser]] = {}
    for name, cmd in sub.choices.items():
        module = importlib.import_module(cmd.get_default("_module"))
        cmd.formatter_class = _formatter(formatter)
        _plain(cmd)
        module.add_arguments(cmd)
        commands[name] = (helps.get(name, ""), cmd)
    return parser, commands


def render() -> str:
    parser, commands = command_parsers()
    lines = [
        "| command | what it does |",
        "|---|---|",
        *(f"| [`cdclip {name}`](#cdclip-{name}) | {text} |" for name, (text, _) in commands.items()),
        "",
        "## cdclip",
        "",
        "```text",
        parser.format_help().rstrip(),
        "```",
        "",
    ]
    for name, (_, cmd) in commands.items():
        lines += [f"## cdclip {name}", "", "```text", cmd.format_help().rstrip(), "```", ""]
    return "\n".join(lines)


def on_page_markdown(markdown: str, **kwargs) -> str:
    return replace_marker(markdown, MARKER, render)
