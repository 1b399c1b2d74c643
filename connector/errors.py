"""The error hierarchy: one root so callers can catch "anything this connector raised".

Errors are typed by what a caller does about them, not by where they happened: a ``ConfigError`` stops
start-up with a message naming the key; a ``DecodeError`` is a poison record (dead letter, never a
crash); an ``InfraError`` is retried with backoff. Third-party errors are translated at the adapter
with ``raise ... from e`` so the original stays in the traceback.
"""

from __future__ import annotations


class ConnectorError(Exception):
    """Root of every error raised on purpose by kingdee-cdc."""


class ConfigError(ConnectorError):
    """Configuration is missing or invalid. The message names the key, the bad value and what is expected."""


class MoneyError(ConnectorError, ValueError):
    """A value cannot be used as money (a float without opt-in, NaN, infinity, text that is not a number)."""


class InfraError(ConnectorError):
    """Kafka, PostgreSQL or Kingdee could not be reached: retriable, pauses the pipeline, never loses data."""


class DevStackError(ConnectorError):
    """The local development stack (Kafka broker, embedded PostgreSQL) could not be started."""
