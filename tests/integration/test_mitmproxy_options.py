"""Every mitmproxy option family a user sets still takes effect with the gateway loaded (issue 27:
the addons with nothing to do are out of the flow dispatch, those an option gives work are in),
through real mitmdump and mitmweb processes; one gateway per option set, shared by its tests."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest
from mitmproxy import io
from mitmproxy.test import tflow

from testkit.recording import FAST_EXPORT
from testkit.support import (
    ADDON,
    BIN,
    LOOPBACK,
    Gateway,
    HttpServer,
    OtlpBackend,
    Received,
    Reply,
    attributes,
    free_port,
    start_server,
    stop_server,
    upstream_reply,
    wait_for,
)


def reply(got: Received) -> Reply:
    """The echo upstream's answers, a cookie to stick, and the head it received, echoed back."""
    if got.path == "/sticky/set":
        return 200, {"content-type": "text/plain", "set-cookie": "flavour=oat; Path=/sticky"}, b"set"
    if got.path.startswith("/head"):
        return 200, {"content-type": "application/json"}, repr(sorted(got.headers.items())).encode()
    return upstream_reply(got)


@pytest.fixture(scope="module")
def upstream():
    with HttpServer(reply) as server:
        yield server


@pytest.fixture(scope="module")
def backend():
    with OtlpBackend() as server:
        yield server


def recorded(backend: OtlpBackend, path: str) -> dict:
    """The exported exchange of `path` (the gateway recorded it)."""
    def find():
        return next((a for _, span in backend.spans() if (a := attributes(span.attributes))["url.path"] == path), None)
    return wait_for(find)


def flows_file(directory: Path, url: str, body: bytes) -> Path:
    """A flows file (as `mitmdump -w` writes them) holding one answered GET of `url`."""
    recorded_flow = tflow.tflow(resp=True)
    recorded_flow.request.url, recorded_flow.request.content = url, b""
    recorded_flow.response.content = body
    path = directory / "replay.mitm"
    with path.open("wb") as f:
        io.FlowWriter(f).add(recorded_flow)
    return path


@pytest.fixture(scope="module")
def many(tmp_path_factory, upstream, backend):
    """One gateway with most of the families set at once, each scoped to paths of its own."""
    tmp = tmp_path_factory.mktemp("options")
    (tmp / "local.txt").write_text("from map_local")
    options = {
        "modify_headers": "|~q & ~u /head/mh|x-added|by-modify-headers",
        "map_remote": "|/mr$|/json",
        "map_local": f"|/ml$|{tmp / 'local.txt'}",
        "modify_body": "|~s & ~u /mb|upstream saw|modified",
        "anticache": "true", "anticomp": "true",
        "stickycookie": "~u /sticky",
        "block_list": "|~u /blocked|418",
        "server_replay": str(flows_file(tmp, f"{upstream.url}/replayed", b"from the flows file")),
        "keepserving": "true",  # else mitmdump stops once its one replayed flow was served
    }
    with Gateway({"sp_backend_url": backend.url, "export": FAST_EXPORT}, tmp, options=options) as gw:
        with gw.client() as client:
            yield gw, client


def test_the_option_families_are_logged_back_in_the_dispatch(many):
    gw, _ = many
    line = next(line for line in gw.output().splitlines() if "out of the flow dispatch" in line)
    for addon in ("ModifyHeaders", "MapRemote", "MapLocal", "ModifyBody", "AntiCache", "AntiComp", "StickyCookie",
                  "BlockList", "ServerPlayback", "Block"):
        assert f" {addon} (" not in line, line
    assert "ProxyAuth (no proxyauth)" in line and "Save (no -w/save_stream_file)" in line


