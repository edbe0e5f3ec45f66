"""MIME: the mail that goes out and the mail that comes in, as pure code (no network, no database).

Owns three jobs, one module each, plus the text helpers they share:

- ``request``: validating the mail fields of a send request (``request_types.MAIL_FIELDS``) into an
  :class:`~shared.mime.request.OutgoingMail`;
- ``compose``: building the RFC 5322 message Gmail sends (headers folded by hand where the standard
  library folds wrongly);
- ``decode``: turning Gmail message resources (``format=full``/``metadata``/``raw``) into the contract's
  MESSAGE dicts;
- ``text``: charsets, RFC 2047 encoded words, lenient base64 and control characters, shared by the three.

May import: the standard library, ``shared.clock``, ``shared.errors``, ``shared.request_types`` (for the
field list) and, lazily, the HTML-to-text renderer. Never Google, HTTP or database code: ``mailbox`` calls
these, never the other way round.
"""
