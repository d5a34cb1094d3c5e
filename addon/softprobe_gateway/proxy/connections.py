"""The connections addon: which TLS connections keep their own TLS (relayed, not recorded) and
where a TLS upstream's TCP connection goes (`tls.upstreams[].connect_address`)."""

from __future__ import annotations

from mitmproxy import tls

from softprobe_gateway.proxy.lifecycle import Lifecycle


class Connections:
    def __init__(self, lifecycle: Lifecycle) -> None:
        self.lifecycle = lifecycle

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        """`tls.passthrough_hosts` (pinned, mutual TLS) keep their own TLS: relayed, not recorded."""
        rt = self.lifecycle.runtime
        if rt is not None and rt.passthrough(data.client_hello.sni, data.context.server.address):
            data.ignore_connection = True

    def server_connect(self, data) -> None:
        """Honour a TLS upstream's `connect_address` (SNI and verification keep the real host)."""
        rt = self.lifecycle.runtime
        if rt is not None and data.server.address is not None:
            if address := rt.router.connect_address(data.server.address):
                data.server.address = address
