"""Per-flow state through a real mitmdump: flow files written by mitmproxy's own save addon beside the gateway, a flow recorded per the config it started with, a duplicate YAML key."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from mitmproxy import io
from softprobe_gateway.config.loader import ConfigFile
from softprobe_gateway.config.schema import ConfigError

from testkit.recording import config, recorded_count
from testkit.support import (
    Gateway,
    HttpServer,
    OtlpBackend,
    Received,
    Reply,
    free_port,
    run_mitmdump_config,
    upstream_reply,
    wait_for,
    write_atomically,
)

STREAM_THRESHOLD = 1024


def test_flow_file_holds_every_flow_and_marks_gateway_answers(tmp_path: Path) -> None:
    """`mitmdump -w` beside the addon: recorded, skipped, streamed, hit and mocked flows all saved
    and readable back; what the gateway answered itself is `is_replay`, as server playback marks it."""
    db, saved = tmp_path / "sp.db", tmp_path / "flows.mitm"

    def reply(got: Received) -> Reply:
        if got.path == "/big.css":  # streamed, then skipped as a static response
            return 200, {"content-type": "text/css"}, b"x" * (4 * STREAM_THRESHOLD)
        return upstream_reply(got)

    settings = config(db, enable_inject=True, capture={"stream_threshold_bytes": STREAM_THRESHOLD},
                      mocks=[{"path": "^/mocked$", "body": "from a mock"}],
                      exemptionRules=[{"pathPatterns": ["^/exempt"]}])
    with HttpServer(reply) as upstream:
        with Gateway(settings, tmp_path, options={"save_stream_file": str(saved)}) as gw, \
                gw.client(headers={"x-sp-session-id": "w-1"}) as client:
            paths = ["/json", "/exempt", f"/big/{4 * STREAM_THRESHOLD}", "/big.css", "/mocked"]
            answers = {p: client.get(upstream.url + p) for p in paths}
            wait_for(lambda: recorded_count(db) == 3)  # /json, /big/N and the mock
            hit = client.get(upstream.url + "/json")
            assert gw.stop() == 0
    assert all(r.status_code == 200 for r in answers.values())
    assert hit.text == answers["/json"].text and len(upstream.received) == 4
    with saved.open("rb") as f:
        flows = list(io.FlowReader(f).stream())
    by_path = [(f.request.path, f.is_replay, f.metadata.get("softprobe.answered_by"), f.response.status_code)
               for f in flows]
    assert sorted(by_path, key=str) == sorted([
        ("/json", None, None, 200), ("/exempt", None, None, 200),
        (f"/big/{4 * STREAM_THRESHOLD}", None, None, 200), ("/big.css", None, None, 200),
        ("/mocked", "response", "mock", 200), ("/json", "response", "hit", 200)], key=str)


def test_a_flow_is_recorded_per_the_config_it_started_with(tmp_path: Path) -> None:
    """A reload between a flow's request and its response: the flow stays on the config (here:
    the export backend) it started with; flows after the reload use the new one."""
    admin = free_port()
    release = threading.Event()

    def reply(got: Received) -> Reply:
        if got.path == "/slow":
            release.wait(20)
        return upstream_reply(got)

    path = tmp_path / "gateway.yaml"
    with HttpServer(reply) as upstream, OtlpBackend() as first, OtlpBackend() as second:
        def settings(backend: OtlpBackend) -> dict:
            return {"sp_backend_url": backend.url, "export": {"flush_interval_ms": 20},
                    "admin_listen": f"127.0.0.1:{admin}"}

        write_atomically(path, settings(first))
        with Gateway(path, tmp_path) as gw, ThreadPoolExecutor(1) as pool:
            with gw.client() as slow_client:
                slow = pool.submit(slow_client.get, upstream.url + "/slow")
                wait_for(lambda: any(r.path == "/slow" for r in upstream.received))
                write_atomically(path, settings(second))
                wait_for(lambda: gw.metric(admin, "softprobe_config_version") == 2)
                release.set()
                assert slow.result(10).status_code == 200
            with gw.client() as client:
                assert client.get(upstream.url + "/after").status_code == 200
            first.wait_spans(1)
            second.wait_spans(1)
    assert [s.name for _, s in first.spans()] == ["/slow"]
    assert [s.name for _, s in second.spans()] == ["/after"]


def test_duplicate_yaml_key_is_a_config_error_naming_it(tmp_path: Path) -> None:
    """At start-up one line and a non-zero exit; a reload is rejected the same way (ConfigError)."""
    text = "service_name: a\nstore:\n  path: a.db\nstore:\n  path: b.db\n"
    done = run_mitmdump_config(tmp_path, text)
    errors = [line for line in done.stdout.splitlines() if "given twice" in line]
    assert done.returncode != 0 and "Traceback" not in done.stdout + done.stderr
    assert len(errors) == 1 and "(line 4): key 'store' given twice" in errors[0]
    nested = tmp_path / "nested.yaml"
    nested.write_text("capture:\n  max_body_bytes: 5\n  max_body_bytes: 6\n")
    with pytest.raises(ConfigError, match="line 3.*'max_body_bytes' given twice"):
        ConfigFile(str(nested)).load()
