"""A raw-socket HTTP/1.1 backend on loopback that answers the way real servers (and broken ones)
do: interim `1xx` answers, bodies delimited by the connection's close, trickled pieces, chunked
bodies with trailers, and malformed framing. Every answer is written byte for byte by the test.

It also serves as the wire-level answers' catalogue: `framed(case, body)` builds one answer
carrying `body` in the framing named `case`; `SMUGGLED` is what a lenient parser would read as
the NEXT request's answer after a malformed one.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from testkit.support import LOOPBACK


@dataclass
class Answer:
    pieces: list[bytes]          # written one by one, `delay` seconds apart
    delay: float = 0.0
    close: bool = False          # close the connection after the last piece


# Appended after each malformed answer: a complete answer a lenient parser would hand to the
# next request on the same connection, one client's data served to another.
SMUGGLED_BODY = b"SMUGGLED: another request's answer"
SMUGGLED = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(SMUGGLED_BODY), SMUGGLED_BODY)

VALID = ["early-hints", "continue", "close-delimited", "chunked-trickle", "content-length"]
MALFORMED = ["chunk-minus", "chunk-0x", "chunk-underscore", "chunk-no-crlf", "duplicate-length",
             "length-and-chunked", "bare-lf"]


def framed(case: str, body: bytes) -> Answer:
    """`body` answered (status 200) in the framing `case` names."""
    n = len(body)
    if case == "content-length":
        return Answer([b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (n, body)])
    if case == "early-hints":
        return Answer([b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n",
                       b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (n, body)], delay=0.01)
    if case == "continue":
        return Answer([b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                       b"%x\r\n%s\r\n0\r\n\r\n" % (n, body)])
    if case == "close-delimited":
        quarter = max(1, n // 4)
        return Answer([b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\n\r\n"]
                      + [body[i:i + quarter] for i in range(0, n, quarter)], delay=0.02, close=True)
    if case == "chunked-trickle":
        half = n // 2
        wire = (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                b"%x;ext=1\r\n%s\r\n%x\r\n%s\r\n0\r\nx-checksum: 1\r\n\r\n"
                % (half, body[:half], n - half, body[half:]))
        step = max(7, len(wire) // 32)
        return Answer([wire[i:i + step] for i in range(0, len(wire), step)], delay=0.001)
    # Malformed framings, each followed by a smuggled answer a lenient parser would take.
    head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    if case == "chunk-minus":   # int("-0", 16) == 0: a lenient parser ends the body here
        wire = head + b"-0\r\n\r\n" + SMUGGLED
    elif case == "chunk-0x":    # int("0x5", 16) == 5
        wire = head + b"0x5\r\nhello\r\n0\r\n\r\n" + SMUGGLED
    elif case == "chunk-underscore":  # int("0_5", 16) == 5
        wire = head + b"0_5\r\nhello\r\n0\r\n\r\n" + SMUGGLED
    elif case == "chunk-no-crlf":    # h11 0.14 discards the two bytes after a chunk unchecked
        wire = head + b"5\r\nhelloXX0\r\n\r\n" + SMUGGLED
    elif case == "duplicate-length":  # first or last value wins in a lenient parser
        wire = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 7\r\n\r\nhello\r\n" + SMUGGLED
    elif case == "length-and-chunked":
        wire = (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n"
                b"0\r\n\r\n" + SMUGGLED)
    elif case == "bare-lf":      # a header line ended by LF alone
        wire = b"HTTP/1.1 200 OK\r\ncontent-length: 0\nx: 1\r\n\r\n" + SMUGGLED
    else:
        raise ValueError(case)
    return Answer([wire])


class RawBackend:
    """Threaded keep-alive server: reads each request (content-length body) and writes
    `script(body)`'s answer piece by piece. Counts connections, and the most open at once."""

    def __init__(self, script: Callable[[bytes], Answer], host: str = LOOPBACK) -> None:
        self.script = script
        self.connections = 0
        self.peak = 0
        self.sock = socket.create_server((host, 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self._open: set[socket.socket] = set()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            self._open.add(conn)
            self.peak = max(self.peak, len(self._open))
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffer = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                while len(buffer) < length:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                body, buffer = buffer[:length], buffer[length:]
                answer = self.script(body)
                for i, piece in enumerate(answer.pieces):
                    if i and answer.delay:
                        time.sleep(answer.delay)
                    conn.sendall(piece)
                if answer.close:
                    return
        except OSError:
            pass
        finally:
            self._open.discard(conn)
            conn.close()

    def close(self) -> None:
        self.sock.close()
        for conn in list(self._open):
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self) -> RawBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
