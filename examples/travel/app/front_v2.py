"""A new version of the travel demo's front service, with two regressions for `softprobe replay`
to find: search adds a booking fee to every price and no longer says when a flight departs."""

from __future__ import annotations

from typing import Any

import front
from jsonhttp import Request, main

FEE = 10


def search(req: Request) -> tuple[int, Any]:
    status, answer = front.search(req)
    if status == 200:
        for flight in answer["flights"]:  # the cheapest is one of them
            flight["price"] += FEE
            del flight["departs"]
    return status, answer


ROUTES = {**front.ROUTES, ("GET", r"/search"): search}

if __name__ == "__main__":
    main(__doc__, ROUTES)
