"""Shared code of the skill-email Cloud Functions: config, database, tokens, Gmail, HTTP mapping."""
