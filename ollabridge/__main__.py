"""Command line: `python -m ollabridge <command> ...`.

Commands live in COMMANDS: name -> (help, add_arguments(parser), main(args) -> exit status).
Add one by adding an entry; imports stay lazy so each command loads only what it needs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable


def _node_arguments(parser: argparse.ArgumentParser) -> None:
    from ollabridge.node.cli import add_arguments

    add_arguments(parser)


def _node_main(args: argparse.Namespace) -> int:
    from ollabridge.node.cli import main

    return main(args)


def _space_arguments(parser: argparse.ArgumentParser) -> None:
    from ollabridge.space.deploy import add_arguments

    add_arguments(parser)


def _space_main(args: argparse.Namespace) -> int:
    from ollabridge.space.deploy import run

    return run(args)


#: name -> (one-line help, add its arguments to a subparser, run it and return the exit status)
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[Any], int]]] = {
    "node": ("run a GPU boost node: pair with a gateway by code and serve its requests from this "
             "machine's Ollama", _node_arguments, _node_main),
    "space": ("your own OllaBridge Space on Hugging Face: `space duplicate --to <user>/<name>`, or "
              "`space stage DIR` to lay out its repository", _space_arguments, _space_main),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ollabridge", description="OllaBridge command line.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_text, add_arguments, run) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(command)
        command.set_defaults(_run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
