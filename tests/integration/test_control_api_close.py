"""Closing a capture session writes its case, as Softprobe's runtime does (its `openapi.yaml`:
"In capture mode the runtime may persist a case before deleting the session. OSS accepts optional
query `out` as the output path override for the written case file"; `capturePath` in the answer),
against a real `softprobe serve` and a real gateway."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from testkit.recording import FAST_EXPORT
from testkit.serve import KEY, Backend, validate
from testkit.support import BIN, Gateway, HttpServer, echo_upstream, wait_for


@pytest.fixture
def upstream():
    with echo_upstream() as server:
        yield server


def capture(runtime: Backend, tmp: Path, upstream: HttpServer) -> str:
    """A capture session holding two exchanges recorded through a gateway."""
    sid = runtime.session("capture")
    config = {"sp_backend_url": runtime.url, "enable_inject": True, "export": FAST_EXPORT}
    with Gateway(config, tmp, env={"SOFTPROBE_PUBLIC_KEY": KEY}) as gw, \
            gw.client(headers={"x-softprobe-session-id": sid}) as client:
        client.get(f"{upstream.url}/json")
        client.get(f"{upstream.url}/json?page=2")
        wait_for(lambda: runtime.client.get(f"/v1/sessions/{sid}/stats").json()["stats"]["extractedSpans"] >= 2, 30)
    return sid


def exported(db: Path, sid: str, tmp: Path) -> dict:
    """What `softprobe case export` writes for the session."""
    out = tmp / f"{sid}.exported.json"
    done = subprocess.run([str(BIN / "softprobe"), "case", "export", sid, "--db", str(db), "-o", str(out)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return json.loads(out.read_text())


def test_close_with_out_writes_the_case_export_writes(tmp_path: Path, upstream: HttpServer) -> None:
    target = tmp_path / "cases" / "checkout.case.json"
    with Backend(tmp_path / "runtime.db", KEY, cwd=tmp_path) as runtime:
        sid = capture(runtime, tmp_path, upstream)
        closed = runtime.client.post(f"/v1/sessions/{sid}/close", params={"out": str(target)})
        assert closed.status_code == 200, closed.text
        validate(closed.json(), "#CloseSessionResponse")
        assert closed.json() == {"sessionId": sid, "closed": True, "capturePath": str(target)}
        assert runtime.client.get(f"/v1/sessions/{sid}/stats").status_code == 404  # closed for good
        case = json.loads(target.read_text())
        validate(case, "session-load-case.request.schema.json")
        assert {**case, "createdAt": ""} == {**exported(runtime.db, sid, tmp_path), "createdAt": ""}
        assert case["caseId"] == sid and case["mode"] == "capture"
        paths = sorted(span["name"] for trace in case["traces"] for rs in trace["resourceSpans"]
                       for ss in rs["scopeSpans"] for span in ss["spans"])
        assert len(paths) == 2
        # and it loads into a replay session (replayed through a gateway with the upstream gone:
        # test_control_api_gateway.py, test_capture_session_exported_as_a_case_then_replayed)
        replay = runtime.session()
        assert runtime.client.post(f"/v1/sessions/{replay}/load-case", json=case).status_code == 200
    assert not list(tmp_path.glob("cases/.*partial"))


@pytest.mark.parametrize("how", ["env", "flag"])
def test_close_writes_at_the_configured_path_its_placeholders_filled(tmp_path: Path, upstream: HttpServer,
                                                                     how: str) -> None:
    """`$SOFTPROBE_CAPTURE_CASE_PATH` (Softprobe's runtime's variable), or `--capture-case-path`,
    names the default; a replay session's close writes nothing."""
    template = str(tmp_path / "captured" / "{sessionId}-{mode}.case.json")
    options = {"env": {"SOFTPROBE_CAPTURE_CASE_PATH": template}} if how == "env" else \
        {"args": ("--capture-case-path", template)}
    with Backend(tmp_path / "runtime.db", KEY, **options) as runtime:
        sid = capture(runtime, tmp_path, upstream)
        closed = runtime.client.post(f"/v1/sessions/{sid}/close").json()
        assert closed["capturePath"] == str(tmp_path / "captured" / f"{sid}-capture.case.json")
        assert len(json.loads(Path(closed["capturePath"]).read_text())["traces"]) >= 1
        replay = runtime.session()
        assert runtime.client.post(f"/v1/sessions/{replay}/close").json() == {"sessionId": replay, "closed": True}
    assert [p.name for p in (tmp_path / "captured").iterdir()] == [f"{sid}-capture.case.json"]


