"""A real grpcio server over TLS (HTTP/2), for tests/integration/test_peer_matrix.py.

Generic handlers with identity (raw bytes) serializers: no protoc, no generated code. Run as its
own process: `python grpc_peer.py --port P --cert C --key K`.

  /peer.Echo/Say      unary: answers b"hello, " + the request
  /peer.Echo/Missing  unary: fails with NOT_FOUND and details
  /peer.Echo/Count    server streaming: three messages
"""

from __future__ import annotations

import argparse
import signal
import threading
from concurrent import futures
from pathlib import Path

import grpc

SERVICE = "peer.Echo"
NOT_FOUND_DETAILS = "no such item: 42"


def say(request: bytes, context: grpc.ServicerContext) -> bytes:
    return b"hello, " + request


def missing(request: bytes, context: grpc.ServicerContext) -> bytes:
    context.abort(grpc.StatusCode.NOT_FOUND, NOT_FOUND_DETAILS)


def count(request: bytes, context: grpc.ServicerContext):
    for i in range(1, 4):
        yield b"%s #%d" % (request, i)


def handler() -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(SERVICE, {
        "Say": grpc.unary_unary_rpc_method_handler(say),
        "Missing": grpc.unary_unary_rpc_method_handler(missing),
        "Count": grpc.unary_stream_rpc_method_handler(count),
    })


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler(),))
    credentials = grpc.ssl_server_credentials([(Path(args.key).read_bytes(), Path(args.cert).read_bytes())])
    server.add_secure_port(f"{args.host}:{args.port}", credentials)
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=1).wait()


if __name__ == "__main__":
    main()
