"""Progress bars, log lines and result tables for long host-side work (rich), or silence.

The Python API takes a `Console`; the CLI passes a live one, library callers get a quiet
one unless they ask, and under torchrun only rank 0 speaks.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager


class Console:
    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self._rich = None
        if not quiet:
            from rich.console import Console as RichConsole

            self._rich = RichConsole(stderr=True, highlight=False)

    def log(self, message: str) -> None:
        if self._rich is not None:
            self._rich.print(message, soft_wrap=True)

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        """A progress bar for `total` steps; yields `advance(n)`."""
        if self._rich is None or not self._rich.is_terminal:  # no bars in logs and pipes
            yield lambda n=1: None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=self._rich) as progress:
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


QUIET = Console(quiet=True)


@contextmanager
def silenced():
    """Silence libraries that print progress to stdout/stderr, also from C/C++ (litert-torch, MLIR, ORT's
    calibrators). Our own output goes through Console after the block."""
    logging.getLogger("absl").setLevel(logging.ERROR)
    saved = os.dup(1), os.dup(2)
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        os.dup2(null.fileno(), 1)
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
