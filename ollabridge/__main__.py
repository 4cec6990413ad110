"""Command line: `ollabridge <command> ...` (the console script) or `python -m ollabridge <command> ...`.

Commands live in COMMANDS: name -> (one-line help, the module that runs it). Each module has
`add_arguments(parser)` and `run(args) -> exit status`. Only the chosen command's module is imported, so
`ollabridge node` loads the agent alone, and the node-only install (`ollabridge-node`, without the
gateway's modules) says plainly which commands it lacks.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from types import ModuleType

#: name -> (one-line help, module with add_arguments(parser) and run(args))
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("run the gateway (what `python app.py` does): the API, the web UI and the relay on $HOST:$PORT",
              "ollabridge.serve"),
    "node": ("run a GPU boost node: pair with a gateway by code and serve its requests from this "
             "machine's Ollama", "ollabridge.node.cli"),
    "engine": ("run the in-box engine alone: llama.cpp behind Ollama's API (needs the `inbox` extra)",
               "ollabridge.engine.__main__"),
    "space": ("your own OllaBridge Space on Hugging Face: `space duplicate --to <user>/<name>`, or "
              "`space stage DIR` to lay out its repository", "ollabridge.space.deploy"),
}


class CommandUnavailable(Exception):
    """The command's module (or a library it needs) is not installed here."""


def load_command(name: str) -> ModuleType:
    """The module of command `name`; CommandUnavailable says what to install when it cannot load."""
    module = COMMANDS[name][1]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        missing = exc.name or str(exc)
        if missing.startswith("ollabridge"):
            hint = ("this is the node-only install (ollabridge-node); the gateway's commands need the full "
                    "package: pip install ollabridge")
        elif name == "engine" and missing.startswith("llama_cpp"):
            hint = 'the in-box engine needs the inbox extra: pip install "ollabridge[inbox]"'
        else:
            hint = "install the full package: pip install ollabridge"
        raise CommandUnavailable(f"`{name}` cannot run here: {missing} is not installed ({hint})") from exc


def _prog() -> str:
    return "python -m ollabridge" if os.path.basename(sys.argv[0]) == "__main__.py" else "ollabridge"


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """The parser, with the arguments of the command named in `argv` (the others list their help only)."""
    parser = argparse.ArgumentParser(prog=_prog(), description="OllaBridge command line.")
    from ollabridge import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = next((arg for arg in argv if not arg.startswith("-")), None)
    for name, (help_text, _) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = load_command(name)
            module.add_arguments(command)
            command.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser(argv).parse_args(argv)
    except CommandUnavailable as exc:
        print(f"{_prog()}: {exc}", file=sys.stderr)
        return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
