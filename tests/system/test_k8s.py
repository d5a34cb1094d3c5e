"""The Kubernetes/Istio manifests, proven without a cluster.

Every kustomize entry point is rendered with `kubectl kustomize`; every object is validated
against its schema (core kinds with kubernetes-validate, strict; Istio kinds against the CRD
OpenAPI schemas, with unknown fields rejected as the API server's strict field validation does),
and the objects are checked against each other and against what the gateway actually reads.
"""

from __future__ import annotations

import functools
import os
import posixpath
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import kubernetes_validate
import pytest
import yaml
from softprobe_gateway.cli import ca
from softprobe_gateway.config.loader import load_config
from softprobe_gateway.config.schema import PUBLIC_KEY_ENV, Config
from softprobe_gateway.proxy.routing import listen_addresses

from testkit.serve import OVERLAY_ARGS
from testkit.support import ADDON, BIN, LOOPBACK, free_port, wait_for, wait_port

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
# Istio's CRDs (Apache-2.0, from istio/istio manifests), vendored so a clone anywhere can validate.
ISTIO_CRDS = ROOT / "tests" / "schemas" / "istio-crds.gen.yaml"
# CloudNativePG's Cluster CRD, pruned to the fields k8s/components/postgres-cluster uses (stricter).
CNPG_CRDS = ROOT / "tests" / "schemas" / "cnpg-cluster-crd.pruned.yaml"
CRD_GROUPS = (".istio.io/", "postgresql.cnpg.io/")
KUBERNETES_VERSION = "1.30"
KUBECTL = shutil.which("kubectl")

ENTRY_POINTS = {
    "egress": K8S,
    "inbound": K8S / "overlays" / "inbound",
    "explicit-proxy": K8S / "overlays" / "explicit-proxy",
    "otel-collector": K8S / "overlays" / "otel-collector",
    "embedded-backend": K8S / "overlays" / "embedded-backend",
    "postgres-backend": K8S / "overlays" / "postgres-backend",
    "postgres-in-cluster": K8S / "overlays" / "postgres-in-cluster",
    "service-name-header": K8S / "overlays" / "service-name-header",
    "examples/travel": ROOT / "examples" / "travel",
    "examples/transparent": ROOT / "examples" / "transparent",
}
# Templates users copy to create Secrets by hand; never part of a kustomization.
SECRET_TEMPLATES = [K8S / "public-key-secret.example.yaml", K8S / "store-secret.example.yaml",
                    K8S / "overlays" / "explicit-proxy" / "mitmproxy-ca-secret.example.yaml"]
GATEWAY = "softprobe-gateway"
STORE_URL_ENV = "SOFTPROBE_STORE_URL"
CNPG_APP_SECRET = "softprobe-db-app"

pytestmark = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl is not installed: install it (e.g. `apt-get install kubectl` "
    "or the cloud SDK) to render the kustomize tree; the manifests are NOT validated")


