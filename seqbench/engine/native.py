"""Build and load the native (C++) kernels, or say why not.

The kernels are ``csrc/engine.cpp`` and every cell's ``<cell>.cpp`` (seqbench/cells/),
compiled together as one translation unit with the system C++ compiler (``$CXX``, else
``c++``/``g++``) and loaded with :mod:`ctypes`. No torch headers are involved, so a build
takes a few seconds. The library is cached under ``$SEQBENCH_CACHE_DIR`` (else
``$XDG_CACHE_HOME/seqbench`` or ``~/.cache/seqbench``), keyed by the sources, the compiler,
the flags and the CPU. When torch runs on GNU OpenMP (libgomp already loaded), the kernels are
built with ``-fopenmp`` and split large steps over torch's own intra-op threads;
``SEQBENCH_NATIVE_OPENMP=0`` keeps them serial, ``SEQBENCH_NATIVE=0`` skips the native path.
A failed build is reported once, as a RuntimeWarning, and the engine uses its pure-torch path.

A layer's whole time loop runs in the library (``csrc/loops.h``) when the BLAS functions
torch itself calls (``sgemm_``/``dgemm_``, which libtorch_cpu exports) can be found: one call
per layer instead of several Python calls per step. ``SEQBENCH_NATIVE_LOOP=0``, or a torch
without those symbols, keeps the loop in Python around the same per-step kernels (the same
bits on one thread).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import torch

from seqbench.cells import CELLS, Cell
from seqbench.engine.constants import ABI, BLOOP_SLOTS, CSRC, LOOP_SLOTS

_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
_lock = threading.Lock()
_state: dict[str, Native | None] = {}


def cache_dir() -> str:
    """Where built libraries are kept."""
    env = os.environ.get("SEQBENCH_CACHE_DIR")
    if env:
        return env
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "seqbench")


def native_cells() -> list[Cell]:
    """The registered cells that ship a C++ kernel file, by name."""
    return [c for c in CELLS.values() if c.engine is not None and c.engine.native_source]


def sources() -> list[Path]:
    """The kernel files built into the library, in build order."""
    return [CSRC / "engine.cpp", *(c.engine.native_source for c in native_cells())]


def _cpu_signature() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return platform.processor() + platform.machine()


def _libgomp_paths() -> set[str]:
    try:
        with open("/proc/self/maps") as fh:
            return {line.split()[-1] for line in fh if "libgomp" in line}
    except OSError:
        return set()


def threading_wanted() -> bool:
    """Whether the kernels should use OpenMP threads (torch's libgomp is loaded)."""
    return os.environ.get("SEQBENCH_NATIVE_OPENMP", "1") != "0" and bool(_libgomp_paths())


def _first_errors(stderr: str, lines: int = 8) -> str:
    text = stderr.strip().splitlines()
    errors = [i for i, line in enumerate(text) if "error" in line.lower()]
    start = errors[0] if errors else 0
    return "\n".join("    " + line for line in text[start : start + lines])


#: ``-fno-trapping-math``: without it GCC keeps a branch for every clamp of the kernels'
#: sigmoid/tanh (a comparison might raise a floating-point exception) and vectorises none of
#: the cells' elementwise loops; the option changes no result (the kernels never read the
#: exception flags), it only lets the compiler turn the clamps into vector min/max.
#: ``tests/test_vectorised.py`` checks that the marked hot loops vectorise.
BASE_FLAGS = ["-O3", "-std=c++17", "-fno-trapping-math", "-fPIC", "-shared"]
NATIVE_FLAGS = ["-march=native", "-mprefer-vector-width=512"]


def unity_source(files: list | None = None) -> str:
    """The one translation unit the library is built from: ``#include`` of every kernel file."""
    return "".join(f'#include "{f}"\n' for f in (sources() if files is None else files))


def find_compiler() -> str | None:
    """The C++ compiler the kernels are built with: ``$CXX`` (default ``c++``), else ``g++``."""
    return shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")


def build(directory: str | None = None) -> ctypes.CDLL | None:
    """Build (or load from the cache) the kernel library; None, with one warning, if that fails.

    ``directory``: the cache directory (default :func:`cache_dir`; the system temp directory
    is the fallback when it cannot be written).
    """
    if sys.platform == "win32":
        return None
    compiler = find_compiler()
    if compiler is None:
        wanted = os.environ.get("CXX", "c++")
        _warn(f"no C++ compiler found (looked for {wanted!r} and 'g++')", "Install g++ or set CXX")
        return None
    base, native = BASE_FLAGS, NATIVE_FLAGS
    flag_sets = [base + native, base + native[:1], base]
    # Share torch's OpenMP thread pool when torch runs on GNU OpenMP (libgomp already loaded);
    # never bring a second OpenMP runtime into the process.
    gomp_before = _libgomp_paths()
    if gomp_before and os.environ.get("SEQBENCH_NATIVE_OPENMP", "1") != "0":
        flag_sets.insert(0, [*base, *native, "-fopenmp"])
    files = sources()
    headers = sorted(CSRC.glob("*.h"))
    texts = [*(h.read_text() for h in headers), *(f.read_text() for f in files)]
    unity = unity_source(files)
    failure = ""
    folders = (directory or cache_dir(), os.path.join(tempfile.gettempdir(), "seqbench-cache"))
    for flags in flag_sets:
        key = hashlib.sha256(
            "\0".join([*texts, compiler, *flags, _cpu_signature()]).encode()
        ).hexdigest()[:16]
        for folder in folders:
            path = os.path.join(folder, f"bptt_{key}.so")
            try:
                if not os.path.exists(path):
                    os.makedirs(folder, exist_ok=True)
                    src = os.path.join(folder, f"bptt_{key}.{os.getpid()}.cpp")
                    tmp = path + f".{os.getpid()}.tmp"
                    with open(src, "w") as fh:
                        fh.write(unity)
                    cmd = [compiler, *flags, f"-I{CSRC}", src, "-o", tmp]
                    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
                    os.unlink(src)
                    if proc.returncode != 0:
                        failure = (
                            f"`{' '.join(cmd)}` failed (exit {proc.returncode}):\n"
                            + _first_errors(proc.stderr)
                        )
                        break  # try the next flag set
                    os.replace(tmp, path)  # atomic: concurrent builders are harmless
                lib = ctypes.CDLL(path)
                if lib.seqbench_abi_version() != ABI:
                    failure = f"{path} reports ABI {lib.seqbench_abi_version()}, expected {ABI}"
                    continue
                if "-fopenmp" in flags and _libgomp_paths() != gomp_before:
                    # a second OpenMP runtime got loaded: use the serial build instead
                    break
                return lib
            except (OSError, subprocess.SubprocessError) as exc:
                failure = f"{folder}: {exc}"
                continue
    _warn(
        f"could not build the native kernels with {compiler}. Last attempt: {failure}",
        "Fix the error above or set CXX to another compiler",
    )
    return None


def _warn(reason: str, fix: str) -> None:
    warnings.warn(
        f"seqbench.engine: {reason}\n{fix}; SEQBENCH_NATIVE=0 skips the build. Using the "
        "pure-torch path meanwhile (equal up to float rounding, slower).",
        RuntimeWarning,
        stacklevel=4,
    )


class Native:
    """The loaded library: its kernels by ``(name, dtype)`` (``"lstm_fwd"``, ``"scale_rows"``)."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        lib.seqbench_set_threading.argtypes = [ctypes.c_int]
        lib.seqbench_set_threading.restype = ctypes.c_int
        lib.seqbench_threads_for.argtypes = [ctypes.c_int64]
        lib.seqbench_threads_for.restype = ctypes.c_int
        self.openmp = bool(lib.seqbench_set_threading(1 if threading_wanted() else 0))
        p = ctypes.POINTER(ctypes.c_int64)
        self.fns: dict[tuple[str, torch.dtype], ctypes._CFuncPtr] = {}
        self.cells = {c.name for c in native_cells()}
        for dtype, suffix in _SUFFIX.items():
            for cell in sorted(self.cells):
                for kind, restype in (("fwd", None), ("bwd", ctypes.c_int)):
                    fn = getattr(lib, f"{cell}_{kind}_{suffix}")
                    fn.argtypes = [p, ctypes.c_int64]
                    fn.restype = restype
                    self.fns[(f"{cell}_{kind}", dtype)] = fn
            for cell in sorted(self.cells):
                for kind in ("fwd_loop", "bwd_loop"):
                    fn = getattr(lib, f"{cell}_{kind}_{suffix}")
                    fn.argtypes = [p, p]
                    fn.restype = None
                    self.fns[(f"{cell}_{kind}", dtype)] = fn
            fn = getattr(lib, f"scale_rows_{suffix}")
            fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
            fn.restype = None
            self.fns[("scale_rows", dtype)] = fn
        self.gemm = blas_gemm()

    def loop(self, dtype: torch.dtype) -> int | None:
        """The address of the BLAS gemm for `dtype` when the native time loops run, else None
        (``SEQBENCH_NATIVE_LOOP=0``, or no BLAS symbol found)."""
        if os.environ.get("SEQBENCH_NATIVE_LOOP", "1") == "0":
            return None
        return self.gemm.get(dtype)

    def threads_for(self, work: int) -> int:
        """Threads the kernels use, from this thread, for a step with ``work = B * columns``."""
        return self.lib.seqbench_threads_for(work)


def blas_gemm() -> dict[torch.dtype, int]:
    """{dtype: address} of the Fortran BLAS sgemm_/dgemm_ that torch's CPU library exports and
    calls itself (MKL in the x86 wheels); {} where they are not exported."""
    found: dict[torch.dtype, int] = {}
    path = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    try:
        lib = ctypes.CDLL(str(path))
    except OSError:
        return found
    for dtype, name in ((torch.float32, "sgemm_"), (torch.float64, "dgemm_")):
        symbol = getattr(lib, name, None)
        if symbol is not None:
            found[dtype] = ctypes.cast(symbol, ctypes.c_void_p).value
    return found


def loop_params(slots: tuple[str, ...], **values: int) -> ctypes.Array:
    """A loop plan (``enum Loop`` / ``enum BLoop`` of ``csrc/loops.h``), slots by name."""
    if set(values) != set(slots):
        raise ValueError(f"loop plan slots {sorted(values)} != {sorted(slots)}")
    return params(*(values[name] for name in slots))


def fwd_plan(**values: int) -> ctypes.Array:
    return loop_params(LOOP_SLOTS, **values)


def bwd_plan(**values: int) -> ctypes.Array:
    return loop_params(BLOOP_SLOTS, **values)


def native() -> Native | None:
    """The kernels, built and loaded on first use; None where they cannot be built."""
    if os.environ.get("SEQBENCH_NATIVE", "1") == "0":
        return None
    with _lock:
        if "lib" not in _state:
            lib = build()
            _state["lib"] = Native(lib) if lib is not None else None
        return _state["lib"]


def native_available() -> bool:
    """True if the compiled kernels are usable (builds them on first call)."""
    return native() is not None


def use_native(x: torch.Tensor, cell: Cell) -> Native | None:
    """The kernels for this input and cell, or None for the pure-torch path."""
    if x.device.type != "cpu" or x.dtype not in _SUFFIX:
        return None
    nat = native()
    return nat if nat is not None and cell.name in nat.cells else None


def params(*values: int) -> ctypes.Array:
    """An int64 parameter block for a kernel."""
    return (ctypes.c_int64 * len(values))(*values)


def ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()
