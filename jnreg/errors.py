"""The exceptions jnreg raises; the CLI turns each into a one-line message."""

from __future__ import annotations


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


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message, for a one-line report; its type's name when the message is empty."""
    lines = str(exc).strip().splitlines()
    return lines[0].strip() if lines else type(exc).__name__
