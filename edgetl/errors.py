"""Every error kind edgetl raises, in one place: one-line cause plus a hint. Anything else that
escapes is a bug. Standard library only: the device's runtime raises these too."""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path


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


class InputError(EdgetlError):
    """An image the runtime cannot turn into the model's input."""


class BundleError(EdgetlError):
    """A bundle that must not be run: tampered, incomplete, unknown, or for another machine."""


class DamagedHead(ConfigError):
    """A head file that cannot be read, does not fit together, or holds NaN/inf."""

    def __init__(self, path: Path, why: str):
        super().__init__(f"head file {path} is damaged ({why})",
                         "roll back to the previous head (edgetl adapt BUNDLE --rollback) or reinstall the bundle")
        self.path, self.why = Path(path), why


class HeadStoreBusy(EdgetlError):
    """Another adapt, rollback or deploy holds the head store for longer than this one waits."""


class ParityError(EdgetlError):
    """An exported artifact disagrees with the model it was exported from."""


class QuantizeError(EdgetlError):
    """Quantization could not meet its accuracy budget, or its result is not int8.

    `trials` holds what was tried (each trial's summary, as in quantize.json), so a caller can
    report the best it got even though nothing was written."""

    def __init__(self, message: str, hint: str | None = None, trials: list[dict] | None = None):
        super().__init__(message, hint)
        self.trials = trials or []


class RecordError(ValueError):
    """A record's JSON (a stage record, a manifest, a measurement) does not fit its type; the
    message names the key. Readers turn it into the RunError or BundleError of their file."""


class DeviceRunBroke(Exception):
    """pytest plugin: the device could not be reached during the check, or its run broke
    (infrastructure: the test errors, it does not fail)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the program is so that `finally` and `except BaseException` clean up."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class ConversionError(ConfigError):
    """A converter (torch.export, torch.onnx, litert-torch) could not turn this model into the format."""


@contextlib.contextmanager
def converting(what: str, hint: str):
    """Any failure of the converter inside as one line naming `what` and its first line of cause: a
    backbone that a converter cannot take is the user's to route elsewhere, not a traceback."""
    try:
        yield
    except EdgetlError:
        raise
    except Exception as exc:  # converters raise anything: ValueError, RuntimeError, torch's own errors
        cause = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        cause = cause if len(cause) <= 200 else cause[:200].rsplit(" ", 1)[0] + " ..."
        raise ConversionError(f"{what} failed: {cause}", hint) from None
