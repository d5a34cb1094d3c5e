"""`softprobe`: browse what the gateway recorded, export it, serve the store over HTTP, and drive
test sessions on a runtime's control API.

The store is `--store URL` (`sqlite:PATH` or `postgresql://...`), else $SOFTPROBE_STORE_URL, else `--db`,
else `store.path` of the config file (`--config`, else $SOFTPROBE_CONFIG), else ./softprobe.db: the
same file the gateway records into with the same config. Exit codes and
`--json` envelopes are Softprobe's CLI's (`envelope`).
"""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Sequence

from softprobe_gateway import __version__
from softprobe_gateway.cli import (
    browse, ca, capture, case, common, completion, doctor, envelope, export_otlp, har, inspect, parsers, replay,
    scrub, serve, session, store_cmd, suite, validate,
)
from softprobe_gateway.server.control_api import SPEC_VERSION


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser().parse_args(argv)
    except envelope.UsageError as e:
        print(e.usage + str(e), file=sys.stderr, end="\n")
        if "--json" in argv:
            envelope.usage_failure(e, sys.stdout)
        return e.exit_code
    as_json = getattr(args, "json", False) or args.json_first
    if args.verbose:  # every HTTP request a command makes, and its answer's status line, on stderr
        logging.basicConfig(stream=sys.stderr, format="softprobe: %(message)s")
        logging.getLogger("httpx").setLevel(logging.INFO)
    out = envelope.JsonOut() if as_json else io.StringIO() if args.quiet else sys.stdout
    failure = None
    try:
        # The config is read here, once per command; `ca` alone has no --config and reads none.
        settings = common.load(args) if "config" in args else None
        code = args.command(args, settings, out)
    except Exception as e:
        failure = envelope.classify(e)
        if failure is None:
            raise
        print(f"softprobe: {failure}", file=sys.stderr)
        code = failure.exit_code
    if isinstance(out, envelope.JsonOut):
        envelope.finish(out, code, failure, sys.stdout)
    return code


def parser() -> envelope.Parser:
    """Every command; each group's module adds its own (and its options)."""
    top = envelope.Parser(prog="softprobe", description=__doc__.split("\n\n")[0])
    top.add_argument("--version", action="version", version=f"softprobe {__version__} (spec {SPEC_VERSION})")
    top.add_argument("--json", dest="json_first", action="store_true", help="a JSON envelope (as COMMAND --json)")
    top.add_argument("-q", "--quiet", action="store_true", help="no output but errors")
    top.add_argument("-v", "--verbose", action="store_true", help="each HTTP request made, on stderr")
    commands = top.add_subparsers(required=True, metavar="COMMAND")
    store_options = common.store_options()
    for group in (browse, har, case, replay, serve, store_cmd):
        group.register(commands, store_options)
    ca.register(commands)
    session.register(commands)
    suite.register(commands)
    for tool in (doctor, inspect, validate, scrub, capture, export_otlp):
        tool.register(commands)
    completion.register(commands, top)
    parsers.add_json(top)
    return top


if __name__ == "__main__":
    sys.exit(main())
