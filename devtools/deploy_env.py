"""env.yaml for deploy.sh: read with a real YAML parser, so that no secret gets through in any spelling.

Invariant: what :func:`read_env` returns is what gcloud will deploy (it parses the file with YAML too), and
none of it is a secret value: a ``DATABASE_URL`` (any letter case), a URL with a password under any key,
or a key given twice is refused, as are the settings deploy.sh writes itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# Settings deploy.sh writes into each generated env file itself; env.yaml must leave them out.
MANAGED_SETTINGS = (
    "THREADS",
    "REFRESH_CONCURRENCY",
    "CALLER_POLICY",
    "CALLER_AUDIENCES",
    "PUBSUB_TOPIC",
    "REFRESH_TASKS_QUEUE",
    "REFRESH_TASKS_URL",
    "REFRESH_TASKS_SERVICE_ACCOUNT",
)


class EnvFileError(Exception):
    """The env file cannot be deployed; the message says why and never holds a value from it."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice: the first value would otherwise vanish unchecked."""


def _mapping_without_duplicates(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise EnvFileError(f"the key {key!r} is given twice (line {key_node.start_mark.line + 1})")
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)

# scheme://user:password@host: a URL holding credentials, whatever setting it hides under.
_URL_WITH_CREDENTIALS = re.compile(r"[a-z][a-z0-9+.-]*://[^/@\s]*:[^/@\s]*@", re.IGNORECASE)


def read_env(path: Path) -> dict[str, str]:
    """The settings of an ``--env-vars-file``, checked so that no secret or managed setting gets through.

    The file is parsed with PyYAML, as gcloud parses it, so a quoted key (``"DATABASE_URL": ...``), a space
    before the colon, a flow mapping or a merge key all reach the checks under the name gcloud would use.

    Raises:
        EnvFileError: unreadable or not a flat mapping of names to strings; a key given twice; a
            ``DATABASE_URL`` (under any letter case) or a URL with credentials under any key; a
            ``DB_URL_SECRET`` that is a URL; a setting deploy.sh writes itself.
    """
    name = path.name
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader)  # noqa: S506 - a SafeLoader
    except OSError as exc:
        raise EnvFileError(f"no env file '{path}' (see env.yaml)") from exc
    except EnvFileError as exc:
        raise EnvFileError(f"{name}: {exc}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise EnvFileError(f"{name} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise EnvFileError(f'{name} must be a mapping of KEY: "value" lines')
    settings: dict[str, str] = {}
    for key, value in data.items():
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise EnvFileError(f"{name}: {key!r} is not an environment variable name")
        if not isinstance(value, str):
            raise EnvFileError(
                f'{name}: {key} must be a quoted string (KEY: "value"), not {type(value).__name__}'
            )
        settings[key] = value
    for key, value in settings.items():
        # The URL holds the database password: it belongs in Secret Manager, never in an env file.
        if key.upper() == "DATABASE_URL" or _URL_WITH_CREDENTIALS.search(value):
            raise EnvFileError(
                f"{name} must name the secret (DB_URL_SECRET: skill-email-db-url), not hold a database URL"
                f" or any URL with a password (found under {key})"
            )
        if key.upper() in MANAGED_SETTINGS:
            raise EnvFileError(
                f"{name} sets {key}: leave it out, deploy.sh sets it to each function's concurrency"
            )
    db_secret = settings.get("DB_URL_SECRET", "")
    if "://" in db_secret:
        raise EnvFileError(
            f"{name} must name the secret (DB_URL_SECRET: skill-email-db-url), not hold a database URL"
        )
    if not db_secret:
        raise EnvFileError(f"{name} sets no DB_URL_SECRET")
    return settings


@dataclass(frozen=True)
class SecretRef:
    """A Secret Manager secret named in env.yaml: ``S``, ``projects/P/secrets/S`` or ``.../versions/V``."""

    name: str
    project: str
    version: str


def split_secret(ref: str, project: str) -> SecretRef:
    """Parse a secret reference, the project defaulting to the deploy project and the version to latest.

    Raises:
        EnvFileError: any other shape.
    """
    match = re.fullmatch(r"projects/([^/]+)/secrets/([^/]+)(?:/versions/([^/]+))?", ref)
    if match:
        return SecretRef(match[2], match[1], match[3] or "latest")
    if "/" in ref:
        raise EnvFileError(
            f"secret '{ref}' must be S, projects/P/secrets/S or projects/P/secrets/S/versions/V"
        )
    return SecretRef(ref, project, "latest")
