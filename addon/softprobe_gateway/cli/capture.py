"""`softprobe capture run --driver CMD --out PATH`: one capture in one command, as Softprobe's CLI
runs it. A capture session is started on the runtime, CMD runs in a shell with the session in
`$SOFTPROBE_SESSION_ID` (it sends its traffic with `x-softprobe-session-id`, through the gateway),
then, once the session's span count has settled (a gateway exports a moment after it answers),
the session is closed and the runtime writes its case to PATH (the close's `?out=`, as
`session close --out`). The session is closed whatever the driver did; the exit code is the
driver's when it failed, 1 when it ran out of `--timeout`."""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from argparse import Namespace
from typing import TextIO

from softprobe_gateway.cli import envelope, scrub
from softprobe_gateway.cli.common import load
from softprobe_gateway.cli.session import Runtime, close_route, runtime_options

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)?")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}
SETTLE_MAX = 30.0


def register(commands: argparse._SubParsersAction) -> None:
    about = "one-shot capture: a session around a driver command, its case written on close"
    actions = commands.add_parser("capture", help=about, description=about).add_subparsers(
        required=True, metavar="ACTION")
    run = actions.add_parser("run", parents=[runtime_options()], help=about, description=__doc__.split("\n\n")[0])
    run.add_argument("--driver", required=True, metavar="CMD",
                     help="a shell command; it receives SOFTPROBE_SESSION_ID in its environment")
    run.add_argument("--out", metavar="PATH", help="where the runtime writes the case (default: its own choice)")
    run.add_argument("--target", metavar="URL", help="the service's base URL (informational, as in Softprobe's CLI)")
    run.add_argument("--redact-file", metavar="FILE",
                     help="a gateway config whose redaction rules scrub the written case (softprobe scrub)")
    run.add_argument("--timeout", type=duration, default=duration("10m"), metavar="DURATION",
                     help="the driver's longest run: 300s, 10m, 1h (default 10m)")
    run.add_argument("--settle", type=duration, default=duration("1s"), metavar="DURATION",
                     help="after the driver, how long the session's span count must hold still before the "
                          "close, for the gateways' last exports to arrive (default 1s; at most 30 s in all)")
    run.set_defaults(command=cmd_run)


def duration(text: str) -> float:
    """`300s`, `10m`, `200ms`, `1h` or plain seconds."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"expected a duration such as 300s, 10m or 200ms, got {text!r}")
    return float(match[1]) * _UNITS[match[2]]


def cmd_run(args: argparse.Namespace, settings: object, out: TextIO) -> int:
    runtime = Runtime(args.runtime_url)
    session_id = runtime.call("POST", "/v1/sessions", {"mode": "capture"})["sessionId"]
    print(f"capture session {session_id}: running {args.driver}", file=sys.stderr, flush=True)
    try:
        driver_code = _drive(args.driver, session_id, args.timeout, json_out=envelope.wanted(out))
    finally:  # the session never outlives the command, whatever the driver did
        stats = _settled(runtime, session_id, args.settle)
        closed = runtime.call("POST", close_route(session_id, args.out))
    case = closed.get("capturePath", "")
    if args.redact_file and case:
        scrub.cmd_scrub(Namespace(files=[case]), load(Namespace(config=args.redact_file, db=None)), out)
    envelope.report(out, sessionId=session_id, stats=stats, capturePath=case,
                    driverExitCode=driver_code if driver_code is not None else -1)
    print(f"session {session_id} closed: {stats.get('extractedSpans', 0)} spans captured"
          + (f", case {case}" if case else ", no case written (the runtime wrote none)"), file=out)
    if driver_code is None:
        envelope.outcome(out, code="driver_timeout", message=f"the driver ran longer than {args.timeout:g} s")
        print(f"softprobe: the driver ran longer than {args.timeout:g} s and was stopped", file=sys.stderr)
        return envelope.EXIT_FAILED
    if driver_code:
        envelope.outcome(out, code="driver_failed", message=f"the driver exited with {driver_code}")
    return driver_code


def _settled(runtime: Runtime, session_id: str, quiet: float) -> dict:
    """The session's counters once `extractedSpans` has not moved for `quiet` seconds (30 s at most):
    a gateway batches its exports (every 200 ms by default), so the last ones arrive after the driver."""
    deadline, last, since = time.monotonic() + SETTLE_MAX, None, time.monotonic()
    while True:
        stats = runtime.call("GET", f"/v1/sessions/{session_id}/stats").get("stats", {})
        now = time.monotonic()
        if stats.get("extractedSpans") != last:
            last, since = stats.get("extractedSpans"), now
        if now - since >= quiet or now >= deadline:
            return stats
        time.sleep(0.05)


def _drive(command: str, session_id: str, timeout: float, json_out: bool) -> int | None:
    """The driver's exit code (128 + N when a signal ended it), None when it timed out (then it
    and its children are stopped). Under --json its stdout goes to stderr: stdout is the envelope's."""
    env = {**os.environ, "SOFTPROBE_SESSION_ID": session_id}
    driver = subprocess.Popen(command, shell=True, env=env, start_new_session=True,
                              stdout=sys.stderr if json_out else None)
    try:
        code = driver.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(driver.pid, signal.SIGTERM)
        try:
            driver.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
        return None
    except BaseException:  # Ctrl-C: the driver goes too, then the session is closed
        os.killpg(driver.pid, signal.SIGTERM)
        driver.wait()
        raise
    return 128 - code if code < 0 else code
