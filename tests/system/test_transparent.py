"""Transparent capture as deployed: a pod emulated with network namespaces.

The pod is one namespace holding the app and the gateway; the upstreams live in a second one,
reached over a veth pair; names resolve through /etc/netns/POD/hosts. The redirect is
k8s/components/transparent/redirect.sh, run with the component's init-container env and
CAP_NET_ADMIN only. The gateway runs with the sidecar's args and config, under the sidecar's UID,
from a CA made by `softprobe ca create` and mounted read-only as the Secret is. The apps are
unmodified curl and urllib under the example app's UID, trusting the bundle that
`softprobe ca configmap` distributes, through the variables the example app sets.

The gateway's Python lives under /root (pyenv), unreadable by its UID: it is given
CAP_DAC_READ_SEARCH (file reads only) so it can keep the deployed UID, which is what the redirect's
owner match is about. Everything else about it is as in the pod.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from softprobe_gateway.config.schema import StoreConfig
from softprobe_gateway.store.model import Recording
from softprobe_gateway.store.store import Store, StoreError

from testkit.support import ADDON, BIN, make_test_ca, wait_for

ROOT = Path(__file__).resolve().parents[2]
COMPONENT = ROOT / "k8s" / "components" / "transparent"
REDIRECT = COMPONENT / "redirect.sh"
SIDECAR = yaml.safe_load((COMPONENT / "sidecar.yaml").read_text())["spec"]["template"]["spec"]
INIT, GATEWAY = SIDECAR["initContainers"]
REDIRECT_ENV = {e["name"]: e["value"] for e in INIT["env"]}
GATEWAY_UID = GATEWAY["securityContext"]["runAsUser"]
APP = yaml.safe_load((ROOT / "examples" / "transparent" / "app.yaml").read_text())["spec"]["template"]["spec"]
APP_UID = APP["securityContext"]["runAsUser"]
APP_ENV = {e["name"]: e["value"] for e in APP["containers"][0]["env"]}
UPSTREAM_IP = "192.0.2.10"  # TEST-NET-1: only ever inside the test's namespaces
SYSTEM_PYTHON = "/usr/bin/python3"  # the app's runtime: readable by any UID
SBIN = f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"
TOOLS = {t: shutil.which(t, path=SBIN) for t in ("ip", "iptables", "setpriv", "curl")}


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, veth and iptables)"
    if missing := [t for t, path in TOOLS.items() if path is None]:
        return f"missing {', '.join(missing)} (`make system-deps` installs iptables)"
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"{SYSTEM_PYTHON} (the app's interpreter) is missing"
    return None


pytestmark = pytest.mark.skipif(bool(_missing()), reason=_missing() or "")


def run(*argv: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, **kwargs)
    if check and done.returncode:
        raise AssertionError(f"{' '.join(argv)} -> {done.returncode}: {done.stderr}")
    return done


def as_user(uid: int, *extra: str) -> list[str]:
    return [TOOLS["setpriv"], f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *extra, "--"]


def redirect(netns: str, action: str, caps: str = "+net_admin") -> subprocess.CompletedProcess:
    """redirect.sh as the init container runs it: root with only the given capabilities."""
    return run("ip", "netns", "exec", netns, TOOLS["setpriv"], f"--bounding-set=-all,{caps}" if caps else
               "--bounding-set=-all", "--inh-caps=-all", "sh", str(REDIRECT), action,
               check=False, env={"PATH": SBIN, **REDIRECT_ENV})


def nat_rules(netns: str) -> list[str]:
    return run("ip", "netns", "exec", netns, TOOLS["iptables"], "-t", "nat", "-S").stdout.splitlines()


@dataclass
class Pod:
    name: str
    dir: Path
    store: Path
    gateway_ca: x509.Certificate
    pinned_cert: Path
    app_env: dict[str, str]  # the example app's trust variables, pointing at the mounted ConfigMap

    def app(self, *argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """A command in the pod as the app: its UID, the example app's trust variables."""
        return run("ip", "netns", "exec", self.name, *as_user(APP_UID), *argv, check=False,
                   env={"PATH": "/usr/bin:/bin", **(self.app_env if env is None else env)})

    def recorded(self) -> list[Recording]:
        try:
            with Store(StoreConfig(path=str(self.store)), read_only=True) as store:
                return [ex for s in store.sessions(size=100).sessions for ex in store.session(s.id)[1]]
        except StoreError:
            return []

    def wait_recorded(self, path: str) -> list[Recording]:
        return wait_for(lambda: [ex for ex in self.recorded() if ex.path == path] or None, timeout=15)


