"""`softprobe`: browse what the gateway recorded, export it, serve the store over HTTP, and drive
test sessions on a runtime's control API.

The store is `--db`, else `store.path` of the config file (`--config`, else $SOFTPROBE_CONFIG),
else ./softprobe.db: the same file the gateway records into with the same config.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from softprobe_gateway import __version__
from softprobe_gateway.cli import browse, ca, case, common, har, replay, serve, session, suite
from softprobe_gateway.config.schema import ConfigError
from softprobe_gateway.formats.casefile import CaseError
from softprobe_gateway.formats.har import HarError
from softprobe_gateway.store.store import StoreError


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        # The config is read here, once per command; `ca` alone has no --config and reads none.
        settings = common.load(args) if "config" in args else None
        return args.command(args, settings, sys.stdout)
    except (ConfigError, StoreError, CaseError, HarError) as e:
        print(f"softprobe: {e}", file=sys.stderr)
        return 2
    except session.SessionError as e:
        print(f"softprobe: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # a file named on the command line (`-o`)
        print(f"softprobe: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 2


def parser() -> argparse.ArgumentParser:
    """Every command; each group's module adds its own (and its options)."""
    top = argparse.ArgumentParser(prog="softprobe", description=__doc__.split("\n\n")[0])
    top.add_argument("--version", action="version", version=f"softprobe {__version__}")
    commands = top.add_subparsers(required=True, metavar="COMMAND")
    store_options = common.store_options()
    for group in (browse, har, case, replay, serve):
        group.register(commands, store_options)
    ca.register(commands)
    session.register(commands)
    suite.register(commands)
    return top


if __name__ == "__main__":
    sys.exit(main())