@pytest.mark.parametrize("path, headers, status, body", [
    ("/head/mh", {}, 200, "('x-added', 'by-modify-headers')"),  # modify_headers, in the upstream's head
    ("/head/ac", {"if-none-match": "v1"}, 200, "NOT if-none-match"),  # anticache strips it
    ("/head/acomp", {"accept-encoding": "gzip, br"}, 200, "('accept-encoding', 'identity')"),  # anticomp
    ("/mr", {}, 200, '{"ok": true'),  # map_remote: the upstream's /json
    ("/ml", {}, 200, "from map_local"),  # map_local: a local file, not the upstream
    ("/mb", {}, 200, "modified GET /mb"),  # modify_body on the response
    ("/blocked", {}, 418, ""),  # block_list
    ("/replayed", {}, 200, "from the flows file"),  # server_replay
])
def test_an_option_takes_effect_and_the_exchange_is_recorded(many, upstream, backend, path, headers, status, body):
    _, client = many
    answer = client.get(f"{upstream.url}{path}", headers=headers)
    assert answer.status_code == status
    if body.startswith("NOT "):
        assert f"'{body[4:]}'" not in answer.text and "'host'" in answer.text
    else:
        assert body in answer.text
    assert recorded(backend, path)["http.response.status_code"] == status


def test_stickycookie_sends_the_cookie_it_was_set(many, upstream):
    _, client = many
    client.get(f"{upstream.url}/sticky/set")
    client.cookies.clear()  # the client forgets it: the gateway's mitmproxy adds it
    client.get(f"{upstream.url}/sticky/next")
    assert upstream.received[-1].path == "/sticky/next"
    assert upstream.received[-1].headers.get("cookie") == "flavour=oat"


def test_w_writes_the_flows(tmp_path, upstream, backend):
    saved = tmp_path / "saved.mitm"
    with Gateway({"sp_backend_url": backend.url, "export": FAST_EXPORT}, tmp_path,
                 options={"save_stream_file": str(saved)}) as gw, gw.client() as client:
        assert client.get(f"{upstream.url}/json?w=1").status_code == 200
        recorded(backend, "/json?w=1")
    with saved.open("rb") as f:
        flows = list(io.FlowReader(f).stream())
    assert [flow.request.path for flow in flows] == ["/json?w=1"]
    assert flows[0].comment.startswith("softprobe: recorded · session ")  # saved with the flow


def test_proxyauth_refuses_without_credentials(tmp_path, upstream, backend):
    with Gateway({"sp_backend_url": backend.url, "export": FAST_EXPORT}, tmp_path,
                 options={"proxyauth": "ada:secret"}) as gw:
        with gw.client() as client:
            assert client.get(f"{upstream.url}/json?auth=none").status_code == 407
        proxy = f"http://ada:secret@{LOOPBACK}:{gw.port}"
        with httpx.Client(proxy=proxy, trust_env=False) as client:
            assert client.get(f"{upstream.url}/json?auth=ok").status_code == 200
        recorded(backend, "/json?auth=ok")


def test_upstream_auth_authorizes_the_reverse_proxys_requests(tmp_path, upstream, backend):
    with Gateway({"sp_backend_url": backend.url, "export": FAST_EXPORT}, tmp_path, mode=f"reverse:{upstream.url}",
                 options={"upstream_auth": "ada:secret"}) as gw, gw.client() as client:
        assert client.get("/head/ua").status_code == 200
        assert upstream.received[-1].headers["authorization"] == "Basic " + base64.b64encode(b"ada:secret").decode()
        recorded(backend, "/head/ua")


@pytest.mark.parametrize("option, value", [("ignore_hosts", LOOPBACK), ("allow_hosts", "elsewhere.test")])
def test_hosts_not_intercepted_are_relayed_and_not_seen(tmp_path, upstream, backend, option, value):
    admin = free_port()
    config = {"sp_backend_url": backend.url, "export": FAST_EXPORT, "admin_listen": f"{LOOPBACK}:{admin}"}
    with Gateway(config, tmp_path, mode=f"reverse:{upstream.url}", options={option: value}) as gw, \
            gw.client() as client:
        assert client.get("/json?relayed=1").text.startswith('{"ok": true')
        assert upstream.received[-1].path == "/json?relayed=1"
        assert gw.metric(admin, "softprobe_exchanges_seen_total") == 0  # a TCP relay: no flow


