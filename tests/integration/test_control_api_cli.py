"""`softprobe session ...` against a real `softprobe serve`: output, the key, Softprobe's exit codes."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path


from testkit.serve import KEY, Backend
from testkit.support import BIN, free_port


def softprobe(*args: str, url: str, token: str = "") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("SOFTPROBE_API_TOKEN", "SOFTPROBE_SESSION_ID")}
    env.update(SOFTPROBE_RUNTIME_URL=url, **({"SOFTPROBE_API_TOKEN": token} if token else {}))
    return subprocess.run([str(BIN / "softprobe"), "session", *args], env=env, capture_output=True, text=True,
                          timeout=30)


def test_session_commands_with_the_token(tmp_path: Path) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"externalHttp": "strict"}))
    with Backend(tmp_path / "store.db", KEY) as runtime:
        url = runtime.url
        assert softprobe("start", "--mode", "replay", url=url).returncode == 1  # 401: no token
        started = softprobe("start", "--mode", "replay", "--shell", "--policy", str(policy), url=url, token=KEY)
        assert started.returncode == 0, started.stderr
        sid = started.stdout.strip().removeprefix("export SOFTPROBE_SESSION_ID=")
        rules = tmp_path / "rules.yaml"
        rules.write_text("version: 1\nrules:\n  - when: {host: a.test}\n    then: {action: passthrough}\n")
        applied = softprobe("rules", "apply", "--session", sid, "--file", str(rules), "--json", url=url, token=KEY)
        assert json.loads(applied.stdout) == {"status": "ok", "exitCode": 0, "error": None, "sessionId": sid,
                                              "sessionRevision": 2, "ruleCount": 1}
        assert softprobe("policy", "set", "--session", sid, "--strict", url=url, token=KEY).returncode == 0
        assert runtime.client.get(f"/v1/sessions/{sid}/state").json()["policy"] == {
            "externalHttp": "strict", "defaultOnMiss": "error"}
        stats = json.loads(softprobe("stats", "--session", sid, "--json", url=url, token=KEY).stdout)
        counters = {"injectedSpans": 0, "extractedSpans": 0, "strictMisses": 0}
        assert stats == {"status": "ok", "exitCode": 0, "error": None, "sessionId": sid, "sessionRevision": 3,
                         "mode": "replay", "stats": counters, **counters}
        rules.write_text('{"rules": [{"when": {}, "then": {"action": "explode"}}]}')
        invalid = softprobe("rules", "apply", "--session", sid, "--file", str(rules), url=url, token=KEY)
        assert invalid.returncode == 5 and "invalid_request" in invalid.stderr
        assert softprobe("close", "--session", sid, url=url, token=KEY).returncode == 0
        gone = softprobe("stats", "--session", sid, url=url, token=KEY)
        assert gone.returncode == 4 and "unknown_session" in gone.stderr
    unreachable = softprobe("stats", "--session", sid, url=f"http://127.0.0.1:{free_port()}")
    assert unreachable.returncode == 3 and "unreachable" in unreachable.stderr
