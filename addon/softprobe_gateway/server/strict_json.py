"""JSON parsed and written as RFC 8259 has it, for the control API's strict clients.

Python's parser takes what RFC 8259 does not (NaN, Infinity, numbers beyond a double, which it
reads as infinity) and raises RecursionError on deep nesting: both become a ValueError saying why,
answered as a client error rather than a traceback, and nothing non-JSON is ever written back.
"""

from __future__ import annotations

import json
import math
from typing import Any


def loads(body: bytes | str) -> Any:
    """JSON as RFC 8259 has it; ValueError (with why) for anything else, deep nesting included."""
    try:
        return json.loads(body, parse_constant=_constant, parse_float=_finite)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def dumps(document: Any) -> bytes:
    """JSON that strict clients read: never NaN nor Infinity."""
    return json.dumps(document, allow_nan=False).encode()


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is beyond a double")
    return value