def test_without_a_path_nothing_is_written_and_the_recording_stays(tmp_path: Path, upstream: HttpServer) -> None:
    with Backend(tmp_path / "runtime.db", KEY, cwd=tmp_path) as runtime:
        sid = capture(runtime, tmp_path, upstream)
        before = set(tmp_path.rglob("*.json"))
        assert runtime.client.post(f"/v1/sessions/{sid}/close").json() == {"sessionId": sid, "closed": True}
        assert set(tmp_path.rglob("*.json")) == before
        assert len(exported(runtime.db, sid, tmp_path)["traces"]) >= 1


def test_a_case_that_cannot_be_written_leaves_the_session_open(tmp_path: Path, upstream: HttpServer) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    (tmp_path / "out").symlink_to(tmp_path.parent, target_is_directory=True)
    with Backend(tmp_path / "runtime.db", KEY, cwd=tmp_path) as runtime:
        sid = capture(runtime, tmp_path, upstream)
        http = runtime.client
        for elsewhere in (str(tmp_path.parent / "x.case.json"), "../x.case.json", "out/x.case.json"):
            refused = http.post(f"/v1/sessions/{sid}/close", params={"out": elsewhere})  # outside --capture-dir
            assert refused.status_code == 400 and "outside the capture directory" in refused.text, elsewhere
        failed = http.post(f"/v1/sessions/{sid}/close", params={"out": str(blocker / "x.case.json")})
        assert failed.status_code == 500 and failed.json()["error"]["code"] == "internal_error"
        validate(failed.json(), "#APIError")
        refused = http.post(f"/v1/sessions/{sid}/close", params={"out": str(tmp_path / ".bashrc")})
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_request"
        assert http.post(f"/v1/sessions/{sid}/close", params={"out": "s3://bucket/x.case.json"}).status_code == 400
        assert http.get(f"/v1/sessions/{sid}/stats").status_code == 200  # still open: close again
        assert http.post(f"/v1/sessions/{sid}/close", params={"out": str(tmp_path / "ok.case.json")}).status_code == 200
    assert not (tmp_path / ".bashrc").exists() and not (tmp_path.parent / "x.case.json").exists()
    assert (tmp_path / "ok.case.json").stat().st_mode & 0o777 == 0o600  # recorded bodies: the owner's


def test_cli_close_out_is_a_path_of_the_callers_directory(tmp_path: Path, upstream: HttpServer) -> None:
    """`softprobe session close --out` (Softprobe's CLI flag): the file lands where the caller meant,
    whatever the runtime's working directory."""
    caller = tmp_path / "caller"
    caller.mkdir()
    with Backend(tmp_path / "runtime.db", KEY, cwd=tmp_path) as runtime:
        sid = capture(runtime, tmp_path, upstream)
        env = {**{k: v for k, v in os.environ.items() if k != "SOFTPROBE_SESSION_ID"},
               "SOFTPROBE_RUNTIME_URL": runtime.url, "SOFTPROBE_API_TOKEN": KEY}
        def close(target: str) -> subprocess.CompletedProcess:
            return subprocess.run([str(BIN / "softprobe"), "session", "close", "--session", sid, "--out", target,
                                   "--json"], env=env, cwd=caller, capture_output=True, text=True, timeout=30)

        url = close("s3://bucket/run.case.json")  # a URL travels as it is: refused, not made a local path
        assert url.returncode == 5 and "only file:// URLs" in url.stderr + url.stdout, url
        done = close("cases/run.case.json")
        assert done.returncode == 0, done.stderr
    written = caller / "cases" / "run.case.json"
    closed = json.loads(done.stdout)
    assert closed == {"status": "ok", "exitCode": 0, "error": None, "sessionId": sid, "closed": True,
                      "capturePath": str(written), "stats": closed["stats"]}
    assert set(closed["stats"]) >= {"extractedSpans", "injectedSpans", "strictMisses"}
    assert json.loads(written.read_text())["caseId"] == sid
