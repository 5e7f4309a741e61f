"""Result files written whole or not at all, and CSV files that grow by appended rows. A leaf
module (no torch, pandas only when a CSV is written): the comparison tool uses it too, and must
start fast."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "w") -> None:
    """Call ``write(file)`` on a temporary file beside `path`, then rename it to `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class GrowingCSV:
    """A CSV file kept equal, byte for byte, to ``frame(items).to_csv`` (the whole file) by
    appending the rows of new items (a validation's row, a snapshot's rows), flushed.

    pandas formats a column by its dtype over the whole file (3 or 3.0), and a new item can
    change that (a new column, an int column meeting a float or a gap): the new rows are appended
    only when, joined to the last row on disk, they keep the file's columns and dtypes; otherwise
    the file is rewritten whole, atomically (for seqbench's files: never after the first row).
    """

    def __init__(self, path: Path, frame: Callable[[Sequence], pd.DataFrame]) -> None:
        self.path, self.frame = Path(path), frame
        self.written = 0  # items on disk
        self.columns: list[str] | None = None  # the file's header; None: to be written whole
        self.dtypes: list = []
        self.tail = None  # the last row on disk (a DataFrame), with the file's dtypes

    def rewrite(self, items: Sequence) -> None:
        """Write the file whole from `items`, atomically."""
        whole = self.frame(items)
        atomic_write(self.path, lambda f: whole.to_csv(f, index=False))
        self.columns, self.dtypes = list(whole.columns), list(whole.dtypes)
        self.written, self.tail = len(items), whole.iloc[-1:]

    def extend(self, items: Sequence) -> None:
        """Bring the file up to `items`: everything recorded so far, of which the first
        `written` are on disk."""
        if self.columns is not None and self.written == len(items):
            return
        if self.columns is None or not 0 < self.written < len(items):
            return self.rewrite(items)
        new = self.frame(items[self.written :])
        if list(new.columns) != self.columns or list(new.dtypes) != self.dtypes:
            if not set(new.columns) <= set(self.columns):
                return self.rewrite(items)
            new = new.reindex(columns=self.columns)  # a column it lacks: empty cells
            import pandas as pd  # here: the config-only paths import seqbench.files, not pandas

            joined = pd.concat([self.tail, new], ignore_index=True)
            if list(joined.dtypes) != self.dtypes:
                return self.rewrite(items)
            new = joined.iloc[1:]  # formatted as the file's columns are
        try:
            with self.path.open("a") as f:
                write_rows(f, new)
        except BaseException:  # a second Ctrl-C or a full disk mid-row: rewrite at next write
            self.columns = None
            raise
        self.written, self.tail = len(items), new.iloc[-1:]


def write_rows(f: Any, rows: pd.DataFrame) -> None:
    """Write the rows as ``rows.to_csv(f, header=False, index=False)`` does."""
    text = csv_rows(rows)
    if text is None:
        rows.to_csv(f, header=False, index=False)
    else:
        f.write(text)


def csv_rows(frame: pd.DataFrame) -> str | None:
    """The frame's rows as ``frame.to_csv(header=False, index=False)`` writes them, or None
    unless it has two or more columns, each of numbers or bools. pandas' writer costs about
    1.5 ms a call whatever the rows; a snapshot appended every step paid it three times.

    Formatted as pandas formats them (``get_values_for_csv`` with to_csv's defaults): a float
    by numpy's ``astype(str)``, NaN as an empty cell, an integer or a bool by ``str``. One
    column is left to pandas: the csv module quotes a row's lone empty cell."""
    if len(frame.columns) < 2:
        return None
    columns = []
    for _, series in frame.items():
        values = series.to_numpy()
        if values.dtype.kind == "f":
            text = values.astype(str)
            text[values != values] = ""  # NaN
            columns.append(text.tolist())
        elif values.dtype.kind in "iub":
            columns.append(values.tolist())
        else:
            return None
    return "".join(",".join(map(str, row)) + os.linesep for row in zip(*columns, strict=True))
