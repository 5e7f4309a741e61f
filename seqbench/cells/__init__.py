"""The recurrent cells seqbench can train, one module per cell.

Each module in this package defines ``CELL = Cell(...)`` (see :mod:`seqbench.cells.base`);
:data:`CELLS` collects them by discovering the package's modules, so adding a cell means adding
one module here (plus its ``.cpp`` kernel file if the engine should run it) and one
``conf/model/<cell>.yaml``.
"""

from __future__ import annotations

import importlib
import pkgutil

from seqbench.cells.base import INITS, Cell, EngineKernels

__all__ = ["CELLS", "INITS", "Cell", "EngineKernels", "get_cell"]


def _discover() -> dict[str, Cell]:
    cells = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name == "base" or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        cell = getattr(module, "CELL", None)
        if not isinstance(cell, Cell):
            raise TypeError(f"{module.__name__} must define CELL = Cell(...)")
        if cell.name in cells:
            raise ValueError(f"cell {cell.name!r} is defined twice")
        cells[cell.name] = cell
    return cells


#: Every registered cell by name, in alphabetical order.
CELLS: dict[str, Cell] = _discover()


def get_cell(name: str) -> Cell:
    """The cell called ``name``; ValueError listing the valid names otherwise."""
    try:
        return CELLS[name]
    except KeyError:
        raise ValueError(f"unknown cell {name!r}; choose one of {sorted(CELLS)}") from None
