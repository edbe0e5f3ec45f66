"""Shared code of the skill-email Cloud Functions: config, database, tokens, Gmail, HTTP mapping."""

from shared import lazy_imports

# First, before any module of ours imports a dependency that would load them eagerly.
lazy_imports.defer_all()