@pytest.fixture(scope="module")
def pod() -> Iterator[Pod]:
    suffix = secrets.token_hex(3)
    name, upstream_ns = f"sp-pod-{suffix}", f"sp-up-{suffix}"
    base = Path(tempfile.mkdtemp(prefix="softprobe-pod-"))
    base.chmod(0o755)
    etc = Path("/etc/netns") / name
    processes: list[subprocess.Popen] = []
    try:
        yield _start(name, upstream_ns, suffix, base, etc, processes)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        for ns in (name, upstream_ns):
            run("ip", "netns", "del", ns, check=False)
        shutil.rmtree(etc, ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)


def _start(name: str, upstream_ns: str, suffix: str, base: Path, etc: Path,
           processes: list[subprocess.Popen]) -> Pod:
    # The network: pod <-veth-> upstreams; the pod's default route leads out through the veth.
    for ns in (name, upstream_ns):
        if (done := run("ip", "netns", "add", ns, check=False)).returncode:
            pytest.skip(f"cannot create a network namespace here: {done.stderr.strip()}")
    pod_if, up_if = f"spp{suffix}", f"spu{suffix}"
    for argv in (["link", "add", pod_if, "type", "veth", "peer", "name", up_if],
                 ["link", "set", pod_if, "netns", name], ["link", "set", up_if, "netns", upstream_ns],
                 ["-n", name, "addr", "add", "192.0.2.1/24", "dev", pod_if],
                 ["-n", upstream_ns, "addr", "add", f"{UPSTREAM_IP}/24", "dev", up_if],
                 ["-n", name, "link", "set", "lo", "up"], ["-n", name, "link", "set", pod_if, "up"],
                 ["-n", upstream_ns, "link", "set", "lo", "up"], ["-n", upstream_ns, "link", "set", up_if, "up"],
                 ["-n", name, "route", "add", "default", "via", UPSTREAM_IP]):
        run("ip", *argv)
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "hosts").write_text(f"127.0.0.1 localhost\n{UPSTREAM_IP} api.test pinned.test\n")

    # Upstream identities: each from its own CA, both CAs "public roots" of this little world.
    (base / "api").mkdir()
    (base / "pinned").mkdir()
    api_ca, api_cert, api_key = make_test_ca(base / "api", "api.test")
    pinned_ca, pinned_cert, pinned_key = make_test_ca(base / "pinned", "pinned.test")
    roots = base / "roots.pem"
    roots.write_bytes(api_ca.read_bytes() + pinned_ca.read_bytes())
    upstream = subprocess.Popen(
        ["ip", "netns", "exec", upstream_ns, sys.executable, str(ROOT / "testkit" / "tls_upstream.py"),
         UPSTREAM_IP, "80", "443", f"api.test={api_cert}:{api_key}", f"pinned.test={pinned_cert}:{pinned_key}"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    processes.append(upstream)
    # A server on the pod's loopback: calls to it must never be redirected.
    local = subprocess.Popen(
        ["ip", "netns", "exec", name, sys.executable, str(ROOT / "testkit" / "tls_upstream.py"),
         "127.0.0.1", "80", "8443", f"api.test={api_cert}:{api_key}"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    processes.append(local)
    assert upstream.stdout.readline().strip() == "ready" and local.stdout.readline().strip() == "ready"

    # The CA, as documented; the Secret mount is read-only (files 0444, directory not writable).
    confdir = base / "confdir"
    run(str(BIN / "softprobe"), "ca", "create", "--dir", str(confdir))
    secret_files = {"mitmproxy-ca.pem", "mitmproxy-dhparam.pem"}
    for f in confdir.iterdir():
        f.unlink() if f.name not in secret_files else f.chmod(0o444)
    # The apps' ConfigMap, as documented, mounted where the example app reads it.
    configmap = yaml.safe_load(run(str(BIN / "softprobe"), "ca", "configmap", "--dir", str(confdir),
                                   "--roots", str(roots), "--namespace", "shop").stdout)
    trust = Path(next(iter(APP_ENV.values()))).parent
    mounted = base / "softprobe-ca"
    mounted.mkdir()
    for key, text in configmap["data"].items():
        (mounted / key).write_text(text)
    app_env = {key: value.replace(str(trust), str(mounted)) for key, value in APP_ENV.items()}

    # The redirect, as the init container installs it.
    assert redirect(name, "install").returncode == 0

    # The gateway: the sidecar's args and config; only paths move, and the store is local.
    gateway_dir = base / "gateway"
    gateway_dir.mkdir()
    os.chown(gateway_dir, GATEWAY_UID, GATEWAY_UID)
    config = yaml.safe_load((COMPONENT / "gateway.yaml").read_text())
    config.update(sp_backend_url=f"sqlite:{gateway_dir / 'store.db'}", admin_listen="127.0.0.1:18090")
    config["tls"]["upstream_ca"] = str(api_ca)  # the gateway trusts api.test's CA, not pinned.test's
    config["tls"]["passthrough_hosts"].append("pinned.test")
    config_path = base / "gateway.yaml"
    config_path.write_text(yaml.safe_dump(config))
    moved = {"/etc/softprobe/gateway.yaml": str(config_path), "/var/lib/mitmproxy": str(confdir)}
    args = [functools.reduce(lambda a, kv: a.replace(*kv), moved.items(), arg) for arg in GATEWAY["args"]]
    log_path = base / "gateway.log"
    with log_path.open("wb") as log:
        gateway = subprocess.Popen(
            ["ip", "netns", "exec", name, *as_user(GATEWAY_UID, "--inh-caps=+dac_read_search",
                                                   "--ambient-caps=+dac_read_search"),
             str(BIN / "mitmdump"), "-s", str(ADDON), *args],
            stdout=log, stderr=subprocess.STDOUT, cwd=gateway_dir,
            env={"PATH": os.environ["PATH"], "TMPDIR": str(gateway_dir), "PYTHONUNBUFFERED": "1"})
    processes.append(gateway)
    wait_for(lambda: gateway.poll() is not None or b"listening at" in log_path.read_bytes(), timeout=30)
    assert gateway.poll() is None, log_path.read_text()
    ca = x509.load_pem_x509_certificate((mounted / "ca.crt").read_bytes())
    return Pod(name, base, gateway_dir / "store.db", ca, pinned_cert, app_env)


PEER = """
import hashlib, json, socket, ssl, sys
host = sys.argv[1]
with socket.create_connection((host, 443), timeout=10) as raw:
    with ssl.create_default_context().wrap_socket(raw, server_hostname=host) as tls:
        der = tls.getpeercert(True)
        issuer = dict(x[0] for x in tls.getpeercert()["issuer"])
print(json.dumps({"sha256": hashlib.sha256(der).hexdigest(), "issuer": issuer.get("commonName")}))
"""
URLOPEN = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())"


def test_unmodified_clients_are_recorded_over_http_and_https(pod: Pod) -> None:
    calls = {"/curl-plain": ("curl", "http"), "/curl-tls": ("curl", "https"),
             "/urllib-plain": ("urllib", "http"), "/urllib-tls": ("urllib", "https")}
    for path, (client, scheme) in calls.items():
        url = f"{scheme}://api.test{path}"
        argv = ["curl", "-sS", "--fail", url] if client == "curl" else [SYSTEM_PYTHON, "-c", URLOPEN, url]
        done = pod.app(*argv)
        assert done.returncode == 0, done.stderr
        seen = json.loads(done.stdout)
        # It went through the gateway (its Via hop), which reached the real upstream over TLS
        # verified through tls.upstream_ca for https.
        assert seen["host"] == "api.test" and seen["tls"] == (scheme == "https") and seen["via"], seen
    for path, (_, scheme) in calls.items():
        (ex,) = pod.wait_recorded(path)
        assert (ex.host, ex.request_headers.get(":scheme"), ex.direction, ex.status) == \
            ("api.test", scheme, "outbound", 200)
        assert '"host": "api.test"' in ex.response_body
    # The app's TLS peer was the gateway, with a certificate from the distributed CA.
    peer = json.loads(pod.app(SYSTEM_PYTHON, "-c", PEER, "api.test").stdout)
    assert peer["issuer"] == pod.gateway_ca.subject.get_attributes_for_oid(
        x509.NameOID.COMMON_NAME)[0].value


def test_excluded_host_is_passed_through_untouched_and_not_recorded(pod: Pod) -> None:
    done = pod.app(SYSTEM_PYTHON, "-c", PEER, "pinned.test")
    assert done.returncode == 0, done.stderr
    own = x509.load_pem_x509_certificate(pod.pinned_cert.read_bytes()).public_bytes(serialization.Encoding.DER)
    assert json.loads(done.stdout)["sha256"] == hashlib.sha256(own).hexdigest()  # the upstream's own
    done = pod.app("curl", "-sS", "--fail", "https://pinned.test/pinned")
    assert done.returncode == 0 and json.loads(done.stdout)["via"] is None, done.stdout + done.stderr
    assert pod.app("curl", "-sS", "http://api.test/after-pinned").returncode == 0
    pod.wait_recorded("/after-pinned")
    assert not [ex for ex in pod.recorded() if "pinned" in ex.host or ex.path == "/pinned"]


def test_client_not_trusting_the_ca_fails_its_handshake_and_nothing_is_recorded(pod: Pod) -> None:
    roots_only = {**pod.app_env, "CURL_CA_BUNDLE": str(pod.dir / "roots.pem")}
    done = pod.app("curl", "-sS", "https://api.test/untrusted", env=roots_only)
    assert done.returncode == 60, done.stderr  # curl: peer certificate cannot be authenticated
    assert pod.app("curl", "-sS", "http://api.test/after-untrusted").returncode == 0
    pod.wait_recorded("/after-untrusted")
    assert not [ex for ex in pod.recorded() if ex.path == "/untrusted"]


def test_gateway_own_connections_and_loopback_are_not_redirected(pod: Pod) -> None:
    assert pod.app("curl", "-sS", "--fail", "http://api.test/through").returncode == 0
    pod.wait_recorded("/through")
    counters = run("ip", "netns", "exec", pod.name, TOOLS["iptables"], "-t", "nat", "-L", "SOFTPROBE_OUTPUT",
                   "-v", "-x", "-n").stdout.splitlines()
    exempt = next(line for line in counters if f"owner UID match {GATEWAY_UID}" in line)
    assert int(exempt.split()[0]) > 0, counters  # the gateway's upstream connections took the exemption
    # The gateway's UID goes straight out; the pod's loopback stays local: neither is recorded.
    direct = run("ip", "netns", "exec", pod.name, *as_user(GATEWAY_UID), "curl", "-sS", "http://api.test/direct",
                 env={"PATH": "/usr/bin:/bin"})
    assert json.loads(direct.stdout)["via"] is None
    local = pod.app("curl", "-sS", "http://127.0.0.1/local")
    assert json.loads(local.stdout)["via"] is None
    assert pod.app("curl", "-sS", "http://api.test/after-direct").returncode == 0
    pod.wait_recorded("/after-direct")
    assert not [ex for ex in pod.recorded() if ex.path in ("/direct", "/local")]


def test_removal_restores_direct_traffic(pod: Pod) -> None:
    assert redirect(pod.name, "remove").returncode == 0
    try:
        assert not [r for r in nat_rules(pod.name) if "SOFTPROBE" in r]
        done = pod.app("curl", "-sS", "http://api.test/removed")
        assert json.loads(done.stdout)["via"] is None  # straight to the upstream
    finally:
        assert redirect(pod.name, "install").returncode == 0


def test_redirect_needs_net_admin_only_and_is_idempotent() -> None:
    name = f"sp-caps-{secrets.token_hex(3)}"
    if (done := run("ip", "netns", "add", name, check=False)).returncode:
        pytest.skip(f"cannot create a network namespace here: {done.stderr.strip()}")
    try:
        pristine = nat_rules(name)
        assert redirect(name, "install", caps="").returncode != 0  # no capability: refused
        assert nat_rules(name) == pristine
        assert redirect(name, "install").returncode == 0
        rules = nat_rules(name)
        assert f"-A SOFTPROBE_OUTPUT -m owner --uid-owner {GATEWAY_UID} -j RETURN" in rules
        ports = [r.split("--dport ")[1].split()[0] for r in rules if "REDIRECT" in r]
        assert ports == REDIRECT_ENV["REDIRECT_PORTS"].split()  # 53 (DNS) is never among them
        assert all(f"--to-ports {REDIRECT_ENV['PROXY_PORT']}" in r for r in rules if "REDIRECT" in r)
        assert redirect(name, "install").returncode == 0 and nat_rules(name) == rules  # re-run: same rules
        assert redirect(name, "remove").returncode == 0 and nat_rules(name) == pristine
        bad = run("ip", "netns", "exec", name, "sh", str(REDIRECT), "install", check=False,
                  env={"PATH": SBIN, **REDIRECT_ENV, "REDIRECT_PORTS": "80 53"})
        assert bad.returncode == 2 and "DNS" in bad.stderr and nat_rules(name) == pristine
    finally:
        run("ip", "netns", "del", name, check=False)
