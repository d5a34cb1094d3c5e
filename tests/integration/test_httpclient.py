"""The lookup's HTTP/1.1 client against real loopback servers answering in every framing."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData
from softprobe_gateway.backends.contract import LookupFailure
from softprobe_gateway.backends.http import HttpLookups
from softprobe_gateway.backends.httpclient import AnswerTooLarge, PostClient, ProtocolError

from testkit.raw_backend import MALFORMED, SMUGGLED, VALID, Answer, RawBackend, framed
from testkit.support import LOOPBACK, ROOT, server_tls


async def serve(answers: list[bytes], tls: ssl.SSLContext | None = None):
    """A server that answers each request (head and content-length body read) with the next of
    `answers`, closing the connection after answers that say `connection: close`."""
    state = {"connections": 0, "requests": []}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state["connections"] += 1
        try:
            while answers:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next(l.split(b":")[1] for l in head.split(b"\r\n")
                                  if l.lower().startswith(b"content-length")))
                state["requests"].append((head, await reader.readexactly(length)))
                answer = answers.pop(0)
                writer.write(answer)
                await writer.drain()
                if b"connection: close" in answer.lower() or b"content-length" not in answer.lower() \
                        and b"chunked" not in answer.lower():
                    break
        except asyncio.IncompleteReadError:
            pass
        writer.close()

    server = await asyncio.start_server(handle, LOOPBACK, 0, ssl=tls)
    return server, server.sockets[0].getsockname()[1], state


def run(coro):
    return asyncio.run(coro)


def test_keep_alive_content_length_and_chunked():
    async def main():
        server, port, state = await serve([
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nx-trailer: 1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
        ])
        client = PostClient(f"http://{LOOPBACK}:{port}/prefix/v1/inject", {"x-public-key": "k"})
        results = [await client.post(b"body-%d" % i, 100) for i in range(3)]
        await client.aclose()
        server.close()
        return results, state

    results, state = run(main())
    assert results == [(404, b""), (200, b"abcde"), (200, b"hello")]
    assert state["connections"] == 1                      # one kept-alive connection for all three
    head, body = state["requests"][0]
    assert head.startswith(b"POST /prefix/v1/inject HTTP/1.1\r\n") and b"x-public-key: k" in head
    assert body == b"body-0"


def test_a_closed_idle_connection_is_replaced_once():
    async def main():
        server, port, state = await serve([
            b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\nconnection: close\r\n\r\na",
            b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nb",
        ])
        client = PostClient(f"http://{LOOPBACK}:{port}/", {})
        first = await client.post(b"1", 10)
        second = await client.post(b"2", 10)
        server.close()
        return first, second, state

    first, second, state = run(main())
    assert (first, second) == ((200, b"a"), (200, b"b")) and state["connections"] == 2


def test_a_body_delimited_by_close_and_limits():
    async def main():
        server, port, _ = await serve([b"HTTP/1.0 200 OK\r\n\r\nuntil-close",
                                       b"HTTP/1.1 200 OK\r\ncontent-length: 999999\r\n\r\n",
                                       b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nff\r\n",
                                       b"SMTP ready\r\n\r\n"])
        client = PostClient(f"http://{LOOPBACK}:{port}/", {})
        out = [await client.post(b"", 100)]
        for _ in range(3):
            try:
                await client.post(b"", 100)
            except (AnswerTooLarge, ProtocolError) as e:
                out.append(type(e).__name__)
        server.close()
        return out

    assert run(main()) == [(200, b"until-close"), "AnswerTooLarge", "AnswerTooLarge", "ProtocolError"]


def test_https_verifies_the_backend_certificate(tmp_path, monkeypatch):
    ca, tls = server_tls(tmp_path, LOOPBACK)

    async def main(trusted: bool):
        server, port, _ = await serve([b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"], tls)
        if trusted:
            monkeypatch.setenv("SSL_CERT_FILE", str(ca))   # OpenSSL's default trust, as in a pod
        client = PostClient(f"https://{LOOPBACK}:{port}/v1/inject", {})
        try:
            return await client.post(b"x", 10)
        finally:
            server.close()

    with pytest.raises(ssl.SSLCertVerificationError):
        run(main(trusted=False))
    assert run(main(trusted=True)) == (200, b"ok")


def test_a_failed_lookup_names_its_cause(tmp_path):
    """The log line of a lookup that failed to connect says why (here: an untrusted certificate)."""
    _, tls = server_tls(tmp_path, LOOPBACK)

    async def main():
        server, port, _ = await serve([], tls)
        lookups = HttpLookups(f"https://{LOOPBACK}:{port}", "", 1024)
        try:
            await lookups.ask(TracesData())
        except LookupFailure as e:
            return e.outcome, str(e)
        finally:
            await lookups.aclose()
            server.close()

    outcome, detail = run(main())
    assert outcome == "connect_error" and "CERTIFICATE_VERIFY_FAILED" in detail, detail


# -- against a raw-socket backend: real-world and malformed framings --------------------------


def by_case(body: bytes) -> Answer:
    """Request bodies are `CASE ID`: answer `answer:CASE ID` in that case's framing."""
    return framed(body.split(b" ")[0].decode(), b"answer:" + body)


