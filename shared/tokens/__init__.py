"""The token store: a person's Gmail OAuth token, read per call, kept fresh, and maintained by operators.

Owns the ``gmail_token`` rows (and the file store's ``<user_id>.json`` files), their decoding, encryption
at rest, the refresh against Google's token endpoint, and the scheduled refresh. Modules:

- ``record``: decoding a messy row into one ``TokenRecord``; the one "does this token need a refresh?"
  decision and the one "may this token be used at all?" check.
- ``sql``: the SQL fragments the others share (columns, the "winner" ordering, the token UPDATE, the
  re-authorisation fingerprint).
- ``base``: the store protocol, with ``usable()`` and the user refresh written once for every store.
- ``store``: the database store, one connection per invocation. ``scheduled``: its scheduled refresh.
- ``files``: the file store (``TOKEN_PROVIDER=file``).
- ``maintenance``: operator writes (import, add, re-seal under a new key).
- ``crypto``: encryption at rest of a row's secret values; ``keyring``: the keys' text forms and rotation;
  ``cipher``: the instance's cipher, built once per keyring.
- ``oauth``: the call to Google's token endpoint. ``provider``: which store serves an invocation.

May import: ``shared.clock``, ``shared.config``, ``shared.db``, ``shared.errors``, ``shared.transport``
and each other; nothing else in ``shared`` (nothing imports upward). Import costs stay lazy: google-auth
and requests load on the first refresh (``oauth``), cryptography only when a keyring is configured. This
file imports nothing, so importing one module of the package loads only what that module needs.
"""
