"""`softprobe store migrate`: a store's schema brought up to this version as an explicit step (a
Kubernetes initContainer, a release job), before the replicas that use it start. Opening a store
read-write migrates it too; this does only that, and says from which version to which."""

from __future__ import annotations

import argparse
import sqlite3
from typing import TextIO

from softprobe_gateway.cli import envelope
from softprobe_gateway.cli.common import Settings
from softprobe_gateway.store import migrations
from softprobe_gateway.store.store import Store, describe


def register(commands: argparse._SubParsersAction, store_options: argparse.ArgumentParser) -> None:
    store = commands.add_parser("store", help="the store itself: its schema")
    actions = store.add_subparsers(required=True, metavar="ACTION")
    migrate = actions.add_parser("migrate", parents=[store_options],
                                 help="bring the store's schema up to this version (under a database lock)")
    migrate.set_defaults(command=cmd_migrate)


def cmd_migrate(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    config = settings.store
    if config.url:
        from softprobe_gateway.store import postgres_engine  # psycopg only when used

        before, after = postgres_engine.migrate(config.url)
    else:
        before = _sqlite_version(config.path)
        Store(config).close()  # opened read-write: upgraded, each step in its transaction
        after = migrations.VERSION
    name = describe(config)
    envelope.report(out, store=name, fromVersion=before, toVersion=after)
    done = f"migrated from schema version {before} to {after}" if before < after else f"already at schema version {after}"
    print(f"store {name}: {done}", file=out)
    return 0


def _sqlite_version(path: str) -> int:
    """The file's version before migrating (0: no file yet)."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        return 0
    try:
        return db.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.Error:
        return 0
    finally:
        db.close()
