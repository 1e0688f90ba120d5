"""Secrets for the event sinks (MQTT password, webhook signing keys), read where settings say.

The configuration never holds a secret, only where to find it: the name of an environment
variable (``*_env``) or a file (``*_file``, e.g. a mounted Kubernetes Secret). The environment is
passed in explicitly by the process edge. Secret values are never logged, and errors name the
variable or the file, never the value.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from rollbackd.errors import PermanentError


class SecretError(PermanentError):
    """A configured secret cannot be read; the message says which and where."""


def read_secret(*, what: str, env: str | None, file: str | None, environ: Mapping[str, str]) -> str | None:
    """The secret ``what`` (for messages) from the environment variable ``env`` or the file
    ``file``; ``None`` when neither is configured. A file's trailing newline is dropped.

    Raises :class:`SecretError` when the variable is unset or empty, or the file unreadable or empty.
    """
    if env:
        value = environ.get(env)
        if not value:
            raise SecretError(f"{what}: environment variable {env} is not set (or empty)")
        return value
    if file:
        try:
            text = Path(file).read_text(encoding="utf-8")
        except OSError as exc:
            raise SecretError(f"{what}: cannot read {file}: {exc.strerror or exc}") from None
        value = text.rstrip("\r\n")
        if not value:
            raise SecretError(f"{what}: {file} is empty")
        return value
    return None
