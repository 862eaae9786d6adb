"""Errors a user can act on: each names the file or value at fault and what to do."""


class CxrlabError(Exception):
    """Base class: the CLI prints these as a one-line message, without a traceback."""


class DataError(CxrlabError):
    """The data on disk cannot be used as given (missing columns, empty class, leakage...)."""


class ImageReadError(DataError):
    """One image cannot be decoded. Carries the path so callers can skip or report it."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(
            f"{self.path}: {reason}. Fix or remove the file, or pass --on-bad-image skip "
            "to leave it out (skipped files are listed in the summary)."
        )


class ConfigError(CxrlabError):
    """A configuration value is invalid."""
