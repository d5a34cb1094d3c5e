"""The options and start-up through real mitmdump and mitmweb processes: precedence over the YAML, one line for every start-up failure, a second gateway beside a running one."""

from __future__ import annotations

import socket
import subprocess

import httpx
import pytest
from softprobe_gateway.proxy import options

from testkit.recording import FAST_EXPORT
from testkit.support import (
    ADDON,
    BIN,
    LOOPBACK,
    Gateway,
    attributes,
    free_port,
    start_server,
    stop_server,
    wait_for,
)


def test_options_take_precedence_over_the_yaml(tmp_path, upstream, backend):
    config = {"sp_backend_url": "file:/nonexistent/ignored.jsonl", "service_name": "from-yaml",
              "capture": {"max_body_bytes": 1000}, "export": FAST_EXPORT}
    admin = free_port()
    opts = {"softprobe_backend_url": backend.url, "softprobe_service_name": "from-option",
            "softprobe_max_body": "16", "softprobe_admin": f"{LOOPBACK}:{admin}",
            "softprobe_direction": "inbound"}
    with Gateway(config, tmp_path, options=opts) as gw, gw.client() as client:
        assert client.get(f"{upstream.url}/big/100").status_code == 200
        ((resource, span),) = backend.wait_spans(1)
        attrs = attributes(span.attributes)
        assert resource["service.name"] == attrs["sp.service.name"] == "from-option"
        assert attrs["sp.traffic.direction"] == "inbound"
        assert attrs["http.response.body"] == "x" * 16 and attrs["http.response.body.truncated"] is True
        assert httpx.get(f"http://{LOOPBACK}:{admin}/healthz", trust_env=False).status_code == 200
        for _ in range(5):  # probes that hang up before their answer: no traceback in the log
            with socket.create_connection((LOOPBACK, admin)) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                probe.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        assert httpx.get(f"http://{LOOPBACK}:{admin}/healthz", trust_env=False).status_code == 200
        assert "Traceback" not in gw.output()
        assert f"options: sp_backend_url='{backend.url}'" in gw.output()


@pytest.mark.parametrize("option, value, message", [
    ("softprobe_admin", "nowhere", "softprobe_admin: key 'admin_listen': expected HOST:PORT"),
    ("softprobe_max_body", "lots", "softprobe_max_body: expected a size such as 64k or 1m, got 'lots'"),
    ("softprobe_lookups", "maybe", "softprobe_lookups: expected on or off, got 'maybe'"),
    ("softprobe_direction", "sideways", "softprobe_direction: key 'traffic_direction': must be one of"),
    ("softprobe_backend_url", "ftp://x", "softprobe_backend_url: key 'sp_backend_url': expected an http(s)://"),
])
def test_a_bad_option_stops_startup_with_one_line_naming_it(tmp_path, option, value, message):
    result = mitmdump(tmp_path, "--set", f"{option}={value}")
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in output
    assert [line for line in output.splitlines() if option in line] == [
        line for line in output.splitlines() if message in line], output
    assert message in output


def mitmdump(tmp_path, *args: str, port: int | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "mitmdump"), "-s", str(ADDON), "--listen-host", LOOPBACK,
         "--listen-port", str(port or free_port()), "--set", f"confdir={tmp_path / 'mitmproxy'}", *args],
        capture_output=True, text=True, timeout=60, cwd=tmp_path)


@pytest.fixture
def busy_port():
    """A port something else listens on (like a gateway already running)."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        s.listen()
        yield s.getsockname()[1]


def failure_lines(result: subprocess.CompletedProcess) -> list[str]:
    """What a start-up failure printed, less mitmproxy's own progress and closing lines."""
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert "Traceback" not in output and "Error" not in output.replace("Error logged during startup", "")
    return [line for line in output.splitlines() if line.strip() and not any(
        ok in line for ok in ("Loading script", "proxy listening at", "Error logged during startup"))]


def test_busy_admin_port_is_one_line(tmp_path, busy_port):
    (line,) = failure_lines(mitmdump(tmp_path, "--set", f"softprobe_admin={LOOPBACK}:{busy_port}"))
    assert f"admin_listen: cannot listen on {LOOPBACK}:{busy_port}: Address already in use" in line


def test_busy_proxy_port_is_mitmproxys_line_alone(tmp_path, busy_port):
    lines = failure_lines(mitmdump(tmp_path, port=busy_port))
    assert f"failed to listen on {LOOPBACK}:{busy_port}" in lines[0]
    assert len(lines) == 2 and lines[1].startswith("Try specifying a different port")  # mitmproxy's hint


def test_export_worker_that_cannot_start_is_one_line(tmp_path):
    (line,) = failure_lines(mitmdump(tmp_path, "--set", "softprobe_store=/proc/nowhere/x.db"))
    assert "store.path" in line and "/proc/nowhere/x.db" in line


def test_a_second_gateway_beside_a_running_one(tmp_path):
    """`make run PORT=9000` next to `make run`: the admin port clashes, one line, exit 1."""
    admin = free_port()
    with Gateway({"admin_listen": f"{LOOPBACK}:{admin}"}, tmp_path):
        (line,) = failure_lines(mitmdump(tmp_path, "--set", f"softprobe_admin={LOOPBACK}:{admin}"))
        assert "Address already in use" in line


def test_mitmweb_lists_the_options_and_applies_an_edit(tmp_path):
    """mitmweb's Options editor: GET /options.json, PUT /options, as its web UI does."""
    port, web = free_port(), free_port()
    log_path = tmp_path / "mitmweb.log"
    process, log = start_server(
        [str(BIN / "mitmweb"), "-s", str(ADDON), "--listen-host", LOOPBACK, "--listen-port", str(port),
         "--set", f"web_port={web}", "--set", "web_open_browser=false", "--set", "softprobe_admin=",
         "--set", f"softprobe_store={tmp_path / 'web.db'}", "--set", f"confdir={tmp_path / 'mitmproxy'}"],
        web, log_path, tmp_path)
    try:
        wait_for(lambda: b"lookups off" in log_path.read_bytes(), 30)
        with httpx.Client(base_url=f"http://{LOOPBACK}:{web}", trust_env=False) as ui:
            ui.get("/")  # the XSRF cookie, as the browser gets it
            xsrf = {"X-XSRFToken": ui.cookies["_xsrf"]}
            listed = ui.get("/options.json").json()
            assert {o.name for o in options.OPTIONS} <= listed.keys()
            assert listed["softprobe_strict"]["choices"] == ["on", "off"]
            assert "Overrides the YAML key 'lookup.on_miss'" in listed["softprobe_strict"]["help"]

            refused = ui.put("/options", json={"softprobe_lookups": "maybe"}, headers=xsrf)
            assert refused.status_code == 400 and "softprobe_lookups: expected on or off" in refused.text
            assert ui.put("/options", json={"softprobe_lookups": "on"}, headers=xsrf).status_code == 200
            wait_for(lambda: b"lookups on; options:" in log_path.read_bytes())
            assert ui.get("/options.json").json()["softprobe_lookups"]["value"] == "on"
    finally:
        stop_server(process, log)
    assert "Traceback" not in log_path.read_text()
