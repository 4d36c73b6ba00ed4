"""Progress bars, log lines and result tables for long host-side work (rich), or silence.

The Python API takes a `Console`; the CLI passes a live one, library callers get a quiet
one unless they ask, and under torchrun only rank 0 speaks. On a terminal long steps show
a bar; in a log (stderr not a terminal) they print a line every ~10 s and at each quarter.
Libraries that flood stderr (TensorFlow, absl, XNNPACK, torch deprecations) are silenced
around conversions and interpreter creation unless the console is verbose.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

# Native libraries read these when they load: set them before anything imports TensorFlow-based
# code, never over a value the user set. A verbose console takes back the ones set here.
NATIVE_QUIET = {"TF_CPP_MIN_LOG_LEVEL": "2", "GLOG_minloglevel": "2", "GRPC_VERBOSITY": "ERROR"}
_SET_HERE = [k for k in NATIVE_QUIET if k not in os.environ]
for _key in _SET_HERE:
    os.environ[_key] = NATIVE_QUIET[_key]

LOG_EVERY_S = 10.0  # off a terminal: a progress line at least this often
SHOW_AFTER_S = 2.0  # steps shorter than this print no progress at all

_verbose = False  # a verbose console lets library output through (see `silenced`)
_through: list = []  # while silenced: where edgetl's own stderr output goes (innermost last)


def percent(value: float | None, digits: int = 2) -> str:
    """A top-1 (or any percentage already in 0-100) as the CLI prints it: "56.67%"; "-" when absent."""
    return "-" if value is None else f"{float(value):.{digits}f}%"


class _Stderr(io.TextIOBase):
    """stderr for edgetl's own lines: the process's stderr, or inside `silenced()` the one it hid."""

    def _target(self):
        return _through[-1] if _through else sys.stderr

    def write(self, text: str) -> int:
        return self._target().write(text)

    def flush(self) -> None:
        self._target().flush()

    def isatty(self) -> bool:
        return bool(getattr(self._target(), "isatty", lambda: False)())

    def fileno(self) -> int:
        return self._target().fileno()


class Console:
    def __init__(self, quiet: bool = False, verbose: bool = False):
        """`verbose`: library warnings and native logs are not silenced (set for the whole process)."""
        global _verbose
        self.quiet = quiet
        self.verbose = verbose
        if verbose:
            _verbose = True
            for key in _SET_HERE:
                if os.environ.get(key) == NATIVE_QUIET[key]:
                    del os.environ[key]
        self._rich = None
        if not quiet:
            from rich.console import Console as RichConsole

            self._rich = RichConsole(file=_Stderr(), highlight=False)

    def log(self, message: str) -> None:
        if self._rich is not None:
            self._rich.print(message, soft_wrap=True)

    @contextmanager
    def task(self, description: str, total: int, unit: str = "") -> Iterator[Callable[[int], None]]:
        """Progress over `total` steps (`unit`: what a step is, e.g. "images"); yields `advance(n)`.

        A bar on a terminal; off one (logs, pipes, CI), a line such as "embedding 320/1200 images
        (12 s)" every ~10 s and at each quarter, once the step has run for 2 s."""
        if self._rich is None:
            yield lambda n=1: None
            return
        if not self._rich.is_terminal:
            with _LogProgress(self, description, total, unit) as progress:
                yield progress.advance
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=self._rich, redirect_stdout=False, redirect_stderr=False, transient=False) as progress:
            tid = progress.add_task(description, total=total)
            yield lambda n=1: progress.advance(tid, n)

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        """Results go to stdout, so they can be piped; progress and logs go to stderr."""
        if self.quiet:
            return
        from rich.console import Console as RichConsole
        from rich.table import Table

        table = Table(title=title)
        for c in columns:
            table.add_column(c)
        for r in rows:
            table.add_row(*[str(v) for v in r])
        out = RichConsole(file=sys.stdout, highlight=False)
        if not out.is_terminal:  # logs and pipes: do not squeeze names into 80 columns
            out = RichConsole(file=sys.stdout, highlight=False, width=160)
        out.print(table)


class _LogProgress:
    """Progress as log lines: at each quarter and every `LOG_EVERY_S` (a heartbeat thread covers
    steps that advance rarely), after the first `SHOW_AFTER_S`; a last line when it took that long."""

    def __init__(self, console: Console, description: str, total: int, unit: str):
        self.console, self.description, self.total = console, description, max(int(total), 0)
        self.unit = f" {unit}" if unit else ""
        self.done, self.quarter = 0, 0
        self.started = self.last = time.monotonic()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._heartbeat, daemon=True, name="edgetl-progress")

    def __enter__(self) -> _LogProgress:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        if exc[0] is None and time.monotonic() - self.started >= SHOW_AFTER_S:
            self._line(final=True)

    def _line(self, final: bool = False) -> None:
        with self.lock:
            now = time.monotonic()
            self.last = now
            done = self.total if final else self.done
            self.console.log(f"{self.description} {done}/{self.total}{self.unit} ({now - self.started:.0f} s)"
                             + (" done" if final else ""))

    def advance(self, n: int = 1) -> None:
        self.done += n
        quarter = 4 * self.done // self.total if self.total else 0
        if quarter > self.quarter:
            self.quarter = quarter
            if self.done < self.total and time.monotonic() - self.started >= SHOW_AFTER_S:
                self._line()

    def _heartbeat(self) -> None:
        while not self.stop.wait(1.0):
            now = time.monotonic()
            if now - self.started >= SHOW_AFTER_S and now - self.last >= LOG_EVERY_S:
                self._line()


QUIET = Console(quiet=True)


@contextmanager
def silenced():
    """Silence libraries that print to stdout/stderr, also from C/C++ (litert-torch, MLIR, TFLite's
    XNNPACK delegate, ORT's calibrators), and the Python warnings they raise (torch.export,
    litert-torch, onnx deprecations). edgetl's own progress and log lines still get through.
    A no-op when a verbose console was made (`--verbose`)."""
    if _verbose:
        yield
        return
    logging.getLogger("absl").setLevel(logging.ERROR)
    for name in ("torch._dynamo", "torch.export", "torch.utils._pytree", "torch.fx", "onnxscript", "litert_torch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    sys.stdout.flush()
    sys.stderr.flush()
    visible = _through[-1] if _through else sys.stderr
    saved = os.dup(1), os.dup(2)
    own = None
    try:
        if not _through and visible.fileno() == 2:  # the process's stderr: keep a handle on it before it is hidden
            own = visible = io.TextIOWrapper(io.FileIO(saved[1], "w", closefd=False), line_buffering=True,
                                             encoding=getattr(sys.stderr, "encoding", None) or "utf-8")
    except (AttributeError, OSError, ValueError):  # a Python-level stream (pytest's capture): write there
        pass
    _through.append(visible)
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        os.dup2(null.fileno(), 1)
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            _through.pop()
            if own is not None:
                own.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
