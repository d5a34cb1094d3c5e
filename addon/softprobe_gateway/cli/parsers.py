"""The command tree as argparse holds it, read in one place: `main` adds `--json` to every command
from it and `completion` writes the shells' completion scripts from it, so neither keeps a list of
commands that could drift from the parser."""

from __future__ import annotations

import argparse
from collections.abc import Iterator


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """A parser's commands by name (aliases left out), in the order they were added."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen: set[int] = set()
            named = {}
            for name, sub in action.choices.items():
                if id(sub) not in seen:
                    seen.add(id(sub))
                    named[name] = sub
            return named
    return {}


def walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[
        tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every parser of the tree with the words that reach it (the top one first, with `()`)."""
    yield path, parser
    for name, sub in subcommands(parser).items():
        yield from walk(sub, path + (name,))


def choices(parser: argparse.ArgumentParser) -> list[str]:
    """The values a command's positional arguments allow (`completion bash|zsh|fish`)."""
    return [str(c) for a in parser._actions if not a.option_strings and a.choices
            and not isinstance(a, argparse._SubParsersAction) for c in a.choices]


def options(parser: argparse.ArgumentParser) -> list[tuple[str, bool, tuple[str, ...] | None]]:
    """A parser's options: (option string, whether it takes a value, the values it allows)."""
    found = []
    for action in parser._actions:
        takes_value = action.nargs != 0
        choices = tuple(str(c) for c in action.choices) if action.choices and not isinstance(
            action, argparse._SubParsersAction) else None
        found += [(flag, takes_value, choices) for flag in action.option_strings]
    return found


def add_json(top: argparse.ArgumentParser) -> None:
    """`--json` on every command that runs something (one that has no subcommands of its own)."""
    for _, parser in walk(top):
        if parser is not top and not subcommands(parser) and not any(
                "--json" in a.option_strings for a in parser._actions):
            parser.add_argument("--json", action="store_true",
                                help="print one JSON envelope (status, exitCode, error, ...) on stdout")
