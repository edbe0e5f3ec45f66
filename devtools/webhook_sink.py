"""``python -m devtools.webhook_sink``: a local webhook for trying new-mail events by hand.

It answers every POST with 204 and prints the event, one JSON line each; given the secret that
``python -m shared.cli webhooks set`` printed (``--secret`` or ``WEBHOOK_SECRET``), it checks the Standard
Webhooks signature with the ``standardwebhooks`` package and says whether it verified.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.webhook_sink", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--secret", help="the whsec_ secret, to verify signatures (default: $WEBHOOK_SECRET)")
    return parser


def make_handler(secret: str | None) -> type[BaseHTTPRequestHandler]:
    verifier = Webhook(secret) if secret else None

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: each delivery is printed below instead."""

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {name.lower(): value for name, value in self.headers.items()}
            verified: bool | None = None
            if verifier is not None:
                try:
                    verifier.verify(body, headers)
                    verified = True
                except WebhookVerificationError:
                    verified = False
            try:
                event: Any = json.loads(body)
            except ValueError:
                event = body.decode("utf-8", "replace")
            line = {"webhook-id": headers.get("webhook-id"), "verified": verified, "event": event}
            print(json.dumps(line, ensure_ascii=False), flush=True)
            self.send_response(204)
            self.end_headers()

    return Handler


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    secret = args.secret or os.environ.get("WEBHOOK_SECRET") or None
    server = ThreadingHTTPServer((args.host, args.port), make_handler(secret))
    checked = "checked" if secret else "not checked"
    print(f"webhook sink on http://{args.host}:{args.port}/ (signatures {checked})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        return 0
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
