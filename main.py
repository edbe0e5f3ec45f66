"""Every Cloud Functions target of skill-email, so one source tree deploys as several functions.

Deploy with ``--entry-point NAME``; run locally with
``functions-framework --source main.py --target NAME``.
"""

from functions.list_emails import list_emails
from functions.refresh_tokens import refresh_tokens
from functions.send_email import send_email
from functions.token_status import token_status

__all__ = ["list_emails", "refresh_tokens", "send_email", "token_status"]
