"""A traveller's session against the front service: search, book the cheapest flight, pay."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
import uuid
from typing import Any


def step(front: str, session: str, method: str, path: str, document: Any = None) -> Any:
    body = json.dumps(document).encode() if document is not None else None
    request = urllib.request.Request(front + path, body, method=method, headers={
        "content-type": "application/json", "x-sp-session-id": session})
    # Straight to the front service: only its calls to the airline go through the gateway.
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=10) as answer:
        result = json.load(answer)
    print(f"{method} {path} -> {answer.status} {json.dumps(result)}", flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--front", default="http://front.travel.svc.cluster.local:8080")
    parser.add_argument("--session", default=f"sp-session-travel-{uuid.uuid4().hex[:8]}")
    args = parser.parse_args()
    print(f"session {args.session}", flush=True)
    found = step(args.front, args.session, "GET", "/search?from=SFO&to=JFK")
    flight = found["cheapest"]
    booking = step(args.front, args.session, "POST", "/book", {"flight": flight["flight"], "passenger": "Ada Lovelace"})
    paid = step(args.front, args.session, "POST", "/pay", {"booking_id": booking["booking_id"], "amount": booking["price"]})
    return 0 if paid["status"] == "paid" else 1


if __name__ == "__main__":
    sys.exit(main())
