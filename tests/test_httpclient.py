"""The lookup's HTTP/1.1 client against real loopback servers answering in every framing."""

from __future__ import annotations

import asyncio
import ssl

import pytest

from softprobe_gateway.httpclient import AnswerTooLarge, PostClient, ProtocolError
from support import LOOPBACK, make_test_ca


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
    ca, cert, key = make_test_ca(tmp_path, LOOPBACK)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)

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
