"""Operator commands: ``python -m shared.cli --help`` lists them (migrate, tokens, keys, audit, webhooks)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import unicodedata
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shared import audit, callers, config, db, logs, schema, scopes
from shared.config import ConfigError
from shared.errors import SkillEmailError
from shared.tokens import keyring, maintenance, provider
from shared.tokens.cipher import keyring_text, token_cipher
from shared.tokens.crypto import TokenCipher
from shared.tokens.record import authorized_user_to_row

USER_ID_MAX = 100  # gmail_token.user_id is VARCHAR(100)
ROBEING_ID_MAX = 50  # gmail_token.equipped_to is VARCHAR(50)


class CommandError(Exception):
    """A bad argument or input file: printed as one line, exit status 2."""


def _identifier(what: str, max_length: int) -> Any:
    def check(value: str) -> str:
        if not 1 <= len(value) <= max_length:
            raise argparse.ArgumentTypeError(f"{what} must be 1 to {max_length} characters")
        if any(unicodedata.category(char) in ("Cc", "Cs") for char in value):
            raise argparse.ArgumentTypeError(f"{what} must not contain control characters")
        return value

    return check


user_id_arg = _identifier("a user id", USER_ID_MAX)
robeing_id_arg = _identifier("a robeing id", ROBEING_ID_MAX)


def _read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object from a file; any problem is a one-line CommandError naming the file, never its text."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    except UnicodeDecodeError:
        raise CommandError(f"{path} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        # The decoder's message gives a position only, never the content (which may hold secrets).
        raise CommandError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise CommandError(f"{path} is not a JSON object")
    return data


def _note_previous(user_id: str, robeing_id: str | None, stored: maintenance.StoreOutcome) -> None:
    """Says on stderr which earlier token a store kept, or took over from (see StoreOutcome)."""
    if stored.previous_row_id is None:
        return
    target = f"for robeing {robeing_id!r}" if robeing_id else "for no robeing"
    previous = stored.previous_equipped_to
    where = f"equipped to robeing {previous!r}" if previous else "equipped to no robeing"
    if stored.outcome == "kept" and previous == robeing_id:
        note = f"kept {user_id}: it already has a token {where}; --replace overwrites it"
    elif stored.outcome == "kept":
        note = (
            f"kept {user_id}: it already has a token {where}, which calls without robeing_id use; "
            f"--replace stores this one {target} beside it, and those calls would then use the new one"
        )
    else:
        note = (
            f"{user_id}: calls without robeing_id now use the token just stored {target}, no longer the "
            f"one {where} (calls naming that robeing still do)"
        )
    print(note, file=sys.stderr)


def cmd_migrate(args: argparse.Namespace) -> int:
    with db.connection() as conn:
        applied = schema.migrate(conn)
    print(f"migrations applied: {', '.join(map(str, applied)) if applied else 'none (up to date)'}")
    return 0


def cmd_import_tokens(args: argparse.Namespace) -> int:
    directory = Path(args.directory)
    if not directory.is_dir():
        print(f"not a directory: {directory}", file=sys.stderr)
        return 2
    counts: Counter[str] = Counter()
    cipher = token_cipher()
    with db.connection() as conn:
        for path in sorted(directory.glob("*.json")):
            try:
                user_id_arg(path.stem)
                info = _read_json_object(path)
                if not (info.get("refresh_token") or info.get("token")):
                    raise CommandError("not an authorized-user token file")
            except (argparse.ArgumentTypeError, CommandError) as exc:
                shown = path.name if path.name.isprintable() else ascii(path.name)  # no terminal escapes
                print(f"skipped {shown}: {exc}", file=sys.stderr)
                counts["invalid"] += 1
                continue
            stored = maintenance.store_token(
                conn,
                path.stem,
                authorized_user_to_row(info),
                equipped_to=args.robeing_id,
                cipher=cipher,
                replace=args.replace,
            )
            _note_previous(path.stem, args.robeing_id, stored)
            counts[stored.outcome] += 1
    print(
        " ".join(f"{name}={counts[name]}" for name in ("inserted", "updated", "unchanged", "kept", "invalid"))
    )
    return 1 if counts["invalid"] else 0


def cmd_add_token(args: argparse.Namespace) -> int:
    if args.file:
        info = _read_json_object(Path(args.file))
    else:
        info = {
            "refresh_token": args.refresh_token,
            "client_id": args.client_id,
            "client_secret": args.client_secret,
            "token": args.access_token,
            # What authorize asks for: what the token most likely holds (--scope says otherwise).
            "scopes": args.scope or list(DEFAULT_SCOPES),
        }
    if not info.get("refresh_token"):
        print("a refresh token is required (--file or --refresh-token)", file=sys.stderr)
        return 2
    with db.connection() as conn:
        stored = maintenance.store_token(
            conn,
            args.user_id,
            authorized_user_to_row(info),
            equipped_to=args.robeing_id,
            cipher=token_cipher(),
        )
    print(f"{args.user_id}: {stored.outcome}")
    _note_previous(args.user_id, args.robeing_id, stored)
    return 0


GMAIL_SEND = scopes.SEND
GMAIL_READONLY = scopes.READONLY
# Least privilege: by default the functions send (gmail.send) and list and read (gmail.readonly, which
# search and bodies need). Drafts need gmail.compose and labels or trash gmail.modify; an operator asks
# for them with --scopes when a robeing needs them (README, "Scopes").
DEFAULT_SCOPES = scopes.DEFAULT_AUTHORIZE
# How long the local redirect server waits for the browser before giving up.
DEFAULT_CONSENT_TIMEOUT_S = 600
CONSENT_PROMPT = "Open this URL in a browser signed in as the mailbox's owner:\n{url}\n"


def credentials_to_row(credentials: Any) -> dict[str, Any]:
    """google-auth ``Credentials`` from a consent as ``gmail_token`` column values.

    The scopes stored are those Google granted (the consent screen lets a person untick some), else
    those asked for.
    """
    granted = credentials.granted_scopes or credentials.scopes or []
    if isinstance(granted, str):
        granted = granted.split()
    return authorized_user_to_row(
        {
            "token": credentials.token,
            "refresh_token": credentials.refresh_token,
            "client_id": credentials.client_id,
            "client_secret": credentials.client_secret,
            "token_uri": credentials.token_uri,
            "scopes": list(granted),
            "expiry": credentials.expiry.isoformat() if credentials.expiry else None,
        }
    )


def store_credentials(
    user_id: str, credentials: Any, robeing_id: str | None = None
) -> maintenance.StoreOutcome:
    """Stores a freshly consented token as the user's equipped row; returns ``store_token``'s outcome."""
    with db.connection() as conn:
        return maintenance.store_token(
            conn,
            user_id,
            credentials_to_row(credentials),
            equipped_to=robeing_id,
            cipher=token_cipher(),
        )


def cmd_authorize(args: argparse.Namespace) -> int:
    try:
        from google_auth_oauthlib.flow import InstalledAppFlow, WSGITimeoutError
        from oauthlib.oauth2.rfc6749.errors import OAuth2Error
    except ImportError:
        print(
            "authorize needs google-auth-oauthlib, a development dependency: "
            "pip install -r requirements-dev.txt",
            file=sys.stderr,
        )
        return 2
    secrets_path = Path(args.client_secrets)
    if not secrets_path.is_file():
        print(
            f"no client secrets file at {secrets_path} (download it from the OAuth client's page)",
            file=sys.stderr,
        )
        return 2
    # Fail before the person consents, not after: the database and the keyring must be usable.
    token_cipher()
    with db.connection():
        pass
    wanted = list(dict.fromkeys(scopes.expand(name) for name in args.scopes)) if args.scopes else None
    asked = wanted or list(DEFAULT_SCOPES)
    # oauthlib raises when Google grants fewer scopes than asked; we store what was granted and say so.
    os.environ.setdefault("OAUTHLIB_RELAX_TOKEN_SCOPE", "1")
    try:
        flow = InstalledAppFlow.from_client_secrets_file(str(secrets_path), scopes=asked)
        credentials = flow.run_local_server(
            port=args.port,
            open_browser=not args.no_browser,
            authorization_prompt_message=CONSENT_PROMPT,
            success_message="skill-email: Gmail access granted. You may close this window.",
            timeout_seconds=args.timeout,
            # offline: a refresh token; consent: Google sends one even if this client was approved before.
            access_type="offline",
            prompt="consent",
        )
    except (OAuth2Error, WSGITimeoutError, ValueError) as exc:
        print(f"authorization failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if not credentials.refresh_token:
        print("Google returned no refresh token; nothing was stored", file=sys.stderr)
        return 1
    stored = store_credentials(args.user_id, credentials, args.robeing_id)
    row = credentials_to_row(credentials)
    missing = [scope for scope in asked if scope not in row["scopes"]]
    print(f"{args.user_id}: {stored.outcome}; scopes: {' '.join(row['scopes'])}")
    _note_previous(args.user_id, args.robeing_id, stored)
    if missing:
        print(f"warning: Google did not grant {' '.join(missing)}", file=sys.stderr)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    print(json.dumps(provider.token_status(args.user_id, args.robeing_id), indent=2, ensure_ascii=False))
    return 0


def cmd_generate_key(args: argparse.Namespace) -> int:
    key_id = args.key_id
    print(json.dumps({"primary": key_id, "keys": {key_id: keyring.generate_key()}}))
    return 0


def _keyring_cipher() -> TokenCipher:
    cipher = token_cipher()
    if cipher is None:
        raise ConfigError("set TOKEN_KEYS (local) or TOKEN_KEY_SECRET to the keyring first")
    return cipher


def _reseal(decrypt: bool, batch_size: int) -> maintenance.ResealCounts:
    cipher = _keyring_cipher()
    with db.connection() as conn:
        counts = maintenance.reseal_rows(conn, cipher, decrypt=decrypt, batch_size=batch_size)
    print(f"rewritten={counts.rewritten} unchanged={counts.unchanged} busy={counts.busy}")
    if counts.busy:
        print("some rows were being refreshed and were skipped: run the command again", file=sys.stderr)
    return counts


def cmd_encrypt_tokens(args: argparse.Namespace) -> int:
    counts = _reseal(False, args.batch_size)
    return 3 if counts.busy else 0


def cmd_rotate_key(args: argparse.Namespace) -> int:
    cipher = _keyring_cipher()
    counts = _reseal(False, args.batch_size)
    if not counts.busy:
        others = [key for key in cipher.key_ids if key != cipher.primary_key_id]
        if others:
            print(
                f"every row is under {cipher.primary_key_id}; {', '.join(others)} may now leave the keyring"
            )
    return 3 if counts.busy else 0


def cmd_decrypt_tokens(args: argparse.Namespace) -> int:
    if config.load_settings().require_encrypted_tokens:
        # Every row written back in plain text would be refused at once by the functions.
        raise ConfigError(f"turn {config.REQUIRE_ENCRYPTED_TOKENS} off (and redeploy) before decrypt-tokens")
    counts = _reseal(True, args.batch_size)
    return 3 if counts.busy else 0


def cmd_add_key(args: argparse.Namespace) -> int:
    text = keyring_text(config.load_settings())
    if not text:
        raise ConfigError("set TOKEN_KEYS or TOKEN_KEY_SECRET to the current keyring first")
    try:
        print(keyring.with_new_primary(text, args.key_id))
    except keyring.KeyringError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    with db.connection() as conn:
        for entry in audit.recent(conn, args.user_id, args.limit):
            print(json.dumps(entry, default=str, ensure_ascii=False))
    return 0


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


def _add_callers_commands(commands: Any) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    # --help is read in a terminal: the docstring's reST literals (double backticks) would show as typed.
    parser = argparse.ArgumentParser(prog="python -m shared.cli", description=__doc__.replace("``", ""))
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("migrate", help="create or update the tables (safe to run again)").set_defaults(
        run=cmd_migrate
    )

    importer = commands.add_parser("import-tokens", help="import authorized-user JSON files (<user_id>.json)")
    importer.add_argument("directory")
    importer.add_argument(
        "--robeing-id", type=robeing_id_arg, help="equip the imported tokens to this robeing"
    )
    importer.add_argument(
        "--replace",
        action="store_true",
        help="store even for a user who already has an equipped token (default: keep that one)",
    )
    importer.set_defaults(run=cmd_import_tokens)

    adder = commands.add_parser("add-token", help="store one user's token from a file or from flags")
    adder.add_argument("user_id", type=user_id_arg)
    adder.add_argument("--file", help="a Google authorized-user JSON file")
    adder.add_argument("--refresh-token")
    adder.add_argument("--access-token")
    adder.add_argument("--client-id")
    adder.add_argument("--client-secret")
    adder.add_argument("--scope", action="append", help=f"repeatable; default {' '.join(DEFAULT_SCOPES)}")
    adder.add_argument("--robeing-id", type=robeing_id_arg)
    adder.set_defaults(run=cmd_add_token)

    authorize = commands.add_parser(
        "authorize", help="run Google's consent flow in a browser and store the user's token"
    )
    authorize.add_argument("user_id", type=user_id_arg)
    authorize.add_argument(
        "--client-secrets", required=True, help="the OAuth client's JSON (type: Desktop app)"
    )
    authorize.add_argument("--robeing-id", type=robeing_id_arg, help="equip the token to this robeing")
    authorize.add_argument(
        "--scopes",
        "--scope",
        dest="scopes",
        nargs="+",
        action="extend",
        metavar="SCOPE",
        help="what to ask Google for: full URLs or short names (gmail.compose, gmail.modify, "
        f"mail.google.com); default {' '.join(DEFAULT_SCOPES)}",
    )
    authorize.add_argument(
        "--port", type=int, default=0, help="the local redirect port (default 0: any free port)"
    )
    authorize.add_argument(
        "--no-browser",
        action="store_true",
        help="print the URL only (open it in any browser on this machine)",
    )
    authorize.add_argument("--timeout", type=float, default=DEFAULT_CONSENT_TIMEOUT_S, help="seconds to wait")
    authorize.set_defaults(run=cmd_authorize)

    status = commands.add_parser("status", help="print token_status for a user")
    status.add_argument("user_id", type=user_id_arg)
    status.add_argument("--robeing-id", type=robeing_id_arg)
    status.set_defaults(run=cmd_status)

    keygen = commands.add_parser(
        "generate-key", help="print a new token keyring (TOKEN_KEYS / TOKEN_KEY_SECRET)"
    )
    keygen.add_argument("--key-id", default="k1")
    keygen.set_defaults(run=cmd_generate_key)

    add_key = commands.add_parser(
        "add-key",
        help="print the current keyring with a new primary key (store it as the new secret version)",
    )
    add_key.add_argument("--key-id", required=True)
    add_key.set_defaults(run=cmd_add_key)

    for name, run, text in (
        ("encrypt-tokens", cmd_encrypt_tokens, "encrypt every plaintext secret under the primary key"),
        ("rotate-key", cmd_rotate_key, "re-encrypt values under older keys with the primary key"),
        (
            "decrypt-tokens",
            cmd_decrypt_tokens,
            "write every secret back in plaintext (turning encryption off)",
        ),
    ):
        command = commands.add_parser(name, help=f"{text}; row by row, safe to run again")
        command.add_argument("--batch-size", type=int, default=100)
        command.set_defaults(run=run)

    hooks = commands.add_parser(
        "webhooks", help="set or remove a robeing's webhook for new-mail events (set prints a new secret)"
    )
    hooks.add_argument("action", choices=("set", "remove"))
    hooks.add_argument("robeing_id")
    hooks.add_argument("--url", help="with set: the https:// (or, locally, http://) URL to POST events to")
    hooks.set_defaults(run=cmd_webhooks)

    audit_log = commands.add_parser("audit", help="print a user's latest audit rows, newest first")
    audit_log.add_argument("user_id", type=user_id_arg)
    audit_log.add_argument("--limit", type=int, default=50)
    audit_log.set_defaults(run=cmd_audit)
    _add_callers_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Quiet by default: a command's output is what it prints (results on stdout, errors as one line on
    # stderr); LOG_LEVEL turns the JSON logs on, on stderr too, so stdout stays the result alone.
    level = os.environ.get("LOG_LEVEL", "").strip()
    logs.configure(level.upper() if level else "CRITICAL", stream=sys.stderr)
    try:
        return int(args.run(args))
    except SkillEmailError as exc:
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
