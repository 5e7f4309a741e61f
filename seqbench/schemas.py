"""The tasks' config schemas, read from the task modules' source without importing them.

Hydra needs every task's schema to compose a config, also for `seqbench --help`, `--cfg`,
`--info` and each TAB of the shell completion; the task modules import torch (1.5 s), those
paths must not. So the `@dataclass` classes of seqbench/tasks/*.py that derive from
`TaskConfig` are executed here on their own, from the modules' syntax trees, with the names a
schema may use (`dataclass`, `field`, `MISSING`, `Any`). tests/test_startup.py checks that they
have the same fields, types and defaults as the classes the task modules define.
"""

from __future__ import annotations

import ast
import dataclasses
import typing
from functools import cache
from pathlib import Path

from omegaconf import MISSING

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
BASE = "TaskConfig"  # the root of every task schema, in seqbench/tasks/base.py


def _is_dataclass(node: ast.ClassDef) -> bool:
    names = {d.func if isinstance(d, ast.Call) else d for d in node.decorator_list}
    return any(isinstance(n, ast.Name) and n.id == "dataclass" for n in names)


def _schema_classes(path: Path, namespace: dict) -> list[type]:
    """Execute the module's dataclasses that derive from a schema already in `namespace`."""
    found = []
    for node in ast.parse(path.read_text()).body:
        if not (isinstance(node, ast.ClassDef) and _is_dataclass(node)):
            continue
        bases = [b.id for b in node.bases if isinstance(b, ast.Name)]
        if node.name != BASE and not any(b in namespace["_schemas"] for b in bases):
            continue
        # Without `from __future__ import annotations` the field types are real types.
        code = compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec")
        exec(code, namespace)
        namespace["_schemas"].add(node.name)
        found.append(namespace[node.name])
    return found


@cache
def task_schemas() -> dict[str, type]:
    """Task name -> its config dataclass (as `seqbench.tasks.task_schemas()`, without torch)."""
    namespace: dict = {
        "__name__": "seqbench.schemas",
        "dataclass": dataclasses.dataclass,
        "field": dataclasses.field,
        "MISSING": MISSING,
        "Any": typing.Any,
        "_schemas": set(),
    }
    _schema_classes(TASKS_DIR / "base.py", namespace)  # the bases first
    schemas = {}
    for path in sorted(TASKS_DIR.glob("*.py")):
        if path.stem in ("__init__", "base"):
            continue
        for cls in _schema_classes(path, namespace):
            default = cls.__dataclass_fields__["name"].default
            if isinstance(default, str) and default != MISSING:
                schemas[default] = cls
    return dict(sorted(schemas.items()))
