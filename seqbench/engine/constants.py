"""The numbers Python and the C++ kernels must agree on, read from the kernels' shared header
(``csrc/seqbench.h``) so that there is one place to change them. The pure-torch path uses them
too, so they are read even where no compiler is available."""

from __future__ import annotations

import re
from pathlib import Path

import torch

CSRC = Path(__file__).resolve().parent / "csrc"
HEADER = CSRC / "seqbench.h"
LOOPS = CSRC / "loops.h"


def _enum(text: str, name: str, path: Path) -> tuple[str, ...]:
    """The slot names of ``enum NAME { ... }`` in order."""
    enum = re.search(rf"enum {name}\s*\{{([^}}]*)\}}", text)
    if enum is None:
        raise RuntimeError(f"{path}: no `enum {name} {{...}}` parameter block")
    return tuple(s.split("=")[0].strip() for s in enum.group(1).split(",") if s.strip())


def _read_header(path: Path = HEADER) -> tuple[dict[str, int], tuple[str, ...]]:
    """``#define SEQBENCH_<NAME> <integer>`` lines and the names of the ``enum Bwd`` slots."""
    text = path.read_text()
    defines = {
        name: int(value)
        for name, value in re.findall(r"^#define SEQBENCH_(\w+)\s+(-?\d+)\b", text, re.M)
    }
    return defines, _enum(text, "Bwd", path)


_DEFINES, _SLOTS = _read_header()

#: ``seqbench_abi_version()`` of a library built from these sources.
ABI = _DEFINES["ABI"]
#: "no signal" exponent sentinel.
NEG = _DEFINES["NEG"]
#: within one sequence and step, a contribution more than ``2**CUT`` times smaller than the
#: dominant one is dropped (see the numerical contract in ``seqbench/engine/__init__.py``).
CUT = {torch.float32: _DEFINES["CUT_F32"], torch.float64: _DEFINES["CUT_F64"]}
#: ``B * columns`` of one step from which the native kernels split its rows over threads.
THREADING_MIN_WORK = _DEFINES["THREADING_MIN_WORK"]
#: the backward kernels' int64 parameter block: slot names in order (``BWD_SLOTS`` last).
BWD_SLOTS = _SLOTS[: _SLOTS.index("BWD_SLOTS")]

#: the native time loops' plans (``csrc/loops.h``): slot names in order.
_LOOP_TEXT = LOOPS.read_text()
LOOP_SLOTS = _enum(_LOOP_TEXT, "Loop", LOOPS)[:-1]  # without LOOP_SLOTS itself
BLOOP_SLOTS = _enum(_LOOP_TEXT, "BLoop", LOOPS)[:-1]
