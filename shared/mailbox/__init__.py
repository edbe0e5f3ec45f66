"""Mailbox operations: one module per operation a target performs on a person's Gmail mailbox.

``session`` is the per-call glue every operation shares (the user's token into a Gmail client, audit
rows); ``send`` is ``send_email``, ``listing`` is ``list_emails``, ``reading`` is ``get_email``,
``get_thread`` and ``get_attachment``; ``drafts`` is ``create_draft`` and ``send_draft`` (built on
``send``'s composition and unknown-outcome search), ``modify`` is ``modify_email``, ``labels`` is
``list_labels`` and the label names ``modify`` resolves.

May import: ``shared.gmail``, ``shared.mime``, ``shared.tokens.provider``, ``shared.audit``,
``shared.idempotency``, ``shared.scopes``, ``shared.clock``, ``shared.config``, ``shared.errors`` and
``shared.web.Call`` (the request context). Entry points in ``functions/`` call these; nothing in
``shared`` imports ``mailbox``.
"""
