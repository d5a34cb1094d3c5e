"""What the commands share: the config loaded once per command, the store it names, a session
found by the start of its id, and reading or writing the files named on the command line."""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from softprobe_gateway.cli import envelope
from softprobe_gateway.cli.envelope import EXIT_NO_SESSION, EXIT_USAGE, CliError
from softprobe_gateway.config.loader import CONFIG_ENV, load_config
from softprobe_gateway.config.schema import Config, ConfigError, StoreConfig
from softprobe_gateway.formats.casefile import CaseError, case_exchanges
from softprobe_gateway.store.model import Recording, SessionSummary
from softprobe_gateway.store.store import STORE_URL_ENV, Store, StoreError, parse_url


@dataclass(frozen=True)
class Settings:
    """The gateway's config as a command sees it: `store` is the store it records into (the
    backend URL's file, else `store.path`), or `--db`, or `--store` (else $SOFTPROBE_STORE_URL)."""

    config: Config
    store: StoreConfig


def store_options() -> argparse.ArgumentParser:
    """`--db` and `--config`, a parent of every command that reads the gateway's config."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--db", help="the SQLite store (default: store.path of the config)")
    options.add_argument("--store", metavar="URL",
                         help=f"sqlite:PATH or postgresql://USER[:PASS]@HOST:PORT/DB (default: ${STORE_URL_ENV}, "
                              "else --db, else the config's store)")
    options.add_argument("--config", help=f"gateway config YAML (default: ${CONFIG_ENV})")
    return options


def load(args: argparse.Namespace) -> Settings:
    """The config of `--config`, else $SOFTPROBE_CONFIG, else all defaults: read once, here."""
    config = load_config(args.config or os.environ.get(CONFIG_ENV) or None)
    store = config.store_config if config.backend_kind == "store" else config.store
    if args.db:
        store = dataclasses.replace(store, path=args.db, url="")
    if getattr(args, "store", None):  # commands with a --db of their own have no --store
        url, option = args.store, "--store"
    else:  # $SOFTPROBE_STORE_URL, unless --db names a file
        url, option = ("" if args.db else os.environ.get(STORE_URL_ENV, "")), f"${STORE_URL_ENV}"
    if url:
        try:
            store = parse_url(url, store)
        except ValueError as e:
            raise ConfigError(f"{option}: {e}") from None
    return Settings(config, store)


def browse(config: StoreConfig) -> Store:
    """The store opened read-only: a running gateway may be writing to it."""
    return Store(config, read_only=True)


class NotFound(StoreError):
    """No session or exchange by that id: Softprobe's exit code for a session not found."""

    exit_code = EXIT_NO_SESSION


class Ambiguous(StoreError):
    """The start of an id that names several: an invalid argument."""

    exit_code = EXIT_USAGE


def resolve(store: Store, prefix: str, kinds: tuple[str, ...]) -> tuple[str, str]:
    """The one session or exchange an id, or the start of one, names; StoreError otherwise."""
    found = [(kind, id) for kind, id in store.find(prefix) if kind in kinds]
    if not found:
        raise NotFound(f"no {' or '.join(kinds)} {prefix!r} in {store.name}")
    if len(found) > 1:
        names = ", ".join(f"{kind} {id}" for kind, id in found)
        raise Ambiguous(f"{prefix!r} is ambiguous: it starts {names}; give more of the id")
    return found[0]


def find_session(config: StoreConfig, prefix: str) -> tuple[SessionSummary, list[Recording]]:
    """One recorded session (by id or id prefix) and its exchanges; StoreError when there is none."""
    with browse(config) as store:
        _, session_id = resolve(store, prefix, ("session",))
        summary, exchanges = store.session(session_id)
        if summary is None:  # pruned since `find` named it
            raise NotFound(f"no session {prefix!r} in {store.name}")
    return summary, exchanges


def write_json(document: Any, output: str | None, out: TextIO) -> None:
    """A document as indented JSON into the file `-o` names, else onto `out`."""
    text = json.dumps(document, indent=2, ensure_ascii=False)
    if output:
        Path(output).write_text(text + "\n", encoding="utf-8")
    else:
        print(text, file=out)


def read_json(path: str, error: type[ValueError]) -> tuple[bytes, Any]:
    """A file's bytes and its JSON; `error` (one line, no traceback) when it is not JSON, a
    CliError (exit 1) naming the file when it cannot be read."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise CliError(f"{path}: {e.strerror or e}", code="io_error") from None
    try:
        return raw, json.loads(raw)
    except ValueError as e:
        raise error(f"not JSON: {e}") from None


def read_case(path: str) -> list[Recording]:
    """A Softprobe case file's exchanges; CaseError naming the file when it is not one."""
    try:
        return case_exchanges(read_json(path, CaseError)[1])
    except CaseError as e:
        raise CaseError(f"{path}: {e}") from None


def matching_files(patterns: list[str]) -> list[Path]:
    """The files each argument names: a file as it is, else a glob (`**` recursive), sorted; a
    pattern that names nothing is an error, not a silent no-op."""
    found: list[Path] = []
    for pattern in patterns:
        if Path(pattern).is_file():
            found.append(Path(pattern))
            continue
        matched = sorted(p for p in map(Path, glob.glob(pattern, recursive=True)) if p.is_file())
        if not matched:
            raise CliError(f"{pattern}: no such file, and no file matches it", code="no_files")
        found += matched
    return list(dict.fromkeys(found))


def already(total: int, added: int) -> str:
    """How many of an import's exchanges the store held before (importing twice stores once)."""
    return f" ({total - added} were already there)" if total > added else ""


def verdict(out: TextIO, path: str, problems: list[str], *, code: str = "validation_failed", note: str = "",
            **fields: Any) -> int:
    """A checked file's answer, one shape for `validate` and `suite validate`: `PATH: valid` (and
    `note`), else the problems one a line and the first as the error; exit 0, else 5."""
    envelope.report(out, path=path, valid=not problems, errors=problems, **fields)
    if not problems:
        print(f"{path}: valid{note}", file=out)
        return envelope.EXIT_OK
    print(f"{path}: {len(problems)} {'error' if len(problems) == 1 else 'errors'}", file=out)
    for problem in problems:
        print(f"  {problem}", file=out)
    first = problems[0] if problems[0].startswith(f"{path}:") else f"{path}: {problems[0]}"
    envelope.outcome(out, code=code, message=first)
    return envelope.EXIT_INVALID
