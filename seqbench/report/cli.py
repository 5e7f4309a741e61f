"""The `seqbench-report` command: read the sweeps, build the page, write it atomically."""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from seqbench.compare import varies
from seqbench.errors import EXIT_USAGE, exit_on_closed_stdout
from seqbench.files import atomic_write
from seqbench.report.collect import ReportError, counted, load_sweep, sweep_dirs
from seqbench.report.content import report_blocks
from seqbench.report.render import to_html, to_markdown


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="seqbench-report",
        description="One page per set of finished sweeps: the comparison table, learning curves, "
        "gradient norms against t, heat maps, gates and memory horizon, and the commands and "
        "configs, built from the run directories only (nothing is re-trained).",
    )
    parser.add_argument(
        "paths",
        nargs="+",
        type=Path,
        metavar="SWEEP_DIR",
        help="sweep directories (multirun/DATE/TIME) or run directories",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("report.html"),
        help="the file to write (default: report.html)",
    )
    parser.add_argument(
        "--format",
        choices=["html", "md"],
        help="html: one self-contained file; md: Markdown with the PNGs in "
        "OUTPUT_STEM_files/ beside it (default: from the output's suffix)",
    )
    parser.add_argument("--title", default="seqbench report", help="the page's title")
    parser.add_argument(
        "--vs",
        action="append",
        default=[],
        metavar="KEY",
        help="also compare the values of KEY pair by pair, in each setting of the other keys "
        "(e.g. task.stateful: windowed against stateful, per model); repeatable; the model is "
        "always compared",
    )
    return parser.parse_args(argv)


@exit_on_closed_stdout()
def main(argv: Sequence[str] | None = None) -> int:
    """`seqbench-report SWEEP_DIR [SWEEP_DIR...] -o report.html`."""
    args = parse_args(argv)
    output: Path = args.output
    fmt = args.format or ("md" if output.suffix.lower() in (".md", ".markdown") else "html")
    try:
        check_writable(output)
        sections = [d for path in args.paths for d in sweep_dirs(path)]
        sweeps = [load_sweep(d) for d in dict.fromkeys(sections)]
        check_vs(args.vs, sweeps)
        try:
            blocks = report_blocks(sweeps, args.title, output.parent, args.vs)
        except OSError as err:  # a run directory's file is missing or unreadable
            raise ReportError(_cannot_read(err)) from None
        written = write_report(blocks, args.title, output, fmt)
    except ReportError as err:
        print(f"seqbench-report: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as err:
        print(f"seqbench-report: error: {_cannot_write(output, err)}", file=sys.stderr)
        return EXIT_USAGE
    runs = sum(len(s.runs) for s in sweeps)
    print(
        f"wrote {output} ({counted(len(sweeps), 'sweep')}, {counted(runs, 'run')}"
        + (f", {written} figures in {figures_dir(output)}" if fmt == "md" else "")
        + ")"
    )
    return 0


def check_vs(keys: Sequence[str], sweeps: list) -> None:
    """Every `--vs` key varies in at least one sweep, else one message naming what does."""
    varying = {k for s in sweeps for k in s.by if varies(s.runs[k])}
    for key in keys:
        if key not in varying:
            allowed = ", ".join(sorted(varying)) or "none"
            raise ReportError(
                f"--vs {key!r} is not a key that varies in the sweeps; the keys that vary: "
                f"{allowed}."
            )


def figures_dir(output: Path) -> Path:
    """Where --format md puts the PNGs: report.md -> report_files/."""
    return output.with_name(f"{output.stem}_files")


def write_report(blocks: list, title: str, output: Path, fmt: str) -> int:
    """Write the page (and for Markdown its PNGs first); return how many PNG files."""
    if fmt == "html":
        page = to_html(title, blocks)
        _write(output, page, "w")
        return 0
    folder = figures_dir(output)
    text, pictures = to_markdown(blocks, Path(folder.name))
    folder.mkdir(exist_ok=True)
    for stale in folder.glob("s*-*.png"):  # an earlier report's figures that this one lacks
        if (
            re.fullmatch(r"s\d+-.+\.png", stale.name)
            and f"{folder.name}/{stale.name}" not in pictures
        ):
            stale.unlink()
    for relative, png in pictures.items():
        _write(output.parent / relative, png, "wb")
    _write(output, text, "w")
    return len(pictures)


def _write(path: Path, content: str | bytes, mode: str) -> None:
    """Atomically, readable by others as any file the user creates (the umask decides)."""
    atomic_write(path, lambda f: f.write(content), mode=mode)
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)


def check_writable(output: Path) -> None:
    """Refuse, before any work, an output that cannot be written."""
    parent = output.parent
    if output.is_dir():
        raise ReportError(
            f"-o {output} is a directory; give a file name, e.g. -o {output / 'report.html'}."
        )
    if not parent.is_dir():
        raise ReportError(
            f"-o {output}: the directory {parent} does not exist; create it or "
            "choose another output path."
        )
    try:
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".seqbench-report-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ReportError(_cannot_write(output, err)) from None


def _cannot_read(err: OSError) -> str:
    reason = err.strerror or type(err).__name__
    return (
        f"cannot read {err.filename or 'a run directory file'} ({reason}). A run directory "
        "holds metrics.json, history.csv and the norms' CSV files as seqbench wrote them; "
        "re-run that run, or leave its directory out of the report."
    )


def _cannot_write(output: Path, err: OSError) -> str:
    reason = err.strerror or type(err).__name__
    return (
        f"-o {output} cannot be written ({reason}: {err.filename or output.parent}). "
        "Choose an output path in a writable directory, or free disk space."
    )
