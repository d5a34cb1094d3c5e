"""`softprobe serve` as a real process on a loopback port, and the published control API's schemas."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
from pathlib import Path
from typing import Any

import httpx
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from testkit.support import BIN, LOOPBACK, free_port, wait_port

SCHEMAS = Path(__file__).resolve().parents[1] / "tests" / "schemas"
KEY = "k-control-7d1e"
# As k8s/overlays/embedded-backend runs serve (tests/system/test_k8s.py checks that; the serve tests run it so).
OVERLAY_ARGS = ["serve", "--listen", "0.0.0.0:8090", "--db", "/data/softprobe.db"]


class Backend:
    """`softprobe serve` on a free loopback port, its store in `db`, keyed with `key` when given
    (`client` then sends it as a bearer token); `args` and `env` added to its command and environment."""

    def __init__(self, db: Path, key: str = "", args: tuple[str, ...] = (), env: dict[str, str] | None = None,
                 cwd: Path | None = None, store: str = "", nofile: int = 0, port: int = 0) -> None:
        """`store`: a store URL instead of the file `db` (beside which its stderr goes, in `log`);
        `nofile`: its descriptor limit; `port`: a given one (a replica restarted where it was)."""
        self.db, self.key, port = db, key, port or free_port()
        self.url, self.port = f"http://{LOOPBACK}:{port}", port
        self.log = db.with_name(f"{db.name}.serve-{port}.log")
        self.log.parent.mkdir(parents=True, exist_ok=True)  # serve makes its store's directory; the log's is ours
        environment = {k: v for k, v in os.environ.items()
                       if k not in ("SOFTPROBE_PUBLIC_KEY", "SOFTPROBE_CAPTURE_CASE_PATH", "SOFTPROBE_STORE_URL")}
        if key:
            environment["SOFTPROBE_PUBLIC_KEY"] = key
        limit = (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))) if nofile else None
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [str(BIN / "softprobe"), "serve", "--listen", f"{LOOPBACK}:{port}",
                 *(("--store", store) if store else ("--db", str(db))), *args],
                env={**environment, **(env or {})}, stdout=subprocess.DEVNULL, stderr=log, cwd=cwd,
                preexec_fn=limit)
        wait_port(port)
        headers = {"authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.Client(base_url=self.url, trust_env=False, timeout=10, headers=headers)

    def session(self, mode: str = "replay") -> str:
        """A new control session's id."""
        reply = self.client.post("/v1/sessions", json={"mode": mode})
        assert reply.status_code == 200, reply.text
        return reply.json()["sessionId"]

    def stop(self) -> int:
        self.client.close()
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=10)

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.stop() == 0


def _registry() -> Registry:
    resources = []
    for path in SCHEMAS.glob("*.json"):
        schema = json.loads(path.read_text())
        resources.append((schema["$id"], Resource.from_contents(schema)))
        resources.append((f"./{path.name}", Resource.from_contents(schema)))
    return Registry().with_resources(resources)


REGISTRY = _registry()


def validate(document: Any, schema: str) -> None:
    """`schema`: a file under tests/schemas, or `#Name` for a component of the runtime's openapi.yaml."""
    if schema.startswith("#"):
        ref = {"$ref": f"https://softprobe.dev/softprobe-cli/openapi.components.json#/$defs/{schema[1:]}"}
    else:
        ref = json.loads((SCHEMAS / schema).read_text())
    Draft202012Validator(ref, registry=REGISTRY).validate(document)


def case_for(host: str) -> dict:
    """A Softprobe case (OTLP JSON) recording one answer of `host`, and one embedded rule."""
    attributes = {"sp.span.type": "inject", "sp.traffic.direction": "outbound", "url.host": host,
                  "url.path": "/price", "http.request.method": "GET",
                  "http.response.header.content-type": "application/json", "http.response.body": '{"price": 42}'}
    span = {"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331", "name": "GET /price",
            "kind": 3, "startTimeUnixNano": "1", "endTimeUnixNano": "2",
            "attributes": [*({"key": k, "value": {"stringValue": v}} for k, v in attributes.items()),
                           {"key": "http.response.status_code", "value": {"intValue": "200"}}]}
    return {"version": "1.0.0", "caseId": "checkout", "traces": [{"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}],
            "rules": [{"id": "partner", "when": {"host": "partner.test"},
                       "then": {"action": "mock", "response": {"status": 200, "body": "partner from case"}}}]}
