"""`--json` envelopes and Softprobe's exit codes: the one place that writes a command's JSON answer
and maps what went wrong to the code CI scripts and agents dispatch on (Softprobe's CLI reference,
`docs-site/reference/cli.md`: "Exit codes" and "`--json` field stability").

Every command runs with `out` its stdout. Under `--json` it is a `JsonOut` instead: what the
command prints there is kept apart, the fields it `report`s become the envelope's, beside
`status` (`ok`, `fail`, `drift`), `exitCode` (the process's exit code) and `error` (`null`, or
`{code, message}`), which `finish` writes as one line when the command returns or fails.
"""

from __future__ import annotations

import argparse
import io
import json
from typing import Any, TextIO

from softprobe_gateway.config.schema import ConfigError
from softprobe_gateway.formats.casefile import CaseError
from softprobe_gateway.formats.har import HarError
from softprobe_gateway.store.store import StoreError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_NO_SESSION, EXIT_INVALID = 0, 1, 2, 3, 4, 5
EXIT_DOCTOR, EXIT_SUITE = 10, 20
# The error code an envelope carries for an exit code when nothing more precise is known.
ERROR_CODES = {EXIT_FAILED: "failed", EXIT_USAGE: "invalid_arguments", EXIT_UNREACHABLE: "runtime_unreachable",
               EXIT_NO_SESSION: "session_not_found", EXIT_INVALID: "validation_failed",
               EXIT_DOCTOR: "doctor_failed", EXIT_SUITE: "suite_failed"}


class CliError(Exception):
    """A command that cannot go on: one line for stderr, the exit code and the envelope's error code."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED, code: str = "") -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.code = code or ERROR_CODES.get(exit_code, "failed")


class UsageError(CliError):
    """argparse refused the command line (exit 2); `usage` is the failing parser's usage line."""

    def __init__(self, message: str, usage: str) -> None:
        super().__init__(message, EXIT_USAGE)
        self.usage = usage


class Parser(argparse.ArgumentParser):
    """argparse raising `UsageError` instead of exiting, so `--json` can answer a bad command line
    with an envelope too (subparsers are made of the same class)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: error: {message}", self.format_usage())


def classify(e: Exception) -> CliError | None:
    """What an exception means as Softprobe's exit codes; None for one no command raises on purpose.

    A bad flag or config value is 2 (invalid arguments), a file that is not a valid case or HAR
    5 (validation), an id that names nothing 4; a store that cannot be opened, a file that
    cannot be read or written, 1.
    """
    if isinstance(e, CliError):
        return e
    if isinstance(e, ConfigError):
        return CliError(str(e), EXIT_USAGE)
    if isinstance(e, (CaseError, HarError)):
        return CliError(str(e), EXIT_INVALID, "invalid_case" if isinstance(e, CaseError) else "invalid_har")
    if isinstance(e, StoreError):
        return CliError(str(e), getattr(e, "exit_code", EXIT_FAILED))
    if isinstance(e, OSError):
        return CliError(f"{e.filename or ''}: {e.strerror or e}".removeprefix(": "), EXIT_FAILED, "io_error")
    return None


class JsonOut(io.StringIO):
    """A command's stdout under `--json`: the text printed to it is kept apart (the envelope's
    `output` when the command reported no fields), the fields reported go into the envelope."""

    def __init__(self) -> None:
        super().__init__()
        self.fields: dict[str, Any] = {}
        self.status = ""
        self.error: dict[str, str] | None = None
        self.sent = False


def wanted(out: TextIO) -> bool:
    """Whether the command runs under `--json` (to skip work only the envelope needs)."""
    return isinstance(out, JsonOut)


def report(out: TextIO, **fields: Any) -> None:
    """Fields of the command's envelope (nothing happens without `--json`)."""
    if isinstance(out, JsonOut):
        out.fields.update(fields)


def outcome(out: TextIO, status: str = "", code: str = "", message: str = "") -> None:
    """A status other than ok/fail (`drift`), or the error of a command that fails without raising."""
    if isinstance(out, JsonOut):
        out.status = status or out.status
        if code:
            out.error = {"code": code, "message": message}


def announce(out: TextIO, stream: TextIO, **fields: Any) -> None:
    """The envelope at once, for a command that then runs until stopped (`serve`)."""
    if isinstance(out, JsonOut):
        report(out, **fields)
        _write(stream, envelope(EXIT_OK, out.fields))
        out.sent = True


def envelope(exit_code: int, fields: dict[str, Any] | None = None, error: dict[str, str] | None = None,
             status: str = "") -> dict[str, Any]:
    """The stable fields first, then the command's own (which never replace them)."""
    document: dict[str, Any] = {"status": status or ("ok" if exit_code == EXIT_OK else "fail"),
                                "exitCode": exit_code, "error": error}
    document.update((k, v) for k, v in (fields or {}).items() if k not in document)
    return document


def finish(out: JsonOut, exit_code: int, failure: CliError | None, stream: TextIO) -> None:
    """Write the envelope of a command that returned `exit_code` (or raised `failure`)."""
    if out.sent and failure is None:
        return
    fields = out.fields
    if not fields and out.getvalue().strip():
        fields = {"output": out.getvalue().rstrip("\n").split("\n")}
    error = out.error
    if failure is not None:
        error = {"code": failure.code, "message": str(failure)}
    elif error is None and exit_code != EXIT_OK:
        lines = out.getvalue().strip().splitlines()
        error = {"code": ERROR_CODES.get(exit_code, "failed"), "message": lines[-1] if lines else ""}
    _write(stream, envelope(exit_code, fields, error, out.status))


def usage_failure(e: UsageError, stream: TextIO) -> None:
    _write(stream, envelope(e.exit_code, None, {"code": e.code, "message": str(e)}))


def _write(stream: TextIO, document: dict[str, Any]) -> None:
    print(json.dumps(document, ensure_ascii=False), file=stream, flush=True)
