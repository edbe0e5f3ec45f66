"""Operator commands about who may reach the functions and where events go: ``callers`` (the allow-list
of CALLER_POLICY=enforce) and ``webhooks`` (a robeing's URL and signing secret). Registered by
``shared.cli``; run as ``python -m shared.cli callers ...`` and ``python -m shared.cli webhooks ...``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from shared import callers, db
from shared.tokens.cipher import token_cipher


def cmd_callers_add(args: argparse.Namespace) -> int:
    try:
        email = callers.normalize_email(args.email)
        with db.connection() as conn:
            outcome = callers.add_caller(conn, email, args.role, args.robeing_id or [])
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{email}: {outcome}")
    return 0


def cmd_callers_remove(args: argparse.Namespace) -> int:
    try:
        email = callers.normalize_email(args.email)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with db.connection() as conn:
        removed = callers.remove_caller(conn, email)
    if not removed:
        print(f"{email} is not on the list", file=sys.stderr)
        return 1
    print(f"{email}: removed")
    return 0


def cmd_callers_list(args: argparse.Namespace) -> int:
    with db.connection() as conn:
        for caller in callers.list_callers(conn):
            print(" ".join([caller.email, caller.role, *sorted(caller.robeing_ids)]))
    return 0


def _add_callers(commands: Any) -> None:
    group = commands.add_parser(
        "callers", help="the callers allow-list (CALLER_POLICY=enforce): add, remove, list"
    )
    actions = group.add_subparsers(dest="callers_command", required=True)
    add = actions.add_parser("add", help="add a caller email with its role, or change it")
    add.add_argument("email", help="the caller's Google account or service account email")
    add.add_argument("--role", required=True, choices=callers.ROLES)
    add.add_argument(
        "--robeing-id",
        action="append",
        help="with --role robeing: a robeing id it may act for; repeat it for several",
    )
    add.set_defaults(run=cmd_callers_add)
    remove = actions.add_parser("remove", help="remove a caller")
    remove.add_argument("email")
    remove.set_defaults(run=cmd_callers_remove)
    actions.add_parser("list", help="one line per caller: EMAIL ROLE [ROBEING_ID...]").set_defaults(
        run=cmd_callers_list
    )


def cmd_webhooks(args: argparse.Namespace) -> int:
    from shared.events import webhooks  # only this command needs it

    with db.connection() as conn:
        if args.action == "remove":
            removed = webhooks.remove_webhook(conn, args.robeing_id)
            print(f"{args.robeing_id}: {'webhook removed' if removed else 'had no webhook'}")
            return 0
        if not args.url:
            print("webhooks set needs --url URL", file=sys.stderr)
            return 2
        secret = webhooks.set_webhook(conn, args.robeing_id, args.url, token_cipher())
    print(f"{args.robeing_id}: webhook set; its signing secret, shown only now:")
    print(secret)
    return 0


def add_commands(commands: Any) -> None:
    """Registers ``callers`` and ``webhooks`` on the CLI's subcommands."""
    hooks = commands.add_parser(
        "webhooks", help="set or remove a robeing's webhook for new-mail events (set prints a new secret)"
    )
    hooks.add_argument("action", choices=("set", "remove"))
    hooks.add_argument("robeing_id")
    hooks.add_argument("--url", help="with set: the https:// (or, locally, http://) URL to POST events to")
    hooks.set_defaults(run=cmd_webhooks)

    _add_callers(commands)
