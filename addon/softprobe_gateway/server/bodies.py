"""Request bodies within their limits.

A body is read at most `MAX_BODY` bytes (the OTLP exporter's own request cap), within a deadline
(a client sending a byte now and then must not hold its connection for ever), chunked or not (the
HTTP parser decodes the framing), then gunzipped within the same cap.
"""

from __future__ import annotations

import asyncio
import zlib
from http import HTTPStatus

from starlette.requests import ClientDisconnect, Request

MAX_BODY = 64 * 1024 * 1024


class BadRequest(ValueError):
    """A client error, answered 4xx with this message (`close`: the connection too)."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST, close: bool = False) -> None:
        super().__init__(message)
        self.status, self.close = status, close


async def read(request: Request, timeout: float) -> bytes:
    """The request's body, decoded from gzip when sent so; BadRequest beyond the limits."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY:
        raise BadRequest(f"body over {MAX_BODY} bytes", HTTPStatus.REQUEST_ENTITY_TOO_LARGE, close=True)
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_BODY:
                    raise BadRequest(f"body over {MAX_BODY} bytes", HTTPStatus.REQUEST_ENTITY_TOO_LARGE, close=True)
                chunks.append(chunk)
    except TimeoutError:
        raise BadRequest(f"body not received within {timeout:g} s", HTTPStatus.REQUEST_TIMEOUT, close=True) from None
    except ClientDisconnect:
        raise BadRequest("the client went away", close=True) from None
    return gunzip(b"".join(chunks), request.headers.get("content-encoding", "identity").lower())


def gunzip(body: bytes, encoding: str) -> bytes:
    if encoding == "identity":
        return body
    if encoding != "gzip":
        raise BadRequest(f"unsupported content-encoding {encoding!r}", HTTPStatus.UNSUPPORTED_MEDIA_TYPE)
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        data = inflater.decompress(body, MAX_BODY + 1)
    except zlib.error as e:
        raise BadRequest(f"bad gzip body: {e}") from None
    if len(data) > MAX_BODY:
        raise BadRequest(f"body over {MAX_BODY} bytes", HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
    return data
