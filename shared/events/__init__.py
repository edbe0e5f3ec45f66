"""New mail for robeings: Gmail watches, history sync, the events outbox and signed webhook delivery.

Owns the tables ``gmail_mailbox_watch`` (one row per watched mailbox: how far its history is processed),
``gmail_watchers`` (which robeing watches which user's mailbox), ``gmail_events`` (the outbox, one row per
robeing and message) and ``gmail_webhooks`` (a robeing's URL and signing secret).

Modules, one job each:

- ``gmail_access``: a Gmail client for a user's token (the token store, refreshed as any call is).
- ``watch``: ``watch_mailbox`` start/stop, and renewing watches before Gmail lets them lapse.
- ``sync``: one notification: the mailbox's history since the last processed id, under the mailbox's row
  lock, queueing the new messages' events in the same transaction that advances the history id.
- ``outbox``: the events table: queueing (one per robeing and message), ``list_events``, retention.
- ``webhooks``: a robeing's webhook URL and secret (``python -m shared.cli webhooks``).
- ``delivery``: POSTing events signed per Standard Webhooks, and retrying failed ones with backoff.
- ``push``: the ``gmail_push`` CloudEvent: parse, sync, deliver; what is acknowledged and what is retried.
- ``scheduled``: the scheduled run's share: renew watches, re-drive deliveries, purge old events.

May import: ``shared.{clock, config, db, errors, gmail, logs, params, request_types, web}``,
``shared.mime.decode`` (MESSAGE), ``shared.mailbox.session`` (a Gmail client for a token) and
``shared.tokens`` (the token provider, and the keyring cipher for webhook secrets). Nothing else in
``shared`` imports this package (the entry points, the CLI and the scheduled run's one hook do).
"""