def test_an_option_set_while_running_brings_its_addon_back(tmp_path, upstream, backend):
    """mitmweb's Options editor (PUT /options, as its web UI sends it) sets modify_headers; the
    flow list shows what the gateway did with each flow in its comment."""
    port, web = free_port(), free_port()
    log_path = tmp_path / "mitmweb.log"
    config = tmp_path / "gateway.yaml"
    config.write_text(f"sp_backend_url: '{backend.url}'\n")
    process, log = start_server(
        [str(BIN / "mitmweb"), "-s", str(ADDON), "--listen-host", LOOPBACK, "--listen-port", str(port),
         "--set", f"web_port={web}", "--set", "web_open_browser=false", "--set", f"softprobe_config={config}",
         "--set", f"confdir={tmp_path / 'mitmproxy'}"], web, log_path, tmp_path)
    try:
        wait_for(lambda: b"out of the flow dispatch" in log_path.read_bytes(), 30)
        with httpx.Client(proxy=f"http://{LOOPBACK}:{port}", trust_env=False) as client, \
                httpx.Client(base_url=f"http://{LOOPBACK}:{web}", trust_env=False) as ui:
            assert "x-added" not in client.get(f"{upstream.url}/head/before").text
            ui.get("/")  # the XSRF cookie, as the browser gets it
            edit = ui.put("/options", json={"modify_headers": ["|~q|x-added|live"]},
                          headers={"X-XSRFToken": ui.cookies["_xsrf"]})
            assert edit.status_code == 200, edit.text
            assert "('x-added', 'live')" in client.get(f"{upstream.url}/head/after").text
            session = recorded(backend, "/head/after")["sp.session.id"]
            span = next(s for _, s in backend.spans() if attributes(s.attributes)["url.path"] == "/head/after")
            comments = {f["request"]["path"]: f["comment"] for f in ui.get("/flows").json()}
            assert comments["/head/after"] == (f"softprobe: recorded · session {session} · "
                                               f"exchange {span.span_id.hex()}")  # what mitmweb shows
    finally:
        stop_server(process, log)
    output = log_path.read_text()
    assert "back in the flow dispatch: ModifyHeaders" in output and "Traceback" not in output


def test_a_script_beside_ours_takes_effect_when_it_is_edited_while_running(tmp_path, upstream, backend):
    """mitmproxy reloads an edited script (a new module, registered anew): the dispatch, which
    keeps each script's handlers in its table, sends the next flow to the new ones."""
    theirs = tmp_path / "theirs.py"
    theirs.write_text(SCRIPT.format(value="first"))
    port, log_path = free_port(), tmp_path / "mitmdump.log"
    config = tmp_path / "gateway.yaml"
    config.write_text(f"sp_backend_url: '{backend.url}'\nexport: {{flush_interval_ms: 20}}\n")
    process, log = start_server(
        [str(BIN / "mitmdump"), "-s", str(ADDON), "-s", str(theirs), "--listen-host", LOOPBACK,
         "--listen-port", str(port), "--set", f"softprobe_config={config}", "--set", "flow_detail=0",
         "--set", f"confdir={tmp_path / 'mitmproxy'}"], port, log_path, tmp_path)
    try:
        with httpx.Client(proxy=f"http://{LOOPBACK}:{port}", trust_env=False) as client:
            assert "('x-theirs', 'first')" in client.get(f"{upstream.url}/head/1").text
            theirs.write_text(SCRIPT.format(value="second"))  # mitmproxy polls the file each second
            wait_for(lambda: "('x-theirs', 'second')" in client.get(f"{upstream.url}/head/2").text, 15)
        recorded(backend, "/head/2")
    finally:
        stop_server(process, log)
    assert "Traceback" not in log_path.read_text()


SCRIPT = """
def requestheaders(flow):
    flow.request.headers["x-theirs"] = "{value}"
"""
