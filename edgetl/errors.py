"""User-facing errors: one-line cause plus a hint. Anything else that escapes is a bug."""

from __future__ import annotations


class EdgetlError(Exception):
    """Something the user can fix. The CLI prints `error: CAUSE (hint: HINT)` and exits 2."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message


class DataError(EdgetlError):
    """A data directory or image the user gave cannot be used as given."""


class ConfigError(EdgetlError):
    """A flag, name or config value is unknown or does not fit with the others."""


class WeightsError(EdgetlError):
    """Pretrained weights are missing, unreadable or do not fit the backbone."""


class DeviceError(EdgetlError):
    """A device could not be reached, or a command broke on it: infrastructure, not a verdict (exit 3)."""


class RunError(EdgetlError):
    """A run directory is missing, incomplete or would be overwritten."""


class OutputError(EdgetlError):
    """An output path edgetl may not write to (it holds something else), or could not write (disk full)."""
