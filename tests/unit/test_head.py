"""The request head read once: the same values mitmproxy's `Headers` gives, for any fields."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from mitmproxy import http

from softprobe_gateway.decisions.head import header_map

NAMES = st.sampled_from([b"Accept", b"accept", b"X-Sp-Num", b"tracestate", b"TraceParent", b"via", b"\xe9t\xe9"])
VALUES = st.binary(max_size=40).filter(lambda v: b"\r" not in v and b"\n" not in v)


@given(st.lists(st.tuples(NAMES, VALUES), max_size=12))
def test_every_lookup_matches_mitmproxys_headers(fields: list[tuple[bytes, bytes]]) -> None:
    headers, head = http.Headers(fields), header_map(fields)
    for name in {n.lower().decode("utf-8", "surrogateescape") for n, _ in fields} | {"absent", "accept"}:
        assert head.get(name) == headers.get(name)
