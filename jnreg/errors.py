"""The exceptions jnreg raises, and the one-line messages the CLI shows for them and for any other failure."""

from __future__ import annotations

import os
from pathlib import Path


class JnregError(Exception):
    """Base of every error jnreg raises on purpose."""


class PluginError(JnregError):
    """A plugin is broken: it raised, returned something invalid, or clashes with another."""


class UnknownAgentError(JnregError):
    """No plugin provides the agent that was asked for."""


class ConfigError(JnregError):
    """A setting is invalid, or a config file cannot be read."""


class DataError(JnregError):
    """Training data is missing or malformed."""


class ModelError(JnregError):
    """A base model or tokenizer cannot be found or loaded."""


class EnvironmentCheckError(JnregError):
    """A required package, backend or device is missing."""


class LaunchError(JnregError):
    """One of several training processes failed, or they could not be started."""


class StoreError(JnregError):
    """The model store cannot do what was asked; nothing was changed."""


class StoreNotFound(StoreError):
    """The agent or version is not in the store."""


class StoreConflict(StoreError):
    """The version already exists, or another writer holds the lock too long."""


class IntegrityError(StoreError):
    """Stored files or documents do not match their checksums or schema."""


class GateError(JnregError):
    """A version falls short of the requirements for going into service, or they cannot be checked."""


class SignatureError(IntegrityError):
    """Under a trust policy: a version is unsigned, signed by a key not trusted, or does not match its signature."""


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message, for a one-line report; its type's name when the message is empty."""
    lines = str(exc).strip().splitlines()
    return lines[0].strip() if lines else type(exc).__name__


def crash_log(exc: BaseException) -> Path | None:
    """Write ``exc``'s traceback to a new file in the temporary directory; None if it cannot be written."""
    import tempfile
    import time
    import traceback

    stamp = time.strftime("%Y%m%d-%H%M%S")
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        with tempfile.NamedTemporaryFile(
            "w", prefix=f"jnreg-crash-{stamp}-{os.getpid()}-", suffix=".log", delete=False, encoding="utf-8"
        ) as log:
            log.write(text)
    except OSError:
        return None
    return Path(log.name)


def internal_error(exc: BaseException) -> str:
    """One line for a failure that is not the user's: what was raised, and where its traceback went."""
    what = f"{type(exc).__name__}: {first_line(exc)}" if str(exc).strip() else type(exc).__name__
    log = crash_log(exc)
    where = f"the traceback is in {log}" if log else "its traceback could not be written"
    return f"internal error: {what} ({where}; please report it)"
