"""Lookups through a real mitmdump against a raw-socket backend answering in real-world and
malformed framings: no request ever receives another's answer, valid hits are served whole,
malformed answers fail open (forwarded upstream) and are counted."""

from __future__ import annotations

import concurrent.futures

from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from testkit.lookups import answer, inject_by_path, lookup_config, lookups
from testkit.raw_backend import MALFORMED, VALID, Answer, RawBackend, framed
from testkit.support import LOOPBACK, Gateway, OtlpBackend, attributes, free_port, server_tls


def recorded(request: bytes) -> Answer:
    """The lookup backend: the looked-up path names the framing; the hit carries the request's
    own (unique) body back, so any answer that reached the wrong request is visible."""
    span = TracesData.FromString(request).resource_spans[0].scope_spans[0].spans[0]
    attrs = attributes(span.attributes)
    case = attrs["url.path"].strip("/")
    hit = answer(200, {"content-type": "text/plain"}, f"recorded for {attrs['http.request.body']}")
    return framed(case, hit)


def test_every_framing_through_the_gateway(tmp_path, upstream):
    cases = VALID + MALFORMED
    # Bodies of 16 KiB: a close-delimited or trickled hit arrives in many reads, and must arrive whole.
    requests = [(cases[i % len(cases)], f"unique-body-{i}:" + "x" * 16384) for i in range(3 * len(cases))]
    admin = free_port()
    with RawBackend(recorded) as backend, \
            Gateway(lookup_config(backend.url, admin, timeout_ms=5000), tmp_path,
                    mode=f"reverse:{upstream.url}") as gw:
        def one(request: tuple[str, str]) -> str:
            case, body = request
            with gw.client(timeout=10) as client:
                return client.post(f"/{case}", content=body, headers={"content-type": "text/plain"}).text

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            texts = list(pool.map(one, requests))
        counted = {o: lookups(gw, admin, o) for o in ("hit", "bad_answer", "connect_error", "timeout")}

    expected = [f"recorded for {body}" if case in VALID else f"upstream saw POST /{case}"
                for case, body in requests]
    wrong = [(r[0], r[1][:20], t[:40]) for r, t, e in zip(requests, texts, expected) if t != e]
    foreign = [t for *_, t in wrong if t.startswith("recorded for")]
    print(f"{len(wrong)} of {len(requests)} answered wrongly, {len(foreign)} with another request's "
          f"recorded answer; lookups {counted}")
    assert wrong == []
    malformed = sum(case in MALFORMED for case, _ in requests)
    assert counted == {"hit": len(requests) - malformed, "bad_answer": malformed,
                       "connect_error": 0, "timeout": 0}
    assert len(upstream.received) == malformed


def test_a_private_ca_in_ssl_cert_file_is_trusted_by_lookups_and_exports(tmp_path, upstream):
    """One HTTPS backend answering lookups and taking exports, its certificate from a private CA
    that only SSL_CERT_FILE names (as a pod mounts it): both paths trust it (one TLS context)."""
    ca, tls = server_tls(tmp_path, LOOPBACK)
    admin = free_port()
    with OtlpBackend(inject=inject_by_path) as backend:
        backend.server.socket = tls.wrap_socket(backend.server.socket, server_side=True)
        config = lookup_config(f"https://{LOOPBACK}:{backend.port}", admin)
        with Gateway(config, tmp_path, mode=f"reverse:{upstream.url}", env={"SSL_CERT_FILE": str(ca)}) as gw, \
                gw.client() as client:
            hit = client.get("/hit-text")
            miss = client.get("/not-recorded")
            exported = backend.wait_spans(2)
            counted = {o: lookups(gw, admin, o) for o in ("hit", "miss", "connect_error")}
    assert hit.text == "hello from the recording" and miss.text == "upstream saw GET /not-recorded"
    assert counted == {"hit": 1, "miss": 1, "connect_error": 0}
    assert sorted(span.name for _, span in exported) == ["/hit-text", "/not-recorded"]