@functools.cache
def render(entry: str) -> tuple[dict[str, Any], ...]:
    out = subprocess.run([KUBECTL, "kustomize", str(ENTRY_POINTS[entry])],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def templates() -> list[dict[str, Any]]:
    return [d for path in SECRET_TEMPLATES for d in yaml.safe_load_all(path.read_text()) if d]


# -- schemas --------------------------------------------------------------------------------


def _strict(schema: Any) -> Any:
    """Reject unknown fields, as `kubectl apply` (strict field validation) does for a CRD."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [_strict(v) for v in schema]
    return schema


@functools.cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> the CRD's OpenAPI schema for that served version (Istio, CloudNativePG)."""
    schemas = {}
    crds = [crd for path in (ISTIO_CRDS, CNPG_CRDS) for crd in yaml.safe_load_all(path.read_text())]
    for crd in crds:
        if not crd or crd.get("kind") != "CustomResourceDefinition":
            continue
        spec = crd["spec"]
        for version in spec["versions"]:
            if version.get("served"):
                schema = dict(version["schema"]["openAPIV3Schema"])
                # apiVersion/kind/metadata are checked by the API server itself, not the CRD.
                schema["properties"] = {**schema["properties"], "apiVersion": {"type": "string"},
                                        "kind": {"type": "string"}, "metadata": {"type": "object"}}
                schemas[(f"{spec['group']}/{version['name']}", spec["names"]["kind"])] = _strict(schema)
    return schemas


def validate(obj: dict[str, Any]) -> None:
    name = f"{obj['kind']}/{obj['metadata']['name']}"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", obj["metadata"]["name"]), name
    if any(group in obj["apiVersion"] for group in CRD_GROUPS):
        schema = crd_schemas().get((obj["apiVersion"], obj["kind"]))
        assert schema, f"{name}: {obj['apiVersion']} {obj['kind']} is not served by the vendored CRDs"
        errors = list(jsonschema.Draft7Validator(schema).iter_errors(obj))
        assert not errors, f"{name}: " + "; ".join(
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)
    else:
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{name}: {'/'.join(map(str, e.path))}: {e.message}")


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_every_object_validates_against_its_schema(entry: str) -> None:
    objects = render(entry)
    assert objects
    for obj in objects:
        validate(obj)


def test_secret_templates_validate_and_hold_no_real_secret() -> None:
    for secret in templates():
        validate(secret)
        assert all(v.startswith("REPLACE-WITH-") for v in secret["stringData"].values())


def test_validation_rejects_what_the_api_server_would() -> None:
    """The schemas must bite: a typo'd Istio field and a bad core field both fail."""
    vs = next(o for o in render("egress") if o["kind"] == "VirtualService")
    bad_vs = {**vs, "spec": {**vs["spec"], "gateway": ["mesh"]}}
    with pytest.raises(AssertionError, match="Additional properties"):
        validate(bad_vs)
    deployment = gateway_deployment(render("egress"))
    bad = yaml.safe_load(yaml.safe_dump(deployment))
    bad["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "8080"
    with pytest.raises(pytest.fail.Exception, match="containerPort"):
        validate(bad)


# -- consistency ----------------------------------------------------------------------------


def of_kind(objects: tuple[dict[str, Any], ...], kind: str) -> Iterator[dict[str, Any]]:
    return (o for o in objects if o["kind"] == kind)


def gateway_deployment(objects: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    return next(d for d in of_kind(objects, "Deployment") if d["metadata"]["name"] == GATEWAY)


def option(args: list[str], name: str) -> str:
    """The value of `--set name=...` in the container args (the form the manifests use)."""
    return next(a.split("=", 2)[2] for a in args if a.startswith(f"--set={name}="))


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def pods_selected(objects: tuple[dict[str, Any], ...], namespace: str,
                  selector: dict[str, str]) -> list[dict[str, Any]]:
    return [d["spec"]["template"] for d in of_kind(objects, "Deployment")
            if d["metadata"]["namespace"] == namespace
            and selects(selector, d["spec"]["template"]["metadata"]["labels"])]


def container_ports(pod: dict[str, Any]) -> dict[str | int, int]:
    """Port name and number -> number, for every container of the pod."""
    ports: dict[str | int, int] = {}
    for c in pod["spec"]["containers"]:
        for p in c.get("ports", []):
            ports[p["containerPort"]] = ports[p.get("name", p["containerPort"])] = p["containerPort"]
    return ports


GATEWAY_ENTRIES = ["egress", "inbound", "explicit-proxy", "otel-collector", "embedded-backend",
                   "postgres-backend", "postgres-in-cluster"]
ISTIO_ENTRIES = ["egress", "inbound", "otel-collector", "embedded-backend", "postgres-backend",
                 "examples/travel"]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_services_select_pods_and_target_their_ports(entry: str) -> None:
    objects = render(entry)
    for svc in of_kind(objects, "Service"):
        pods = pods_selected(objects, svc["metadata"]["namespace"], svc["spec"]["selector"])
        assert len(pods) == 1, f"Service {svc['metadata']['name']} selects {len(pods)} pod templates"
        ports = container_ports(pods[0])
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in ports, f"{svc['metadata']['name']}: {port}"
            # Istio picks the protocol from the name; h2c/gRPC would break mitmproxy 11.
            assert re.match(r"(http|tcp)(-|$)", port["name"]) and not port["name"].startswith(("http2", "grpc"))
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        for obj in of_kind(objects, kind):
            selector = obj["spec"].get("selector", obj["spec"].get("podSelector"))["matchLabels"]
            assert pods_selected(objects, obj["metadata"]["namespace"], selector), obj["metadata"]["name"]
    for policy in of_kind(objects, "NetworkPolicy"):
        (pod,) = pods_selected(objects, policy["metadata"]["namespace"],
                               policy["spec"]["podSelector"]["matchLabels"])
        for rule in policy["spec"].get("ingress", []):
            assert all(p["port"] in container_ports(pod) for p in rule["ports"]), policy["metadata"]["name"]
    for hpa in of_kind(objects, "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        assert any(d["metadata"]["name"] == target["name"] for d in of_kind(objects, target["kind"]))


@pytest.mark.parametrize("entry", GATEWAY_ENTRIES)
def test_gateway_listens_where_the_manifests_say(entry: str) -> None:
    objects = render(entry)
    pod = gateway_deployment(objects)["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    args, ports = container["args"], container_ports(pod)
    modes = [a.removeprefix("--mode=") for a in args if a.startswith("--mode=")]
    assert [port for _, port in listen_addresses(modes, "", None)] == [ports["http"]]
    config = gateway_config(objects, container, pod)
    assert int(config.admin_listen.rpartition(":")[2]) == ports["admin"]
    probes = {name: container[name]["httpGet"] for name in ("livenessProbe", "readinessProbe", "startupProbe")}
    assert probes["livenessProbe"]["path"] == "/healthz"
    assert probes["readinessProbe"]["path"] == probes["startupProbe"]["path"] == "/readyz"
    assert all(ports[p["port"]] == ports["admin"] for p in probes.values())
    # The mesh must not loop the gateway's own upstream calls back into it.
    assert pod["metadata"]["labels"]["sidecar.istio.io/inject"] == "false"
    # Every name of the gateway's Service is a loop to the gateway.
    svc = next(s for s in of_kind(objects, "Service") if s["metadata"]["name"] == GATEWAY)
    fqdn = f"{GATEWAY}.{svc['metadata']['namespace']}.svc.cluster.local"
    assert {GATEWAY, fqdn} <= set(config.routing.self_hosts)
    if "--set=block_global=false" not in args or "--set=connection_strategy=lazy" not in args:
        pytest.fail("a gateway behind a Service needs block_global=false and connection_strategy=lazy")


def gateway_config(objects: tuple[dict[str, Any], ...], container: dict[str, Any],
                   pod: dict[str, Any]) -> Config:
    """The config the gateway reads: follow --set softprobe_config through the mount to the ConfigMap."""
    path = option(container["args"], "softprobe_config")
    directory, key = posixpath.split(path)
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == directory)
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == mount["name"])
    configmap = next(c for c in of_kind(objects, "ConfigMap")
                     if c["metadata"]["name"] == volume["configMap"]["name"])
    text = configmap["data"][key]
    assert "public_key" not in yaml.safe_load(text), "the public key belongs in the Secret"
    return load_config_text(text)


def load_config_text(text: str) -> Config:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        f.write(text)
        f.flush()
        return load_config(f.name, environ={})


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_secret_references_match_the_templates(entry: str) -> None:
    keys = {t["metadata"]["name"]: set(t["stringData"]) for t in templates()}
    for deployment in of_kind(render(entry), "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        for container in pod["containers"] + pod.get("initContainers", []):
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref and ref["name"] == CNPG_APP_SECRET:
                    # Written by the CloudNativePG operator for the Cluster, not by hand.
                    assert (env["name"], ref["key"]) == (STORE_URL_ENV, "uri")
                elif ref:
                    assert env["name"] == {"softprobe-public-key": PUBLIC_KEY_ENV,
                                           "softprobe-store": STORE_URL_ENV}[ref["name"]]
                    assert ref["key"] in keys[ref["name"]]
        for volume in pod["volumes"]:
            if "secret" in volume:
                items = {i["key"] for i in volume["secret"]["items"]}
                assert items == keys[volume["secret"]["secretName"]]


def test_explicit_proxy_reads_its_ca_from_the_secret_mount() -> None:
    pod = gateway_deployment(render("explicit-proxy"))["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    confdir = option(container["args"], "confdir")
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == confdir)
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == mount["name"])
    # Without dhparam mitmproxy would try to write it into the read-only mount.
    assert {i["path"] for i in volume["secret"]["items"]} == {"mitmproxy-ca.pem", "mitmproxy-dhparam.pem"}
    assert mount["readOnly"] is True
    svc = next(s for s in of_kind(render("explicit-proxy"), "Service") if s["metadata"]["name"] == GATEWAY)
    assert svc["spec"]["ports"][0]["name"].startswith("tcp"), "sidecars must pass CONNECT through as TCP"


@pytest.mark.parametrize("entry", ISTIO_ENTRIES)
def test_virtual_services_route_to_the_gateway_service(entry: str) -> None:
    objects = render(entry)
    # The demo carries no gateway: it is applied next to the default tree and routes to that one.
    with_gateway = objects if entry in GATEWAY_ENTRIES else render("egress")
    services = {fqdn(s): s for s in of_kind(with_gateway, "Service")}
    entries = {h for se in of_kind(objects, "ServiceEntry") for h in se["spec"]["hosts"]}
    for vs in of_kind(objects, "VirtualService"):
        assert vs["spec"]["gateways"] == ["mesh"]
        for route in vs["spec"]["http"]:
            for destination in (r["destination"] for r in route["route"]):
                svc = services[destination["host"]]
                port = next(p for p in svc["spec"]["ports"] if p["port"] == destination["port"]["number"])
                assert port["name"].startswith("http")
                # ... and lands on the port the gateway's proxy listener is bound to.
                (pod,) = pods_selected(with_gateway, svc["metadata"]["namespace"],
                                       svc["spec"]["selector"])
                modes = [a.removeprefix("--mode=") for a in pod["spec"]["containers"][0]["args"]
                         if a.startswith("--mode=")]
                assert container_ports(pod)[port["targetPort"]] in [p for _, p in listen_addresses(modes, "", None)]
        external = [h for h in vs["spec"]["hosts"] if not h.endswith(".svc.cluster.local")]
        assert set(external) <= entries, "an external host needs a ServiceEntry"
        if external:
            # The hosts the mesh sends in plain HTTP leave the gateway over verified TLS.
            deployment = gateway_deployment(with_gateway)["spec"]["template"]
            config = gateway_config(with_gateway, deployment["spec"]["containers"][0], deployment)
            for host in external:
                assert any(re.search(t.host, host) for t in config.routing.tls_upstreams), host


def fqdn(service: dict[str, Any]) -> str:
    return f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"


def test_inbound_gateway_fronts_the_demo_airline_service() -> None:
    (container,) = gateway_deployment(render("inbound"))["spec"]["template"]["spec"]["containers"]
    (mode,) = [a for a in container["args"] if a.startswith("--mode=reverse:")]
    target = re.fullmatch(r"--mode=reverse:http://([^:/]+):(\d+)@\d+", mode)
    assert target, mode
    airline = next(s for s in of_kind(render("examples/travel"), "Service") if fqdn(s) == target[1])
    assert int(target[2]) in [p["port"] for p in airline["spec"]["ports"]]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_pods_are_locked_down(entry: str) -> None:
    for deployment in of_kind(render(entry), "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        for c in pod["containers"] + pod.get("initContainers", []):
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
            assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
            assert ":" in c["image"] and not c["image"].endswith(":latest"), c["image"]
            if c in pod["containers"] or c.get("restartPolicy") == "Always":  # a (sidecar) container
                assert "readinessProbe" in c and "livenessProbe" in c
                assert c["securityContext"].get("capabilities", {}).get("add") is None
            else:  # a run-once init container: root only where it must, with the least it needs
                assert c["securityContext"].get("capabilities", {}).get("add", ["NET_ADMIN"]) == ["NET_ADMIN"]


def test_one_image_version_everywhere() -> None:
    """The gateway, the backend, the demo and the transparent sidecar run the same release."""
    pods = [d["spec"]["template"]["spec"] for entry in ENTRY_POINTS for d in of_kind(render(entry), "Deployment")]
    images = {c["image"] for pod in pods for c in pod["containers"] + pod.get("initContainers", [])
              if "softprobe" in c["image"]}
    # One gateway image; the transparent mode's init image (softprobe-redirect) is of the same release.
    assert len({i for i in images if "softprobe-gateway" in i}) == 1, images
    assert len({i.rpartition(":")[2] for i in images}) == 1, images


@pytest.mark.parametrize("entry", [e for e in GATEWAY_ENTRIES if e != "explicit-proxy"])
def test_the_deployment_args_and_config_start_the_gateway(entry: str, tmp_path: Path) -> None:
    """The rendered args and ConfigMap, run as they are (paths and ports moved to loopback/tmp)."""
    objects = render(entry)
    pod = gateway_deployment(objects)["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    config_path = option(container["args"], "softprobe_config")
    text = next(c for c in of_kind(objects, "ConfigMap")
                if c["metadata"]["name"].startswith("softprobe-gateway-config"))["data"][posixpath.basename(config_path)]
    proxy_port, admin_port = free_port(), free_port()
    config = yaml.safe_load(text)
    config["admin_listen"] = f"{LOOPBACK}:{admin_port}"
    (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(config))
    moved = {config_path: str(tmp_path / "gateway.yaml"), option(container["args"], "confdir"): str(tmp_path / "confdir"),
             "@8080": f"@{LOOPBACK}:{proxy_port}"}
    args = [functools.reduce(lambda a, kv: a.replace(*kv), moved.items(), arg) for arg in container["args"]]
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    with (tmp_path / "mitmdump.log").open("wb") as log:
        process = subprocess.Popen([str(BIN / "mitmdump"), "-s", str(ADDON), *args], stdout=log,
                                   stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
        try:
            wait_for(lambda: process.poll() is not None or readyz(admin_port), timeout=20)
            assert process.poll() is None, (tmp_path / "mitmdump.log").read_text()
            wait_port(proxy_port)
        finally:
            process.terminate()
            process.wait(15)


def readyz(port: int) -> bool:
    try:
        return httpx.get(f"http://{LOOPBACK}:{port}/readyz", timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


# -- transparent capture (k8s/components/transparent, applied by examples/transparent) ---------


def transparent_pod() -> dict[str, Any]:
    (deployment,) = [d for d in of_kind(render("examples/transparent"), "Deployment")
                     if d["metadata"]["labels"].get("softprobe.ai/capture") == "transparent"]
    return deployment["spec"]["template"]


def mounted(pod: dict[str, Any], container: dict[str, Any], path: str) -> tuple[dict[str, Any], str]:
    """The volume behind a file path in a container, and the file's name inside that volume."""
    mount = max((m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/")),
                key=lambda m: len(m["mountPath"]))
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == mount["name"])
    return volume, path[len(mount["mountPath"]) + 1:]


def test_transparent_redirect_is_the_tested_script_and_exempts_the_gateway() -> None:
    objects, pod = render("examples/transparent"), transparent_pod()
    redirect, gateway = pod["spec"]["initContainers"]
    # What the tests run (tests/system/test_transparent.py) is what the init container runs.
    script = redirect["command"][1]
    volume, key = mounted(pod, redirect, script)
    configmap = next(c for c in of_kind(objects, "ConfigMap") if c["metadata"]["name"] == volume["configMap"]["name"])
    assert configmap["data"][key] == (K8S / "components" / "transparent" / "redirect.sh").read_text()
    assert redirect["command"][0] == "/bin/sh" and redirect["command"][2] == "install"
    env = {e["name"]: e["value"] for e in redirect["env"]}
    # The exempt UID is the gateway's, and never the app's (its traffic would escape capture).
    assert int(env["GATEWAY_UID"]) == gateway["securityContext"]["runAsUser"]
    assert pod["spec"]["securityContext"]["runAsUser"] != gateway["securityContext"]["runAsUser"]
    for app in pod["spec"]["containers"]:
        assert app.get("securityContext", {}).get("runAsUser") != gateway["securityContext"]["runAsUser"]
    # The redirect lands on the gateway's transparent listener, on loopback (no open proxy).
    (mode,) = [a.removeprefix("--mode=") for a in gateway["args"] if a.startswith("--mode=")]
    assert mode.startswith("transparent@")
    assert listen_addresses([mode], "", None) == [("127.0.0.1", int(env["PROXY_PORT"]))]
    assert "--set=block_global=false" in gateway["args"]  # the pod's IP may be public; loopback only
    assert "53" not in env["REDIRECT_PORTS"].split()
    assert redirect["securityContext"]["runAsUser"] == 0
    assert redirect["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN"]}
    # The init image is the Dockerfile's `redirect` stage: the gateway's base plus iptables.
    assert redirect["image"].startswith("ghcr.io/softprobe/softprobe-redirect:")
    stage = (ROOT / "Dockerfile").read_text().split(" AS redirect\n", 1)[1].split("\nFROM ", 1)[0]
    assert "apt-get install" in stage and "iptables=" in stage


def test_transparent_gateway_is_a_native_sidecar_with_its_ca_and_config() -> None:
    objects, pod = render("examples/transparent"), transparent_pod()
    _, gateway = pod["spec"]["initContainers"]
    # Started and ready before the app (startupProbe), stopped after it: first and last calls captured.
    assert gateway["restartPolicy"] == "Always" and gateway["startupProbe"]["httpGet"]["path"] == "/readyz"
    ports = {p["name"]: p["containerPort"] for p in gateway["ports"]}
    config = gateway_config(objects, gateway, pod)
    assert int(config.admin_listen.rpartition(":")[2]) == ports["sp-admin"]
    assert config.traffic_direction == "outbound"
    assert all(gateway[p]["httpGet"]["port"] == "sp-admin" for p in ("startupProbe", "livenessProbe", "readinessProbe"))
    # The CA comes from the Secret, read-only, dhparam included (mitmproxy would write it).
    confdir = option(gateway["args"], "confdir")
    volume, _ = mounted(pod, gateway, confdir + "/mitmproxy-ca.pem")
    assert volume["secret"]["secretName"] == ca.SECRET_NAME
    assert {i["path"] for i in volume["secret"]["items"]} == {ca.KEY_FILE, ca.DHPARAM_FILE}
    assert next(m for m in gateway["volumeMounts"] if m["mountPath"] == confdir)["readOnly"] is True
    # /tmp is writable: the upstream trust bundle (tls.upstream_ca) is written there.
    volume, _ = mounted(pod, gateway, "/tmp/bundle.pem")
    assert "emptyDir" in volume


def test_transparent_app_trusts_the_distributed_ca_through_its_runtime_variables() -> None:
    pod = transparent_pod()
    (app,) = pod["spec"]["containers"]
    env = {e["name"]: e["value"] for e in app["env"]}
    assert set(env) >= {"SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS"}
    for name, path in env.items():
        volume, key = mounted(pod, app, path)
        assert volume["configMap"]["name"] == ca.CONFIGMAP_NAME
        # Variables that REPLACE a runtime's roots get roots + CA; Node's adds to its own roots.
        assert key == (ca.CERT_KEY if name == "NODE_EXTRA_CA_CERTS" else ca.BUNDLE_KEY), name


def test_ca_manifests_from_the_cli_validate_and_match_what_pods_mount(tmp_path: Path) -> None:
    softprobe = str(BIN / "softprobe")
    subprocess.run([softprobe, "ca", "create", "--dir", str(tmp_path / "ca")], check=True, capture_output=True)
    secret, configmap = (yaml.safe_load(subprocess.run(
        [softprobe, "ca", what, "--dir", str(tmp_path / "ca"), "--namespace", "shop"],
        check=True, capture_output=True, text=True).stdout) for what in ("secret", "configmap"))
    for obj in (secret, configmap):
        validate(obj)
    template = next(t for t in templates() if t["metadata"]["name"] == secret["metadata"]["name"])
    assert set(secret["data"]) == set(template["stringData"])
    assert "PRIVATE KEY" not in "".join(configmap["data"].values())
    assert set(configmap["data"]) == {ca.CERT_KEY, ca.BUNDLE_KEY}


def test_the_overlay_runs_serve_as_tested() -> None:
    """The embedded-backend overlay: serve as tests/integration/test_serve_auth.py runs it, both pods
    keyed from one Secret (required, not optional), readiness without a key (TCP)."""
    deployments = {d["metadata"]["name"]: d["spec"]["template"]["spec"]["containers"][0]
                   for d in of_kind(render("embedded-backend"), "Deployment")}
    backend, gateway = deployments["softprobe-backend"], deployments["softprobe-gateway"]
    assert backend["command"] + backend["args"] == ["softprobe", *OVERLAY_ARGS]
    refs = [next(e["valueFrom"]["secretKeyRef"] for e in c["env"] if e["name"] == "SOFTPROBE_PUBLIC_KEY")
            for c in (backend, gateway)]
    assert refs[0] == refs[1] == {"name": "softprobe-public-key", "key": "public-key"}
    assert "tcpSocket" in backend["readinessProbe"] and "tcpSocket" in backend["livenessProbe"]


@pytest.mark.parametrize("entry", ["postgres-backend", "postgres-in-cluster"])
def test_the_postgres_overlay_rolls_without_downtime(entry: str) -> None:
    """Stateless replicas: at least 2, a rollout that adds before it removes, a disruption budget
    and an autoscaler that never go below one and two, ready only while the database answers, the
    schema migrated before serving, the DSN from a Secret (never in the manifest)."""
    objects = render(entry)
    backend = next(d for d in of_kind(objects, "Deployment") if d["metadata"]["name"] == "softprobe-backend")
    spec = backend["spec"]
    assert spec["replicas"] >= 2
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    pdb = next(p for p in of_kind(objects, "PodDisruptionBudget") if p["metadata"]["name"] == "softprobe-backend")
    hpa = next(h for h in of_kind(objects, "HorizontalPodAutoscaler")
               if h["spec"]["scaleTargetRef"]["name"] == "softprobe-backend")
    assert pdb["spec"]["minAvailable"] >= 1 and hpa["spec"]["minReplicas"] >= 2
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    (migrate,) = pod["initContainers"]
    assert container["command"] + container["args"] == ["softprobe", "serve", "--listen", "0.0.0.0:8090"]
    assert migrate["command"] + migrate["args"] == ["softprobe", "store", "migrate"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    for c in (container, migrate):
        url = next(e for e in c["env"] if e["name"] == STORE_URL_ENV)
        assert "value" not in url and url["valueFrom"]["secretKeyRef"]["name"] in {"softprobe-store", CNPG_APP_SECRET}
    assert "postgresql://" not in yaml.safe_dump_all(objects).replace("REPLACE-WITH-postgresql://", "")
    clusters = list(of_kind(objects, "Cluster"))
    if entry == "postgres-in-cluster":
        (cluster,) = clusters
        assert cluster["spec"]["instances"] == 3
        # The operator writes `<cluster>-app` with the application DSN as `uri`.
        assert CNPG_APP_SECRET == f"{cluster['metadata']['name']}-app"
    else:
        assert not clusters


def test_the_cloudnative_pg_schema_bites() -> None:
    cluster = next(of_kind(render("postgres-in-cluster"), "Cluster"))
    for bad_spec in ({**cluster["spec"], "instance": 3}, {**cluster["spec"], "instances": 0}):
        with pytest.raises(AssertionError):
            validate({**cluster, "spec": bad_spec})
