"""HTTPS interception: the pass-through decision, the upstream trust bundle, the CA commands, and
an explicit proxy (what `make run` starts) capturing HTTPS for a client that trusts one file."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import certifi
import pytest
from cryptography import x509
from softprobe_gateway.config.schema import DEFAULT_PASSTHROUGH_HOSTS, ConfigError, StoreConfig
from softprobe_gateway.decisions.interception import BUNDLE_PREFIX, Passthrough, upstream_trust
from softprobe_gateway.store.store import Store, StoreError

from testkit.support import BIN, Gateway, free_port, make_test_ca, run_mitmdump_config, wait_for

ROOT = Path(__file__).resolve().parents[2]
CURL = shutil.which("curl")


def test_passthrough_matches_names_subdomains_and_addresses() -> None:
    passthrough = Passthrough(["api.bank.test", "*.push.apple.com", "10.0.0.7"])
    assert passthrough("api.bank.test", None) and passthrough("API.Bank.Test.", ("10.9.9.9", 443))
    assert passthrough("api.push.apple.com", None) and passthrough("a.b.push.apple.com", None)
    assert not passthrough("push.apple.com", None)  # *.domain: the names below it, as Istio reads it
    assert not passthrough("evilpush.apple.com", None) and not passthrough("bank.test", None)
    assert passthrough(None, ("10.0.0.7", 443))  # no SNI: the destination decides
    assert passthrough(None, ("api.bank.test", 443))  # an explicit proxy's CONNECT target
    assert not passthrough(None, None) and not Passthrough([])("api.bank.test", ("10.0.0.7", 443))
    assert Passthrough(DEFAULT_PASSTHROUGH_HOSTS)("api.push.apple.com", None)


def test_bad_passthrough_host_stops_start_up_naming_the_key(tmp_path: Path) -> None:
    done = run_mitmdump_config(tmp_path, "tls:\n  passthrough_hosts: [ok.test, 'api.*.test']\n")
    assert done.returncode != 0
    assert "key 'tls.passthrough_hosts[1]': expected a host name, *.domain or an IP address" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    done = run_mitmdump_config(tmp_path, "tls:\n  upstream_ca: /nonexistent/ca.pem\n")
    assert done.returncode != 0 and "Traceback" not in done.stdout + done.stderr
    assert "key 'tls.upstream_ca': cannot read /nonexistent/ca.pem" in done.stdout + done.stderr


def test_upstream_ca_is_added_to_the_default_roots(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    ca, _, _ = make_test_ca(tmp_path, "api.test")
    bundle = upstream_trust(str(ca), None)
    text = Path(bundle).read_bytes()
    assert text.startswith(Path(certifi.where()).read_bytes().rstrip(b"\n")) and text.endswith(ca.read_bytes())
    assert len(x509.load_pem_x509_certificates(text)) > 100
    assert upstream_trust(str(ca), bundle) == bundle  # a reload: same content, same file
    assert upstream_trust("", bundle) is None  # the key removed: ours is dropped
    assert upstream_trust("", "/etc/ssl/operator.pem") == "/etc/ssl/operator.pem"  # never the operator's
    with pytest.raises(ConfigError, match="key 'tls.upstream_ca': mitmproxy's ssl_verify_upstream_trusted_ca"):
        upstream_trust(str(ca), "/etc/ssl/operator.pem")
    with pytest.raises(ConfigError, match="key 'tls.upstream_ca': cannot read"):
        upstream_trust(str(tmp_path / "missing.pem"), None)
    (tmp_path / "not.pem").write_text("hello")
    with pytest.raises(ConfigError, match="key 'tls.upstream_ca': .* holds no PEM certificate"):
        upstream_trust(str(tmp_path / "not.pem"), None)
    assert Path(bundle).name.startswith(BUNDLE_PREFIX)


def test_ca_commands(tmp_path: Path) -> None:
    softprobe = str(BIN / "softprobe")
    created = subprocess.run([softprobe, "ca", "create", "--dir", str(tmp_path / "ca")],
                             capture_output=True, text=True, timeout=30)
    assert created.returncode == 0 and "certificate to trust" in created.stdout
    assert (tmp_path / "ca" / "mitmproxy-ca.pem").stat().st_mode & 0o077 == 0  # the key: owner only
    again = subprocess.run([softprobe, "ca", "create", "--dir", str(tmp_path / "ca")],
                           capture_output=True, text=True, timeout=30)
    assert again.returncode == 2 and "already holds a CA" in again.stderr  # never overwritten
    subprocess.run([softprobe, "ca", "create", "--dir", str(tmp_path / "next")], check=True, capture_output=True)
    # A rotation: apps trust both certificates while the gateways move to the new CA.
    both = subprocess.run([softprobe, "ca", "cert", "--dir", str(tmp_path / "next"), "--dir", str(tmp_path / "ca")],
                          capture_output=True, text=True, timeout=30).stdout
    assert [c.subject for c in x509.load_pem_x509_certificates(both.encode())] == \
        [x509.load_pem_x509_certificate((tmp_path / d / "mitmproxy-ca-cert.pem").read_bytes()).subject
         for d in ("next", "ca")]
    assert "PRIVATE" not in both
    missing = subprocess.run([softprobe, "ca", "cert", "--dir", str(tmp_path / "none")],
                             capture_output=True, text=True, timeout=30)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "softprobe ca create" in missing.stderr


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_explicit_proxy_captures_https_for_a_client_trusting_one_file(tmp_path: Path) -> None:
    """`make run` users: trust DIR/mitmproxy-ca-cert.pem, and HTTPS through the proxy is recorded;
    a passthrough host keeps its own certificate and is not recorded."""
    for name in ("ip", "name"):
        (tmp_path / name).mkdir()
    ip_ca, ip_cert, ip_key = make_test_ca(tmp_path / "ip", "127.0.0.1")
    name_ca, name_cert, name_key = make_test_ca(tmp_path / "name", "localhost")
    https_port = free_port()
    upstream = subprocess.Popen(
        [sys.executable, str(ROOT / "testkit" / "tls_upstream.py"), "127.0.0.1", str(free_port()),
         str(https_port), f"127.0.0.1={ip_cert}:{ip_key}", f"localhost={name_cert}:{name_key}"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert upstream.stdout.readline().strip() == "ready"
        confdir = tmp_path / "mitmproxy"  # the confdir support.Gateway passes
        subprocess.run([str(BIN / "softprobe"), "ca", "create", "--dir", str(confdir)], check=True,
                       capture_output=True)
        store = tmp_path / "store.db"
        config = {"sp_backend_url": f"sqlite:{store}",
                  "tls": {"upstream_ca": str(ip_ca), "passthrough_hosts": ["localhost"]}}
        with Gateway(config, tmp_path, env={"TMPDIR": str(tmp_path)}) as gw:  # the bundle goes there
            trusted = tmp_path / "client.pem"  # the one file, plus the passthrough host's own CA
            trusted.write_bytes((confdir / "mitmproxy-ca-cert.pem").read_bytes() + name_ca.read_bytes())

            def curl(url: str, cacert: Path) -> subprocess.CompletedProcess:
                return subprocess.run([CURL, "-sS", "--fail", "-x", gw.proxy, "--cacert", str(cacert), url],
                                      capture_output=True, text=True, timeout=30)

            done = curl(f"https://127.0.0.1:{https_port}/secure", trusted)
            assert done.returncode == 0, done.stderr + gw.output()
            assert json.loads(done.stdout)["via"]  # through the gateway, verified upstream with ip_ca
            done = curl(f"https://localhost:{https_port}/pinned", trusted)
            assert done.returncode == 0 and json.loads(done.stdout)["via"] is None, done.stderr
            refused = curl(f"https://127.0.0.1:{https_port}/untrusted", name_ca)  # without the one file
            assert refused.returncode == 60, refused.stderr
            assert curl(f"https://127.0.0.1:{https_port}/marker", trusted).returncode == 0

            def recorded():
                try:
                    with Store(StoreConfig(path=str(store)), read_only=True) as s:
                        return [ex for summary in s.sessions(size=100).sessions for ex in s.session(summary.id)[1]]
                except StoreError:
                    return []

            exchanges = wait_for(lambda: (r := recorded()) and any(e.path == "/marker" for e in r) and r)
            assert sorted(e.path for e in exchanges) == ["/marker", "/secure"]
            secure = next(e for e in exchanges if e.path == "/secure")
            assert (secure.host, secure.request_headers.get(":scheme"), secure.direction) == \
                (f"127.0.0.1:{https_port}", "https", "outbound")
    finally:
        upstream.stdin.close()
        upstream.terminate()
        upstream.wait(10)
