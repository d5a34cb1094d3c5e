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


def recorded(exchange: Exchange) -> str:
    """The ids `softprobe show` takes, and whether the answer came from the gateway itself."""
    by = exchange.answered_by
    what = ("recorded" if not by else "answered by another addon, not a recording" if by == ADDON
            else f"answered by the gateway ({by}), not a recording")
    return f"{what} · session {exchange.session_id} · exchange {exchange.span_id.hex()}"


def skipped(reason: str) -> str:
    """`reason` as the label of softprobe_exchanges_skipped_total."""
    return f"not recorded ({reason})"
