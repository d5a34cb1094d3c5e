"""Routing decisions: caller identity, mesh-header stripping, TLS origination, the loop guard."""

from __future__ import annotations

import base64

import pytest
from google.protobuf import struct_pb2
from hypothesis import given
from hypothesis import strategies as st
from mitmproxy import http
from mitmproxy.test import tutils
from softprobe_gateway.config.loader import load_config
from softprobe_gateway.config.schema import ConfigError, RoutingConfig, TlsUpstream
from softprobe_gateway.decisions.head import header_map
from mitmproxy.net.http import url
from softprobe_gateway.proxy.routing import Router, authority_host, caller_service, listen_addresses

LISTEN = [("", 8080)]


def peer_metadata(**fields: object) -> str:
    """What an Istio sidecar sends: a base64 protobuf Struct."""
    struct = struct_pb2.Struct()
    struct.update(fields)
    return base64.b64encode(struct.SerializeToString()).decode()


def mesh_request(host: str = "api.example.test", port: int = 80, **headers: str) -> http.Request:
    """An origin-form request as Envoy forwards it to the gateway's Service."""
    hdrs = http.Headers(host=host if port == 80 else f"{host}:{port}", **headers)
    return tutils.treq(host=host, port=port, headers=hdrs)


def router(**routing: object) -> Router:
    return Router(RoutingConfig(**routing), LISTEN, hostname="gw-pod-0", gateway_id="softprobe-test")


# -- caller identity --------------------------------------------------------------------------


@pytest.mark.parametrize("fields, expected", [
    ({"NAME": "front-7d9f-x", "WORKLOAD_NAME": "front", "NAMESPACE": "travel",
      "LABELS": {"app": "front-app", "service.istio.io/canonical-name": "front"}}, "front"),
    ({"WORKLOAD_NAME": "airline", "LABELS": {"app.kubernetes.io/name": "airline-api", "app": "x"}},
     "airline-api"),
    ({"NAME": "pod-1", "WORKLOAD_NAME": "checkout", "LABELS": {"version": "v1"}}, "checkout"),
    ({"NAME": "lonely-pod"}, "lonely-pod"),
    # A label that is not a plausible name falls through to the next candidate.
    ({"WORKLOAD_NAME": "pay", "LABELS": {"app": "bad name\n"}}, "pay"),
    ({"NAMESPACE": "travel"}, None),
    ({"LABELS": "not-a-struct", "NAME": 3}, None),
])
def test_caller_service_reads_istio_peer_metadata(fields: dict, expected: str | None) -> None:
    assert caller_service(peer_metadata(**fields)) == expected


@pytest.mark.parametrize("value", [
    "", "not base64!", base64.b64encode(b"\xff\xfe garbage").decode(),
    peer_metadata(NAME="x" * 300),  # longer than any Kubernetes name
    "A" * (128 * 1024),  # decodes, but far beyond real metadata
])
def test_caller_service_rejects_garbage(value: str) -> None:
    assert caller_service(value) is None


@given(st.binary(max_size=512))
def test_caller_service_never_raises_on_hostile_bytes(raw: bytes) -> None:
    name = caller_service(base64.b64encode(raw).decode())
    assert name is None or 0 < len(name) <= 253


def test_router_caller_uses_the_header_only() -> None:
    r = router()
    assert r.caller(http.Headers(**{"x-envoy-peer-metadata": peer_metadata(WORKLOAD_NAME="front")})) == "front"
    assert r.caller(http.Headers(host="api.example.test")) is None


# -- forwarding -------------------------------------------------------------------------------


def route(r: Router, request: http.Request) -> str | None:
    """`Router.route` as the recorder calls it: with the head read once (`decisions.head`), then
    the fields forwarded written once (nothing set in place here)."""
    if refusal := r.route(request, header_map(request.headers.fields)):
        return refusal
    request.headers.fields = r.forwarded(request.headers.fields, {}, request.http_version)
    return None


def test_fields_set_replace_those_of_their_name_after_the_via_hop() -> None:
    req = mesh_request(**{"TraceState": "a=1", "x-envoy-attempt-count": "1", "via": "1.1 envoy", "accept": "*/*"})
    fields = router().forwarded(req.headers.fields, {"tracestate": "b=2", "x-sp-num": "1"}, "HTTP/2.0")
    assert fields == ((b"host", b"api.example.test"), (b"via", b"1.1 envoy"), (b"accept", b"*/*"),
                      (b"via", b"2.0 softprobe-test"), (b"tracestate", b"b=2"), (b"x-sp-num", b"1"))


def test_mesh_headers_are_stripped_and_a_via_hop_added() -> None:
    req = mesh_request(**{"x-envoy-peer-metadata": "abc", "x-envoy-peer-metadata-id": "sidecar~1",
                          "X-Envoy-Attempt-Count": "1", "x-sp-service-name": "front", "accept": "*/*"})
    assert route(router(), req) is None
    assert [k.lower() for k in req.headers] == ["host", "x-sp-service-name", "accept", "via"]
    assert req.headers["via"] == "1.1 softprobe-test"


def test_strip_prefixes_come_from_config() -> None:
    req = mesh_request(**{"x-envoy-decorator-operation": "op", "x-b3-traceid": "1"})
    assert route(router(strip_header_prefixes=("x-b3-",)), req) is None
    assert "x-envoy-decorator-operation" in req.headers and "x-b3-traceid" not in req.headers


