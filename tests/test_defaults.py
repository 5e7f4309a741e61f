"""One source of defaults: the dataclass schemas hold them. An option's YAML fills what its schema
leaves open (MISSING, e.g. `device: cpu`) and changes a default only with a reason in a comment
on the same line; a YAML value equal to the schema's, or a silent change, fails here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from seqbench.config import flatten, register_configs

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
GROUPS = ("model", "task", "optimizer", "scheduler", "hardware")
OPTIONS = sorted(p.relative_to(CONF) for g in GROUPS for p in (CONF / g).glob("*.yaml"))
OPTION_FILES = [Path("config.yaml"), *OPTIONS]


def schema_of(text: str) -> str:
    """The ConfigStore entry a YAML extends: its `/schema/...@_here_` line, or the top schema."""
    found = re.search(r"^\s*-\s*/?(schema/[\w/]+)@_here_", text, re.M)
    return f"{found.group(1)}.yaml" if found else "seqbench_schema.yaml"


def check(text: str, schema: dict) -> list[str]:
    """What a YAML sets against its schema: a list of problems (empty: it follows the rule)."""
    values = yaml.safe_load(text) or {}
    problems, defaults = [], dict(flatten(schema))
    for key, value in flatten({k: v for k, v in values.items() if k not in ("defaults", "hydra")}):
        default = defaults.get(key, "<absent>")
        name = re.escape(key.rsplit(".", 1)[-1])
        line = next((ln for ln in text.splitlines() if re.match(rf"\s*{name}\s*:", ln)), "")
        if default == "???":
            continue  # fills what the schema leaves open
        if default == value:
            problems.append(f"{key}: {value!r} repeats the schema's default; delete it")
        elif "#" not in line:
            problems.append(f"{key}: {value!r} changes the default {default!r} without a reason")
    return problems


def stored_schema(name: str) -> dict:
    register_configs()
    node = ConfigStore.instance().load(config_path=name).node
    return OmegaConf.to_container(node, resolve=False)


def test_the_rule_catches_repeats_and_silent_changes() -> None:
    schema = {"lr": 0.003, "cell": "???", "clip": {"mode": "norm"}}
    assert check("cell: lstm\nlr: 0.01  # a reason\n", schema) == []
    assert len(check("lr: 0.003\n", schema)) == 1
    assert len(check("lr: 0.01\n", schema)) == 1
    assert len(check("clip:\n  mode: norm\n", schema)) == 1


@pytest.mark.parametrize("path", OPTION_FILES, ids=str)
def test_yaml_only_fills_or_overrides_with_a_reason(path: Path) -> None:
    text = (CONF / path).read_text()
    assert check(text, stored_schema(schema_of(text))) == []


def uncommented_keys(cls: type) -> list[str]:
    """The keys a schema dataclass declares without a comment on their line or just above."""
    import ast
    import inspect

    lines, _ = inspect.getsourcelines(cls)
    indent = len(lines[0]) - len(lines[0].lstrip())
    tree = ast.parse("".join(line[indent:] for line in lines))
    missing = []
    for node in ast.walk(tree):
        if isinstance(node, ast.AnnAssign) and node.target.id != "name":  # name: the option
            i = node.lineno - 1
            if "#" not in lines[i] and not (i and lines[i - 1].strip().startswith("#")):
                missing.append(node.target.id)
    return missing


def test_every_task_key_is_commented() -> None:
    """docs/contributing.md: a task's schema declares every key with its default, each
    commented (the comment is the key's documentation: `task=X --help` prints the schema)."""
    import dataclasses

    from seqbench.tasks import TASKS

    schemas = {k for task in TASKS.values() for k in task.schema.__mro__
               if dataclasses.is_dataclass(k)}  # fmt: skip
    missing = {f"{k.__module__}.{k.__name__}": uncommented_keys(k) for k in schemas}
    assert {k: v for k, v in missing.items() if v} == {}
