"""What a new user meets in the first hour (issue 28), against a real mitmdump on loopback: a
misspelled option, a backend that is down, a rejected reload holding a secret, a live reload."""

from __future__ import annotations

import subprocess

import httpx

from testkit.support import ADDON, BIN, LOOPBACK, Gateway, free_port, wait_for, write_atomically

SECRETS = ("SECRET-in-a-list", "SECRET-in-a-query", "SECRET-salt", "SECRET-password")


def test_a_misspelled_softprobe_option_stops_start_up_naming_the_closest(tmp_path) -> None:
    run = subprocess.run(
        [str(BIN / "mitmdump"), "-s", str(ADDON), "--listen-host", LOOPBACK, "--listen-port", str(free_port()),
         "--set", f"confdir={tmp_path / 'mitmproxy'}", "--set", "softprobe_lookup=on", "--set", "softprobe_strict=on"],
        capture_output=True, text=True, timeout=30, cwd=tmp_path)
    output = run.stdout + run.stderr
    assert run.returncode != 0, output
    lines = [line for line in output.splitlines() if "softprobe_lookup" in line]
    assert len(lines) == 1 and lines[0].endswith("softprobe_lookup: no such option (did you mean softprobe_lookups?)")
    assert "Traceback" not in output, output


def test_a_down_backend_is_said_at_start_up_and_a_rejected_reload_shows_no_secret(tmp_path) -> None:
    admin, down = free_port(), free_port()  # nothing listens on `down`
    backend = f"http://{LOOPBACK}:{down}"
    base = {"sp_backend_url": backend, "admin_listen": f"{LOOPBACK}:{admin}"}
    path = tmp_path / "gateway.yaml"
    write_atomically(path, base)
    with Gateway(path, tmp_path) as gw:
        said = wait_for(lambda: [line for line in gw.output().splitlines() if "is not reachable" in line])
        ready = httpx.get(f"http://{LOOPBACK}:{admin}/readyz", trust_env=False)
        assert ready.status_code == 200, ready.text  # fail open: traffic does not wait on the backend
        assert ready.text.splitlines() == [
            "ready", f"export worker running; exporting to {backend}: not reachable "
                     "(ConnectionRefusedError: [Errno 111] Connection refused) when the config was loaded"]

        write_atomically(path, {**base, "service_name": "beta"})  # a valid edit: a reload, said as one
        wait_for(lambda: gw.metric(admin, "softprobe_config_version") == 2)
        for n, edit in enumerate([{"public_key": ["SECRET-in-a-list"]},
                                  {"sp_backend_url": f"http://{LOOPBACK}:9/v1?token=SECRET-in-a-query"},
                                  {"redaction": {"salt": {"SECRET-salt": 1}}},
                                  {"sp_backend_url": [f"http://user:SECRET-password@{LOOPBACK}:9"]}], start=1):
            write_atomically(path, {**base, **edit})
            wait_for(lambda n=n: gw.metric(admin, "softprobe_config_reload_errors_total") == n)
            metrics = httpx.get(f"http://{LOOPBACK}:{admin}/metrics", trust_env=False).text
            shown = next(line for line in metrics.splitlines() if line.startswith("softprobe_config_reload_error_info"))
            assert f"'{next(iter(edit))}" in shown and not any(secret in metrics for secret in SECRETS), shown
        output = gw.output()
    assert len(said) == 1 and said[0].endswith(
        f"softprobe: backend {backend} is not reachable (ConnectionRefusedError: [Errno 111] Connection refused): "
        "the gateway runs on, exchanges wait in the export queue and are retried, then dropped and counted "
        "(softprobe_export_dropped_spans_total)")
    rejected = [line for line in output.splitlines() if "config reload rejected" in line]
    assert len(rejected) == 4 and not any(secret in output for secret in SECRETS), rejected
    assert "'http://127.0.0.1:9/...?...' has a query or fragment" in rejected[1]
    started = [line for line in output.splitlines() if f"softprobe: config {path} " in line]
    assert [line.split(f"{path} ")[1].split(";")[0] for line in started] == ["loaded", "reloaded"], started