def test_no_request_ever_receives_another_requests_answer():
    """Every framing, sequential and 8 at a time over the pool: valid answers arrive whole and
    belong to their request; malformed ones are refused (and the smuggled answer behind them,
    which a lenient parser would give to the next request, reaches no one)."""
    cases = VALID + MALFORMED
    bodies = [f"{cases[i % len(cases)]} id-{i}".encode() for i in range(6 * len(cases))]

    async def main(parallel: int):
        client = PostClient(f"{backend.url}/v1/inject", {}, max_connections=4)
        gate = asyncio.Semaphore(parallel)

        async def one(body: bytes):
            async with gate:
                try:
                    return await client.post(body, 4096)
                except ProtocolError:
                    return "refused"
        out = await asyncio.gather(*(one(b) for b in bodies))
        await client.aclose()
        return out

    with RawBackend(by_case) as backend:
        for parallel in (1, 8):
            results = run(main(parallel))
            wrong = [(b, r) for b, r in zip(bodies, results)
                     if r != ("refused" if b.split(b" ")[0].decode() in MALFORMED else (200, b"answer:" + b))]
            assert wrong == [], f"{len(wrong)} of {len(bodies)} wrong with {parallel} in parallel: {wrong[:3]}"
        assert backend.connections <= 2 * (4 + 8 * 6)   # a pool of 4, plus one per refused or close-delimited answer


def test_a_retry_only_when_nothing_of_the_answer_was_read():
    """A reused connection closed after the request: retried once on a new one. Closed after
    part of the answer: not retried (the server may have acted on it), an error."""
    seen: list[bytes] = []

    def script(body: bytes) -> Answer:
        seen.append(body)
        if body == b"drop-silently" and seen.count(body) == 1:
            return Answer([], close=True)
        if body == b"drop-mid-answer":
            return Answer([b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc"], close=True)
        return framed("content-length", body)

    async def main():
        client = PostClient(backend.url, {})
        out = [await client.post(b"warm", 100), await client.post(b"drop-silently", 100)]
        await client.post(b"warm", 100)
        try:
            await client.post(b"drop-mid-answer", 100)
        except ProtocolError as e:
            out.append(str(e))
        return out

    with RawBackend(script) as backend:
        first, retried, error = run(main())
    assert first == (200, b"warm") and retried == (200, b"drop-silently")
    assert seen.count(b"drop-silently") == 2 and seen.count(b"drop-mid-answer") == 1
    assert "mid-answer" in error


def test_an_idle_connection_that_received_anything_is_not_reused():
    """A stray answer arriving on an idle connection must not answer the next request."""
    def script(body: bytes) -> Answer:
        return Answer([framed("content-length", body).pieces[0], SMUGGLED], delay=0.05)

    async def main():
        client = PostClient(backend.url, {})
        first = await client.post(b"one", 100)
        (idle,) = client.idle
        async with asyncio.timeout(5):           # the stray answer arrives while idle: dropped
            while not idle.closed:
                await asyncio.sleep(0.005)
        return first, await client.post(b"two", 100)

    with RawBackend(script) as backend:
        assert run(main()) == ((200, b"one"), (200, b"two"))
        assert backend.connections == 2


def test_close_delimited_answers_are_read_whole_and_capped():
    async def main():
        client = PostClient(backend.url, {})
        whole = await client.post(b"close-delimited " + b"x" * 3000, 4096)
        try:
            await client.post(b"close-delimited " + b"x" * 5000, 4096)
        except AnswerTooLarge:
            return whole, "AnswerTooLarge"

    with RawBackend(by_case) as backend:
        whole, capped = run(main())
    assert whole == (200, b"answer:close-delimited " + b"x" * 3000) and capped == "AnswerTooLarge"


def test_the_pool_is_bounded():
    """12 lookups at once over a pool of 3: never more than 3 connections open at the server."""
    async def main():
        client = PostClient(backend.url, {}, max_connections=3)
        # close-delimited: one connection per answer, each trickled for ~60 ms
        results = await asyncio.gather(*(client.post(b"close-delimited %d" % i, 100) for i in range(12)))
        await client.aclose()
        return results

    with RawBackend(by_case) as backend:
        assert run(main()) == [(200, b"answer:close-delimited %d" % i) for i in range(12)]
        assert backend.connections == 12 and backend.peak <= 3


def test_the_client_benchmark_runs():
    """`python -m bench.lookup_client --quick` (docs/lookups-and-replay.md's figures come from its full run)."""
    done = subprocess.run([sys.executable, "-m", "bench.lookup_client", "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rows = [line.split("|")[1:3] for line in done.stdout.splitlines()[2:]]
    assert {(c.strip(), s.strip()) for c, s in rows} == {
        (c, s) for c in ("softprobe", "h11", "httpx") for s in ("1 KiB", "64 KiB", "1024 KiB")}
