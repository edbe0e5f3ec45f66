"""FakeCloudTasks answers as Cloud Tasks does: proven with the real client library (REST transport)."""

from __future__ import annotations

import base64
import json

import pytest
from google.api_core import exceptions as core_exceptions
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import tasks_v2

from devtools.fakes.cloud_tasks import FakeCloudTasks
from shared.tokens import tasks

QUEUE = "projects/p/locations/europe-west1/queues/refresh"


@pytest.fixture
def fake() -> FakeCloudTasks:
    with FakeCloudTasks() as server:
        yield server


def _client(fake: FakeCloudTasks) -> tasks_v2.CloudTasksClient:
    return tasks_v2.CloudTasksClient(
        credentials=AnonymousCredentials(),
        transport="rest",
        client_options=ClientOptions(api_endpoint=fake.url),
    )


def test_the_real_client_creates_the_task_our_run_sends(fake: FakeCloudTasks) -> None:
    ours = tasks.task_body("https://rt.example.run.app", "sched@p.iam.gserviceaccount.com", [4, 5], 900)[
        "task"
    ]
    task = tasks_v2.Task(
        http_request=tasks_v2.HttpRequest(
            http_method=tasks_v2.HttpMethod.POST,
            url=ours["httpRequest"]["url"],
            headers=ours["httpRequest"]["headers"],
            body=base64.b64decode(ours["httpRequest"]["body"]),
            oidc_token=tasks_v2.OidcToken(
                service_account_email=ours["httpRequest"]["oidcToken"]["serviceAccountEmail"],
                audience=ours["httpRequest"]["oidcToken"]["audience"],
            ),
        )
    )
    created = _client(fake).create_task(parent=QUEUE, task=task)

    assert created.name == f"{QUEUE}/tasks/1"
    assert fake.requests[0].path == f"/v2/{QUEUE}/tasks"
    # What the library put on the wire is what our one REST call sends.
    assert fake.requests[0].json()["task"]["httpRequest"]["oidcToken"] == ours["httpRequest"]["oidcToken"]
    # The library sends enums as numbers; proto3 JSON also takes the name, which is what we send.
    sent_method = fake.requests[0].json()["task"]["httpRequest"]["httpMethod"]
    assert tasks_v2.HttpMethod(sent_method).name == ours["httpRequest"]["httpMethod"] == "POST"
    assert fake.bodies() == [{"row_ids": [4, 5], "window_seconds": 900}]
    assert json.loads(base64.b64decode(fake.requests[0].json()["task"]["httpRequest"]["body"])) == {
        "row_ids": [4, 5],
        "window_seconds": 900,
    }


def test_an_injected_failure_reaches_the_real_client_as_googles_error(fake: FakeCloudTasks) -> None:
    fake.fail_next(429)
    task = tasks_v2.Task(http_request=tasks_v2.HttpRequest(url="https://rt.example.run.app"))
    with pytest.raises(core_exceptions.TooManyRequests):
        _client(fake).create_task(parent=QUEUE, task=task, retry=None)
