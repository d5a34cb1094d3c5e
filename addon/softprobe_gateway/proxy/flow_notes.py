"""What the gateway did with a flow, written in its comment: where mitmweb's and the console's
users read about a flow (and what `mitmdump -w` saves with it). One short line per decision."""

from __future__ import annotations

from mitmproxy import http

from softprobe_gateway.capture.exchange import ADDON, Exchange

PREFIX = "softprobe: "


def note(flow: http.HTTPFlow, text: str) -> None:
    """Append to the flow's comment; a comment another addon or the user wrote stays first."""
    line = PREFIX + text
    flow.comment = f"{flow.comment}\n{line}" if flow.comment else line


def answered(by: str) -> str:
    """An answer that did not come from the upstream (`Exchange.answered_by`)."""
    return ("answered by another addon, not a recording" if by == ADDON
            else f"answered by the gateway ({by}), not a recording")


def recorded(exchange: Exchange) -> str:
    """The ids `softprobe show` takes, and whether the answer came from the gateway itself."""
    what = answered(exchange.answered_by) if exchange.answered_by else "recorded"
    return f"{what} · session {exchange.session_id} · exchange {exchange.span_id.hex()}"


def lost(exchange: Exchange) -> str:
    """An exchange the export queue could not take (counted in softprobe_export_dropped_spans_total)."""
    what = "not recorded (lost: the export queue was full or closed)"
    return f"{what} · {answered(exchange.answered_by)}" if exchange.answered_by else what


def skipped(reason: str) -> str:
    """`reason` as the label of softprobe_exchanges_skipped_total."""
    return f"not recorded ({reason})"
