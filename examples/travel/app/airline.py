"""The airline service of the travel demo: flight search, bookings and payments, in memory."""

from __future__ import annotations

import itertools
import threading
from typing import Any

from jsonhttp import Request, main

FLIGHTS = [
    {"flight": "SP101", "from": "SFO", "to": "JFK", "departs": "08:05", "price": 329},
    {"flight": "SP205", "from": "SFO", "to": "JFK", "departs": "13:40", "price": 289},
    {"flight": "SP317", "from": "SFO", "to": "SEA", "departs": "09:15", "price": 129},
    {"flight": "SP422", "from": "JFK", "to": "SFO", "departs": "18:20", "price": 349},
]
bookings: dict[str, dict[str, Any]] = {}
numbers = itertools.count(1)
lock = threading.Lock()


def search(req: Request) -> tuple[int, Any]:
    found = [f for f in FLIGHTS if f["from"] == req.query.get("from") and f["to"] == req.query.get("to")]
    return 200, {"flights": found}


def book(req: Request) -> tuple[int, Any]:
    flight = next((f for f in FLIGHTS if f["flight"] == req.json["flight"]), None)
    if flight is None:
        return 404, {"error": f"no flight {req.json['flight']}"}
    with lock:
        booking = {"booking_id": f"BK{next(numbers):04d}", "flight": flight["flight"],
                   "passenger": req.json["passenger"], "price": flight["price"], "status": "pending"}
        bookings[booking["booking_id"]] = booking
    return 201, booking


def pay(req: Request) -> tuple[int, Any]:
    with lock:
        booking = bookings.get(req.params["booking_id"])
        if booking is None:
            return 404, {"error": f"no booking {req.params['booking_id']}"}
        if req.json.get("amount") != booking["price"]:
            return 402, {"error": "amount does not match the price", "price": booking["price"]}
        booking["status"] = "paid"
    return 200, booking


ROUTES = {
    ("GET", r"/flights"): search,
    ("POST", r"/bookings"): book,
    ("POST", r"/bookings/(?P<booking_id>[A-Z0-9]+)/payment"): pay,
}

if __name__ == "__main__":
    main(__doc__, ROUTES)
