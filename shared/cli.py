"""Operator commands: migrate, import-tokens DIR, add-token, status USER_ID, generate-key."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from shared import config, crypto, db, logs, provider, schema, tokens
from shared.errors import SkillEmailError


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
    cipher = tokens.token_cipher()
    with db.connection() as conn:
        for path in sorted(directory.glob("*.json")):
            try:
                info = json.loads(path.read_text(encoding="utf-8"))
                if not isinstance(info, dict) or not (info.get("refresh_token") or info.get("token")):
                    raise ValueError("not an authorized-user token file")
            except (ValueError, UnicodeDecodeError) as exc:
                print(f"skipped {path.name}: {exc}", file=sys.stderr)
                counts["invalid"] += 1
                continue
            outcome = tokens.store_token(
                conn,
                path.stem,
                tokens.authorized_user_to_row(info),
                equipped_to=args.robeing_id,
                cipher=cipher,
                replace=args.replace,
            )
            counts[outcome] += 1
    print(
        " ".join(f"{name}={counts[name]}" for name in ("inserted", "updated", "unchanged", "kept", "invalid"))
    )
    return 1 if counts["invalid"] else 0


def cmd_add_token(args: argparse.Namespace) -> int:
    if args.file:
        info = json.loads(Path(args.file).read_text(encoding="utf-8"))
    else:
        info = {
            "refresh_token": args.refresh_token,
            "client_id": args.client_id,
            "client_secret": args.client_secret,
            "token": args.access_token,
            "scopes": args.scope or ["https://www.googleapis.com/auth/gmail.modify"],
        }
    if not info.get("refresh_token"):
        print("a refresh token is required (--file or --refresh-token)", file=sys.stderr)
        return 2
    with db.connection() as conn:
        outcome = tokens.store_token(
            conn,
            args.user_id,
            tokens.authorized_user_to_row(info),
            equipped_to=args.robeing_id,
            cipher=tokens.token_cipher(),
        )
    print(f"{args.user_id}: {outcome}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    print(json.dumps(provider.token_status(args.user_id, args.robeing_id), indent=2, ensure_ascii=False))
    return 0


def cmd_generate_key(args: argparse.Namespace) -> int:
    key_id = args.key_id
    print(json.dumps({"primary": key_id, "keys": {key_id: crypto.generate_key()}}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m shared.cli", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("migrate", help="create or update the tables (safe to run again)").set_defaults(
        run=cmd_migrate
    )

    importer = commands.add_parser("import-tokens", help="import authorized-user JSON files (<user_id>.json)")
    importer.add_argument("directory")
    importer.add_argument("--robeing-id", help="equip the imported tokens to this robeing")
    importer.add_argument(
        "--replace", action="store_true", help="overwrite a user's existing equipped token (default: keep it)"
    )
    importer.set_defaults(run=cmd_import_tokens)

    adder = commands.add_parser("add-token", help="store one user's token from a file or from flags")
    adder.add_argument("user_id")
    adder.add_argument("--file", help="a Google authorized-user JSON file")
    adder.add_argument("--refresh-token")
    adder.add_argument("--access-token")
    adder.add_argument("--client-id")
    adder.add_argument("--client-secret")
    adder.add_argument("--scope", action="append")
    adder.add_argument("--robeing-id")
    adder.set_defaults(run=cmd_add_token)

    status = commands.add_parser("status", help="print token_status for a user")
    status.add_argument("user_id")
    status.add_argument("--robeing-id")
    status.set_defaults(run=cmd_status)

    keygen = commands.add_parser(
        "generate-key", help="print a new token keyring (TOKEN_KEYS / TOKEN_KEY_SECRET)"
    )
    keygen.add_argument("--key-id", default="k1")
    keygen.set_defaults(run=cmd_generate_key)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(config.load_settings().log_level if "LOG_LEVEL" in __import__("os").environ else "WARNING")
    try:
        return int(args.run(args))
    except SkillEmailError as exc:
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
