"""One exception type for every user-facing problem.

A :class:`UPSError` carries a one-line message that names the problem and what to do about it.
The CLI prints it as ``error: <message>`` and exits with status 2; library callers can catch it.
"""


class UPSError(Exception):
    """A problem the user can fix (bad config, bad file, missing checkpoint, too little disk)."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # always one line


class ConfigError(UPSError):
    """An invalid configuration: unknown key, wrong type, inconsistent values."""


class DataError(UPSError):
    """A missing or malformed data file, or non-finite values in it."""


class CheckpointError(UPSError):
    """A missing checkpoint, or one written by another model or config."""
