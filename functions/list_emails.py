"""list_emails: list and search the user's messages."""

from typing import Any

import flask

from shared import web
from shared.errors import SkillEmailError


class NotImplementedYet(SkillEmailError):
    status = 501
    code = "not_implemented"


@web.http_function("list_emails", ("GET", "POST"))
def list_emails(request: flask.Request, log: dict[str, Any]) -> Any:
    raise NotImplementedYet("list_emails is not built yet")
