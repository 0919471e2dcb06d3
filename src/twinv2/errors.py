"""Typed errors that users can trigger.

Every error a user can cause (bad file, bad config, bad request) is one of these, never an ``assert``.
The CLI turns them into a one-line message with a non-zero exit code; the library lets them propagate.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "CompressionError",
    "ConfigError",
    "DataValidationError",
    "DistributedError",
    "EmbeddingError",
    "RequestError",
    "StoreError",
    "Twinv2Error",
]


class Twinv2Error(Exception):
    """Base class of every error twinv2 raises on purpose."""


class DataValidationError(Twinv2Error, ValueError):
    """A data file does not meet the data contract.

    The message names the file, the column and what was expected, e.g.
    ``events.csv: column 'ts': expected integer seconds, found 'yesterday' (row 17)``.
    """

    def __init__(self, file: str, column: str | None, expected: str, found: str | None = None):
        self.file, self.column, self.expected, self.found = str(file), column, expected, found
        where = f"{self.file}: column '{column}'" if column else self.file
        msg = f"{where}: expected {expected}"
        if found:
            msg += f", found {found}"
        super().__init__(msg)


class ConfigError(Twinv2Error, ValueError):
    """A configuration file or option is invalid (unknown key, wrong type, out-of-range value)."""


class DistributedError(Twinv2Error, RuntimeError):
    """A multi-process run (``torchrun``) cannot go on: another rank died, or a collective waited longer
    than ``train.dist_timeout``. The message names this rank and what it was waiting for."""


class EmbeddingError(Twinv2Error, ValueError):
    """An embedding source is missing items, holds NaN, or has the wrong dimension."""


class CompressionError(Twinv2Error, ValueError):
    """The compression job was given inputs it cannot use."""


class CheckpointError(Twinv2Error, ValueError):
    """A checkpoint is unreadable or does not match the dataset it is used with."""


class RequestError(Twinv2Error, ValueError):
    """A serving request (score, events, admin) is invalid; ``field`` names the request field at fault
    (``candidates[3]``, ``events[0].ts``) and ``status`` is the HTTP status the service answers with."""

    def __init__(self, field: str, message: str, status: int = 422):
        self.field, self.status = field, status
        super().__init__(f"{field}: {message}")


class StoreError(Twinv2Error, RuntimeError):
    """The serving store is unreachable, or holds data this version of twinv2 cannot read."""
