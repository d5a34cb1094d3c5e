"""Where a request goes once the mesh has handed it to the gateway.

In mesh-egress mode Istio sends the app's plain HTTP for an external host to the gateway's
Service; the gateway reads who called (the sidecar's peer metadata), removes what the mesh added,
originates verified TLS for configured hosts, and refuses anything that would come back into
itself. `Router` is compiled once per config; its methods are cheap and never block.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from google.protobuf import struct_pb2
from google.protobuf.message import DecodeError
from mitmproxy import http
from mitmproxy.net.http import url
from mitmproxy.proxy.mode_specs import ProxyMode, RegularMode, UpstreamMode

from softprobe_gateway.config.schema import RoutingConfig, TlsUpstream

Address = tuple[str, int]

PEER_METADATA_HEADER = "x-envoy-peer-metadata"
# Real peer metadata is a few KiB; anything far larger is not worth decoding.
MAX_PEER_METADATA = 64 * 1024
# Istio's own order for naming a workload's service (canonical name first), then the workload.
SERVICE_LABELS = ("service.istio.io/canonical-name", "app.kubernetes.io/name", "app")
SERVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "0.0.0.0", "::"})
# One per process: a request already carrying it in `Via` has been through this gateway.
GATEWAY_ID = f"softprobe-{secrets.token_hex(4)}"


def listen_addresses(modes: Sequence[str], listen_host: str, listen_port: int | None) -> list[Address]:
    """The (host, port) of every proxy listener mitmproxy opens for these options."""
    addresses = []
    for spec in modes:
        mode = ProxyMode.parse(spec)
        port = mode.listen_port(listen_port)
        if port is not None:
            addresses.append((mode.listen_host(listen_host), port))
    return addresses


def request_authority(request: http.Request, mode: ProxyMode, head: Mapping[str, str]) -> str:
    """Where the client addressed the request (`host[:port]`), the identity it is recorded and
    looked up under: HTTP/2's `:authority`; for HTTP/1 through the explicit proxy the request
    target, which mitmproxy has resolved into `host` and `port` (from the absolute-form URL, else
    from `Host`), never a `Host` that disagrees with it (RFC 9112, section 3.2.2: Node's `http`
    sends the proxy's own address there); in the other modes the `Host` the client sent (`head`,
    the request's fields read once: `decisions.head`)."""
    if (request.is_http2 or request.is_http3) and request.authority:
        return request.authority
    if not isinstance(mode, (RegularMode, UpstreamMode)) and (host := head.get("host")):
        return host
    return url.hostport(request.scheme, request.host, request.port)


# mitmproxy's own authority syntax (`net.http.url`), without its host validation: a host is
# matched against rules, never resolved here.
_AUTHORITY = re.compile(r"(?P<host>[^:]+|\[.+\])(?::\d+)?")


def authority_host(authority: str) -> str:
    """The host of a `host[:port]` authority (IPv6 brackets removed); one that does not parse,
    whole. Unlike mitmproxy's `parse_authority` it does not check the host (characters, IDNA) nor
    the port's range: what it returns is only compared with rules, never resolved."""
    m = _AUTHORITY.fullmatch(authority)
    if m is None:
        return authority
    host = m["host"]
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def caller_service(peer_metadata: str) -> str | None:
    """The calling workload's service name from Istio's `x-envoy-peer-metadata`, None if unusable.

    The header is a base64 protobuf `google.protobuf.Struct` (NAME, WORKLOAD_NAME, NAMESPACE,
    LABELS, ...). It comes from whoever reached the gateway, so it is treated as hostile.
    """
    if not peer_metadata or len(peer_metadata) > MAX_PEER_METADATA:
        return None
    try:
        peer = struct_pb2.Struct.FromString(base64.b64decode(peer_metadata, validate=True))
    except (binascii.Error, ValueError, DecodeError, RecursionError):
        return None
    fields = peer.fields
    labels = fields["LABELS"].struct_value.fields if "LABELS" in fields else {}
    candidates = [labels[k] for k in SERVICE_LABELS if k in labels]
    candidates += [fields[k] for k in ("WORKLOAD_NAME", "NAME") if k in fields]
    for value in candidates:
        name = value.string_value.strip()
        if SERVICE_NAME.fullmatch(name):
            return name
    return None


@dataclass(frozen=True)
class _TlsRoute:
    host: re.Pattern[str]
    port: int
    connect: Address | None


def _compile_tls(upstream: TlsUpstream) -> _TlsRoute:
    connect = None
    if upstream.connect_address:
        host, _, port = upstream.connect_address.rpartition(":")
        connect = (host.strip("[]"), int(port))
    return _TlsRoute(re.compile(upstream.host, re.IGNORECASE), upstream.port, connect)


def _norm(host: str) -> str:
    return host.strip("[]").rstrip(".").lower()


class Router:
    """Routing decisions for one config and one set of listeners."""

    def __init__(self, config: RoutingConfig, listen: Iterable[Address],
                 hostname: str = socket.gethostname(), gateway_id: str = GATEWAY_ID) -> None:
        listen = list(listen)
        self.tls = [_compile_tls(u) for u in config.tls_upstreams]
        self._strip_prefixes = tuple(p.lower().encode("latin-1") for p in config.strip_header_prefixes)
        self.self_hosts = frozenset(_norm(h) for h in config.self_hosts)
        self.local_hosts = LOCAL_HOSTS | {_norm(hostname)} | {_norm(h) for h, _ in listen if h}
        self.listen_ports = frozenset(p for _, p in listen)
        self.gateway_id = gateway_id

    def caller(self, headers: Mapping[str, str]) -> str | None:
        """The calling mesh workload's service name, from the head as it arrived (`route` strips the header)."""
        return caller_service(headers.get(PEER_METADATA_HEADER, ""))

    def client_fields(self, fields: Sequence[tuple[bytes, bytes]]) -> tuple[tuple[bytes, bytes], ...]:
        """The fields the client sent, as they are recorded: taken before `route` adds the
        gateway's `Via`, without the mesh's own (`x-envoy-*`, which the sidecar added)."""
        return tuple(f for f in fields if not f[0].lower().startswith(self._strip_prefixes))

    def route(self, request: http.Request, head: Mapping[str, str]) -> str | None:
        """Prepare `request` for its upstream (TLS origination; its fields: `forwarded`); return
        why it must be refused (a loop), else None. `head`: its fields as they arrived, read once
        (`decisions.head`)."""
        if self.gateway_id in head.get("via", ""):
            return f"refusing a request that already went through this gateway ({self.gateway_id})"
        tls = self._tls_route(request) if request.scheme == "http" else None
        if tls:
            request.scheme = "https"
            request.port = tls.port  # also rewrites the Host header for the new scheme/port
        targets = [(request.host, request.port)] + ([tls.connect] if tls and tls.connect else [])
        for host, port in targets:
            if self._is_self(host, port):
                return (f"refusing to forward to {host}:{port}: that is this gateway itself (as a proxy it takes "
                        "the full URL: curl -x http://GATEWAY URL; in a mesh, check the "
                        f"VirtualService/ServiceEntry that sent {request.pretty_host} here)")
        return None

    def forwarded(self, fields: Sequence[tuple[bytes, bytes]], replacing: Mapping[str, str],
                  http_version: str) -> tuple[tuple[bytes, bytes], ...]:
        """The fields a routed request goes upstream with, for one write of `headers.fields` (each
        `headers[name] = value` rebuilds them all): without the mesh's own (`strip_header_prefixes`),
        this gateway's `Via` hop added, each of `replacing` (lower-case names) set in place of the
        fields of its name."""
        names = {name.encode() for name in replacing}
        version = http_version.partition("/")[2] or http_version
        return (tuple(f for f in fields if not ((name := f[0].lower()) in names or name.startswith(self._strip_prefixes)))
                + ((b"via", f"{version} {self.gateway_id}".encode()),)
                + tuple((name.encode(), value.encode("utf-8", "surrogateescape")) for name, value in replacing.items()))

    def connect_address(self, address: Address) -> Address | None:
        """Where to open the TCP connection for a TLS upstream at `address`, None for as-is."""
        for tls in self.tls:
            if tls.connect and tls.port == address[1] and tls.host.search(address[0]):
                return tls.connect
        return None

    def _tls_route(self, request: http.Request) -> _TlsRoute | None:
        if not self.tls:
            return None
        host = request.host
        return next((t for t in self.tls if t.host.search(host)), None)

    def _is_self(self, host: str, port: int) -> bool:
        host = _norm(host)
        return host in self.self_hosts or (host in self.local_hosts and port in self.listen_ports)
