"""A command's life as a process: all its temp work under one root that goes on any exit, SIGTERM and
SIGHUP unwinding like Ctrl-C so every cleanup runs, and commits that no signal can cut in half.

    with process_scope():            # the CLIs (host and device) run their command inside this
        ...                          # tempfile.mkdtemp()/TemporaryDirectory() land in the root
        with signals_held():         # renames that must happen together
            os.replace(a, b); os.replace(c, d)

A process killed with SIGKILL cannot clean up; its root (named after its pid) is removed by the
next edgetl process that finds the pid gone. Standard library only: the device runs this too.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from edgetl.errors import Terminated

PREFIX = "edgetl-"
ROOT_NAME = re.compile(r"^edgetl-(\d+)-[A-Za-z0-9_]+$")
HANDLED = (signal.SIGTERM, signal.SIGHUP)
HELD = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def sweep(base: Path) -> None:
    """Remove the temp roots of edgetl processes that are gone (killed with SIGKILL, or a power cut)."""
    try:
        entries = list(base.iterdir())
    except OSError:
        return
    for entry in entries:
        m = ROOT_NAME.match(entry.name)
        if m and int(m[1]) != os.getpid() and not pid_alive(int(m[1])) and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)


def _raise_terminated(signum, frame):
    raise Terminated(signum)


@contextlib.contextmanager
def process_scope() -> Iterator[Path]:
    """Run a command with one temp root (removed on the way out, whatever the way) and SIGTERM/SIGHUP
    raising `Terminated`. Nested scopes (a CLI called from Python) reuse nothing and restore everything."""
    saved_tempdir, saved_env = tempfile.tempdir, os.environ.get("TMPDIR")
    base = Path(tempfile.gettempdir())
    sweep(base)
    root = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=base))
    main = threading.current_thread() is threading.main_thread()
    saved_handlers = {s: signal.signal(s, _raise_terminated) for s in HANDLED} if main else {}
    tempfile.tempdir = str(root)
    os.environ["TMPDIR"] = str(root)  # programs we start (compilers, converters) put their temp files here too
    try:
        yield root
    finally:
        for s, handler in saved_handlers.items():
            signal.signal(s, handler)
        tempfile.tempdir = saved_tempdir
        if saved_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved_env
        with signals_held():
            shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP off for a few renames that must all happen or none; a signal that
    came meanwhile is raised again, through the handler it would have met, right after the block.
    (Handlers, not the thread's signal mask: the engines' own threads may be the ones that receive it.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    saved = {s: signal.signal(s, lambda signum, frame: pending.append(signum)) for s in HELD}
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
        if pending:
            signal.raise_signal(pending[0])
