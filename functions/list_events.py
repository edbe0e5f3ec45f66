"""list_events: the events queued for a robeing, in queued order, after a cursor."""

from typing import Any

from shared import web
from shared.request_types import ListEventsRequest


@web.http_function("list_events")
def list_events(args: ListEventsRequest, call: web.Call) -> Any:
    from shared.events import api

    return api.list_events(args, call)
