"""send_email: send a message from the user's Gmail mailbox."""

from typing import Any

import flask

from shared import web
from shared.errors import SkillEmailError


class NotImplementedYet(SkillEmailError):
    status = 501
    code = "not_implemented"


@web.http_function("send_email", ("POST",))
def send_email(request: flask.Request, log: dict[str, Any]) -> Any:
    raise NotImplementedYet("send_email is not built yet")
