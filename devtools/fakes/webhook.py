"""A robeing's webhook endpoint on loopback: records each delivery, answers as told.

`statuses` is a queue of statuses to answer (then `default_status`, 204); `latency` delays each answer,
so a slow robeing can be staged. `deliveries` holds every request received, with its arrival time on the
monotonic clock (`arrivals`).
"""

from __future__ import annotations

import collections
import json
import time
from typing import Any

from devtools.fakes._server import FakeServer, RecordedRequest, Response


class FakeWebhook(FakeServer):
    """See the module docstring."""

    name = "fake-webhook"

    def __init__(self, *, latency: float = 0.0, default_status: int = 204) -> None:
        super().__init__(latency=latency)
        self.default_status = default_status
        self.statuses: collections.deque[int] = collections.deque()
        self.arrivals: list[float] = []

    def answer_next(self, *statuses: int) -> None:
        """Answer the next deliveries with these statuses, in order."""
        with self.lock:
            self.statuses.extend(statuses)

    @property
    def deliveries(self) -> list[RecordedRequest]:
        """Every POST received, oldest first."""
        return self.find("POST")

    def events(self) -> list[dict[str, Any]]:
        """The JSON body of every POST received, oldest first."""
        return [json.loads(request.body) for request in self.deliveries]

    def handle(self, request: RecordedRequest) -> Response:
        with self.lock:
            self.arrivals.append(time.monotonic())
            status = self.statuses.popleft() if self.statuses else self.default_status
        return Response(status, b"")
