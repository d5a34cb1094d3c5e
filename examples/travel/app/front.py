"""The front service of the travel demo: its search/book/pay API calls the airline service.

Its calls to the airline are what the gateway records as outbound exchanges. It passes the
session and trace headers along so they land in the caller's session, and it never talks to
the gateway on purpose: in the mesh Istio routes its calls there; locally `EGRESS_PROXY` does.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from datetime import datetime, timezone
from typing import Any

from jsonhttp import Request, main

PROPAGATED = ("x-softprobe-session-id", "x-sp-session-id", "traceparent", "tracestate")
AIRLINE_URL = os.environ.get("AIRLINE_URL", "http://airline.travel.svc.cluster.local:8080")
# Without a mesh, the local demo names the gateway as this service's egress proxy.
opener = urllib.request.build_opener(urllib.request.ProxyHandler(
    {"http": os.environ["EGRESS_PROXY"]} if os.environ.get("EGRESS_PROXY") else {}))


def airline(req: Request, method: str, path: str, document: Any = None) -> tuple[int, Any]:
    headers = {k: req.headers[k] for k in PROPAGATED if req.headers.get(k)}
    headers["content-type"] = "application/json"
    body = json.dumps(document).encode() if document is not None else None
    call = urllib.request.Request(AIRLINE_URL + path, body, headers, method=method)
    try:
        with opener.open(call, timeout=10) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def search(req: Request) -> tuple[int, Any]:
    status, found = airline(req, "GET", f"/flights?from={req.query['from']}&to={req.query['to']}")
    if status != 200:
        return status, found
    flights = sorted(found["flights"], key=lambda f: f["price"])
    return 200, {"cheapest": flights[0] if flights else None, "flights": flights,
                 "searched_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds")}


def book(req: Request) -> tuple[int, Any]:
    return airline(req, "POST", "/bookings", {"flight": req.json["flight"], "passenger": req.json["passenger"]})


def pay(req: Request) -> tuple[int, Any]:
    booking_id = req.json["booking_id"]
    return airline(req, "POST", f"/bookings/{booking_id}/payment", {"amount": req.json["amount"]})


ROUTES = {("GET", r"/search"): search, ("POST", r"/book"): book, ("POST", r"/pay"): pay}

if __name__ == "__main__":
    main(__doc__, ROUTES)