def test_tls_is_originated_for_configured_hosts_only() -> None:
    r = router(tls_upstreams=(TlsUpstream(host=r"^api\.example\.test$"), TlsUpstream(host=r"\.bank\.test$", port=8443)))
    api, bank, plain = mesh_request(), mesh_request("pay.bank.test"), mesh_request("plain.test")
    for req in (api, bank, plain):
        assert route(r, req) is None
    assert (api.scheme, api.host, api.port, api.headers["host"]) == ("https", "api.example.test", 443, "api.example.test")
    assert (bank.scheme, bank.port, bank.headers["host"]) == ("https", 8443, "pay.bank.test:8443")
    assert (plain.scheme, plain.port, plain.headers["host"]) == ("http", 80, "plain.test")


def test_an_https_request_is_left_alone() -> None:
    req = tutils.treq(host="api.example.test", port=443, scheme=b"https",
                      headers=http.Headers(host="api.example.test"))
    assert route(router(tls_upstreams=(TlsUpstream(host="example", port=8443),)), req) is None
    assert (req.scheme, req.port) == ("https", 443)


def test_connect_address_overrides_only_the_tcp_destination() -> None:
    r = router(tls_upstreams=(TlsUpstream(host=r"^api\.example\.test$", connect_address="127.0.0.1:9443"),
                              TlsUpstream(host="other.test")))
    assert r.connect_address(("api.example.test", 443)) == ("127.0.0.1", 9443)
    assert r.connect_address(("api.example.test", 8443)) is None
    assert r.connect_address(("other.test", 443)) is None
    assert Router(RoutingConfig(tls_upstreams=(TlsUpstream(host="x", connect_address="[::1]:9443"),)),
                  LISTEN).connect_address(("x", 443)) == ("::1", 9443)


# -- the loop guard ---------------------------------------------------------------------------


@pytest.mark.parametrize("host, port", [
    ("127.0.0.1", 8080), ("localhost", 8080), ("::1", 8080), ("gw-pod-0", 8080),
    ("softprobe-gateway.softprobe.svc.cluster.local", 8080),
    ("SOFTPROBE-GATEWAY.softprobe.svc.cluster.local.", 80),  # any port, any case, trailing dot
])
def test_a_request_for_the_gateway_itself_is_refused(host: str, port: int) -> None:
    r = router(self_hosts=("softprobe-gateway.softprobe.svc.cluster.local",))
    req = mesh_request(host, port, **{"x-envoy-peer-metadata-id": "x"})
    error = route(r, req)
    assert error and f"{host}:{port}" in error and "this gateway itself" in error
    assert "curl -x" in error  # a laptop user who called the proxy port directly learns how to use it
    assert "x-envoy-peer-metadata-id" in req.headers  # refused requests are not prepared further


@pytest.mark.parametrize("host, port", [("127.0.0.1", 8081), ("airline.travel", 8080), ("gw-pod-1", 8080)])
def test_other_local_services_are_not_loops(host: str, port: int) -> None:
    assert route(router(), mesh_request(host, port)) is None


def test_a_connect_address_at_the_gateway_is_a_loop() -> None:
    r = router(tls_upstreams=(TlsUpstream(host="api", port=8080, connect_address="127.0.0.1:8080"),))
    assert "127.0.0.1:8080" in (route(r, mesh_request()) or "")


def test_a_request_that_already_went_through_is_refused() -> None:
    r = router()
    first = mesh_request()
    assert route(r, first) is None
    second = mesh_request(via=first.headers["via"])
    assert "already went through this gateway" in (route(r, second) or "")
    # Another gateway's hop is not a loop: gateways may be chained.
    assert route(r, mesh_request(via="1.1 softprobe-0ther, 1.1 envoy")) is None


def test_listen_addresses_follow_mitmproxy_mode_specs() -> None:
    modes = ["regular@8080", "reverse:http://app:9000@127.0.0.1:8081", "regular"]
    assert listen_addresses(modes, "", None) == [("", 8080), ("127.0.0.1", 8081), ("", 8080)]
    assert listen_addresses(["regular"], "0.0.0.0", 3128) == [("0.0.0.0", 3128)]


def test_routing_config_is_validated(tmp_path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("routing:\n  tls_upstreams:\n    - host: api\n      connect_address: nowhere\n")
    with pytest.raises(ConfigError, match="routing.tls_upstreams\\[0\\].connect_address"):
        load_config(path)
    path.write_text("routing:\n  self_hosts: [gw.ns.svc.cluster.local]\n  tls_upstreams: [{host: '^api$', port: 8443}]\n")
    routing = load_config(path).routing
    assert routing.self_hosts == ("gw.ns.svc.cluster.local",)
    assert routing.tls_upstreams == (TlsUpstream(host="^api$", port=8443),)


@pytest.mark.parametrize("authority", [
    "api.example.test", "api.example.test:8443", "127.0.0.1:80", "[::1]:8080", "[2001:db8::1]", "gw-0:8080",
    "Upper.Example:1", "[abc", "::1", "host:", ":80", "",
])
def test_authority_host_agrees_with_mitmproxy_on_valid_hosts(authority: str) -> None:
    """The host mitmproxy's own parser finds wherever it accepts the host; whole when unparsable."""
    parsed, _ = url.parse_authority(authority, check=False)
    assert authority_host(authority) == parsed


@pytest.mark.parametrize("authority, host", [("example.com:99999", "example.com"), ("a..b:80", "a..b"),
                                             ("abc]:80", "abc]")])
def test_authority_host_does_not_validate(authority: str, host: str) -> None:
    """Where mitmproxy refuses the host or port (and keeps the authority whole), only the syntax counts."""
    assert authority_host(authority) == host
