"""Errors and exit codes shared by the whole package. A leaf module: it imports nothing of ours,
so any module (and a light tool that must not load torch) can use it without an import cycle."""

from __future__ import annotations

EXIT_USAGE = 2  # a value that cannot run; nothing was written
EXIT_IO = 74  # sysexits EX_IOERR: the output directory cannot be written
EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}  # 128 + the signal number, as shells report


class ConfigError(ValueError):
    """A user mistake found before training: a value that composes but cannot run (a negative
    size, CUDA asked for but absent, a missing data file). The command prints it as one
    paragraph, without a traceback, and exits with status 2."""
