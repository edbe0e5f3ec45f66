"""A fake of the Cloud Tasks v2 REST API, enough for ``projects.locations.queues.tasks.create``.

``POST /v2/projects/{p}/locations/{l}/queues/{q}/tasks`` with ``{"task": {...}}`` answers the created task
(with a generated ``name``) and keeps it in ``tasks``, so a test can deliver each one as Cloud Tasks
would (``httpRequest.url``, ``httpRequest.body`` base64). The real client (google-cloud-tasks, REST
transport) is pointed at it in tests/test_fakes.py. ``fail_next(status)`` injects a Google error.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from devtools.fakes._server import FakeServer, RecordedRequest, Response

_CREATE = re.compile(r"^/v2/(?P<queue>projects/[^/]+/locations/[^/]+/queues/[^/]+)/tasks$")


class FakeCloudTasks(FakeServer):
    """Records created tasks per queue; ``tasks`` lists ``(queue, task)`` in creation order."""

    name = "fake-cloud-tasks"

    def __init__(self, *, latency: float = 0.0) -> None:
        super().__init__(latency=latency)
        self.tasks: list[tuple[str, dict[str, Any]]] = []
        self._failures: list[int] = []

    def fail_next(self, status: int = 503, count: int = 1) -> None:
        """Answer the next ``count`` create requests with ``status``."""
        with self.lock:
            self._failures.extend([status] * count)

    def bodies(self) -> list[dict[str, Any]]:
        """Each task's HTTP body, decoded from base64 JSON."""
        with self.lock:
            return [json.loads(base64.b64decode(task["httpRequest"]["body"])) for _, task in self.tasks]

    def handle(self, request: RecordedRequest) -> Response:
        match = _CREATE.match(request.path)
        if request.method != "POST" or match is None:
            return _error(404, f"Method not found: {request.method} {request.path}")
        with self.lock:
            if self._failures:
                return _error(self._failures.pop(0), "Injected failure.")
            body = request.json()
            task = dict(body.get("task") or {}) if isinstance(body, dict) else {}
            http_request = task.get("httpRequest")
            if not isinstance(http_request, dict) or not http_request.get("url"):
                return _error(400, "Task.httpRequest.url is required.")
            task["name"] = f"{match['queue']}/tasks/{len(self.tasks) + 1}"
            self.tasks.append((match["queue"], task))
        return Response.json(200, task)


def _error(status: int, message: str) -> Response:
    names = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE"}
    return Response.json(
        status, {"error": {"code": status, "message": message, "status": names.get(status, "UNKNOWN")}}
    )
