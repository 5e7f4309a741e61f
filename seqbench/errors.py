"""Errors and exit codes shared by the whole package. A leaf module: it imports nothing of ours,
so any module (and a light tool that must not load torch) can use it without an import cycle."""

from __future__ import annotations

import errno
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

EXIT_USAGE = 2  # a value that cannot run; nothing was written
EXIT_IO = 74  # sysexits EX_IOERR: the output directory cannot be written
# 128 + the signal number, as shells report; SIGPIPE: what reads the output went away (`| head`)
EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143, "SIGPIPE": 141}


class ConfigError(ValueError):
    """A user mistake found before training: a value that composes but cannot run (a negative
    size, CUDA asked for but absent, a missing data file). The command prints it as one
    paragraph, without a traceback, and exits with status 2."""


def silence_stdout() -> None:
    """Point stdout at /dev/null once what reads it has gone (a `| head` that has its lines):
    what is still buffered, and what Python flushes at exit, then goes nowhere instead of
    raising BrokenPipeError again (the recipe of Python's `signal` documentation)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (a test's StringIO)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


@contextmanager
def closed_stdout_ends_the_command() -> Iterator[None]:
    """While active, a write to a closed stdout ends the process as SIGPIPE ends `ls | head`:
    at once, silently, status 141 in the shell. For what only prints (`--help`, `--cfg`,
    `--info`), where Hydra's own handler would print a traceback. A run or a sweep switches
    back (`closed_stdout_raises`): it has files to finish."""
    previous = _set_sigpipe(signal.SIG_DFL)
    try:
        yield
    finally:
        _set_sigpipe(previous)


def closed_stdout_raises() -> None:
    """A write to a closed stdout raises BrokenPipeError (Python's own setting) from here on."""
    _set_sigpipe(signal.SIG_IGN)


def _set_sigpipe(handler):
    if threading.current_thread() is not threading.main_thread():  # a launcher's thread
        return signal.SIG_IGN
    return signal.signal(signal.SIGPIPE, handler)


@contextmanager
def silent_if_stdout_closes() -> Iterator[None]:
    """What is left of the block's printing goes to /dev/null once stdout's reader has gone:
    for a sweep, which goes on to its end (and a status 0) whoever reads its lines."""
    try:
        yield
    except BrokenPipeError:
        silence_stdout()


@contextmanager
def exit_on_closed_stdout() -> Iterator[None]:
    """A command whose reader went away stops without a traceback and with the exit status of
    a process that SIGPIPE ended (141), as `ls | head` does."""
    try:
        yield
        sys.stdout.flush()  # here, not at exit, where Python would only warn (status 120)
    except BrokenPipeError:
        silence_stdout()
        sys.exit(EXIT_CODES["SIGPIPE"])


def stdout_console(**kwargs):
    """A rich Console (`kwargs` as for rich's) whose write to a closed stdout raises
    BrokenPipeError, for `exit_on_closed_stdout` or the caller to handle: rich's own
    `on_broken_pipe` exits with status 1 wherever the write was, mid-run included. rich is
    imported here, when a console is made, so that this module stays light."""
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            self.quiet = True
            raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))

    return _Console(**kwargs)
