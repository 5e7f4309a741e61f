"""The native kernels' hot loops vectorise.

A loop marked ``// vectorised`` in a kernel file (a cell's ``<cell>.cpp`` or the shared
headers) must be reported vectorised by GCC (its ``vect`` dump) in every float32
instantiation when the library is built with the engine's own flags. Without
``-fno-trapping-math`` GCC kept a branch for every clamp of the kernels' sigmoid and tanh and
vectorised none of the cells' elementwise loops: the engine's training step was about 1.5x
slower (docs/performance.md). Every cell's kernel file must mark at least one loop, so a new
cell is covered without editing this test.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from seqbench.engine import native
from seqbench.engine.native import native_cells

MARK = "// vectorised"
FUNCTION = re.compile(r"^;; Function ", re.M)
LOOP = r"(?P<file>[^:\s]+):(?P<line>\d+):\d+: "
VECTORISED = re.compile(LOOP + r"optimized:\s+loop vectorized")
MISSED = re.compile(LOOP + r"missed:\s+couldn't vectorize loop")
#: a float32 instantiation, demangled (``bwd_rows<float, ...``) or mangled (``lstm_fwdIfE``)
FLOAT32 = re.compile(r"<float|[a-z_]If[EfdN]")


def _gcc() -> str:
    compiler = native.find_compiler()
    if compiler is None:
        pytest.skip("no C++ compiler: the engine uses its pure-torch path")
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    if "Free Software Foundation" not in version:
        pytest.skip(f"{compiler} is not GCC, whose -fopt-info report this test reads")
    return compiler


def marked_loops() -> set[tuple[Path, int]]:
    """(file, line) of every loop marked in the kernel sources and the shared headers."""
    files = [*sorted(native.CSRC.glob("*.h")), *native.sources()]
    return {
        (path.resolve(), number)
        for path in files
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if MARK in line
    }


def test_every_cell_kernel_marks_its_hot_loop():
    marked = {path for path, _ in marked_loops()}
    for cell in native_cells():
        source = cell.engine.native_source.resolve()
        assert source in marked, f"{source.name}: mark its elementwise loop `{MARK}`"


@pytest.mark.parametrize("openmp", [False, True], ids=["serial", "openmp"])
def test_marked_loops_vectorise_with_the_engines_flags(tmp_path, openmp):
    compiler = _gcc()
    src = tmp_path / "unity.cpp"
    src.write_text(native.unity_source())
    flags = [*native.BASE_FLAGS, *native.NATIVE_FLAGS, *(["-fopenmp"] if openmp else [])]
    cmd = [compiler, *flags, f"-I{native.CSRC}", str(src), "-o", str(tmp_path / "k.so")]
    dump = tmp_path / "vect.txt"
    proc = subprocess.run(
        [*cmd, f"-fdump-tree-vect-optimized-missed={dump}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    marked = marked_loops()
    assert len(marked) >= len(native_cells()) + 2

    def loops(pattern, text):
        return {((tmp_path / m["file"]).resolve(), int(m["line"])) for m in pattern.finditer(text)}

    # per function: a float32 instantiation must vectorise every marked loop it contains (the
    # float64 ones call libm's tanh and exp, which GCC vectorises only with -ffast-math)
    vectorised, missed = set(), set()
    for function in FUNCTION.split(dump.read_text())[1:]:
        vectorised |= loops(VECTORISED, function)
        if FLOAT32.search(function.split("\n", 1)[0]):
            for path, line in loops(MISSED, function) & marked:
                missed.add(f"{path.name}:{line} in {function.split(' ', 1)[0][:80]}")
    never = sorted(f"{path.name}:{line}" for path, line in marked - vectorised)
    assert not never, f"never vectorised with {' '.join(flags)}: {never}"
    assert not missed, f"float32 loops not vectorised with {' '.join(flags)}: {sorted(missed)}"
