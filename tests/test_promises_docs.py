"""docs/promises.md, the table of the documentation's promises and their tests, kept honest: every
test it names exists (its file defines that function), every page of the README and the site
(the generated reports aside) has its section with a test on every row, and its count table is
the sections' own. Then the promises about the documentation's own numbers and files that no
other test held: the preset table's runs and names, the presets' headers, the Slurm launcher's
comments. Milliseconds each."""

from __future__ import annotations

import ast
import math
import re
from functools import cache
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, compose_config

PROMISES = ROOT / "docs" / "promises.md"
# the pages the table covers: the README and every page of the site but the generated ones
GENERATED = {"docs/report_example.md", "docs/mutation.md", "docs/promises.md"}
COVERED = [
    "README.md",
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")
            if str(p.relative_to(ROOT)) not in GENERATED),
]  # fmt: skip
PRESETS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
TEST = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")
NEW = re.compile(r"tests/test_promises_\w+\.py")  # the files written for the table


def sections() -> dict[str, list[str]]:
    """'## heading' -> its table rows (lines starting with '|' after the header rule)."""
    found: dict[str, list[str]] = {}
    heading = None
    for line in PROMISES.read_text().splitlines():
        if line.startswith("## "):
            heading = line[3:].strip()
            found[heading] = []
        elif heading is not None and line.startswith("|") and not line.startswith("|---"):
            found[heading].append(line)
    return {h: rows[1:] for h, rows in found.items()}  # without the column header


@cache
def functions(path: str) -> frozenset[str]:
    """Every function a test file defines (module level or in a class)."""
    tree = ast.parse((ROOT / path).read_text())
    return frozenset(n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef))


def test_every_test_the_table_names_exists() -> None:
    named = TEST.findall(PROMISES.read_text())
    assert len(named) > 300
    missing = sorted({f"{path}::{name}" for path, name in named
                      if not (ROOT / path).is_file() or name not in functions(path)})  # fmt: skip
    assert missing == [], "docs/promises.md names tests that do not exist"


def test_every_page_has_its_section_and_every_row_a_test() -> None:
    pages = {h: rows for h, rows in sections().items() if h != "Findings"}
    assert sorted(pages) == COVERED, "a page without its section, or a section without its page"
    for page, rows in pages.items():
        assert rows, page
        untested = [row for row in rows if not TEST.search(row.rsplit("|", 2)[-2])]
        assert untested == [], f"{page}: rows without a test"


def test_the_count_table_is_the_sections_own() -> None:
    """The table at the top: per page, its promises, those held by tests that existed before
    and those held by a test written for this table (a row naming a tests/test_promises_*.py)."""
    text = PROMISES.read_text()
    counts = {}
    for line in text.split("\n## ")[0].splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 4 and cells[1].isdigit():
            counts[cells[0]] = tuple(int(c) for c in cells[1:])
    expected = {}
    for page, rows in sections().items():
        if page == "Findings":
            continue
        new = sum(bool(NEW.search(row.rsplit("|", 2)[-2])) for row in rows)
        expected[page] = (len(rows), len(rows) - new, new)
    expected["all"] = tuple(sum(v[i] for v in expected.values()) for i in range(3))
    assert counts == expected


def preset_rows() -> dict[str, int]:
    """docs/presets.md's table of presets: name -> its "runs" column."""
    text = (ROOT / "docs" / "presets.md").read_text()
    table = text.split("| preset | what | runs |")[1].split("\n\n")[0]
    return {m.group(1): int(m.group(2))
            for m in re.finditer(r"^\| `(\w+)` \|.*\| (\d+) \| [^|]+\|$", table, re.M)}  # fmt: skip


def test_the_preset_table_counts_and_names_every_preset() -> None:
    """presets.md: the table lists every preset with its number of runs (the product of its
    sweep's value lists); README.md: "Seven presets"."""
    rows = preset_rows()
    assert sorted(rows) == PRESETS
    for name, runs in rows.items():
        params = compose_config([f"experiment={name}"], hydra=True).hydra.sweeper.params
        assert math.prod(len(str(v).split(",")) for v in params.values()) == runs, name
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    count = re.search(r"(\w+) presets are ready-made sweeps", (ROOT / "README.md").read_text())
    assert count and words.index(count.group(1).lower()) == len(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_each_preset_header_says_what_and_how_long(name: str) -> None:
    """presets.md: a preset's header says what it compares (its runs) and how long it takes on
    2 CPU cores."""
    text = (ROOT / "conf" / "experiment" / f"{name}.yaml").read_text()
    header = " ".join(line.lstrip("# ") for line in text.splitlines()
                      if line.startswith("#") and "@package" not in line)  # fmt: skip
    runs = preset_rows()[name]
    assert re.search(rf"\b{runs} runs\b", header), f"{name}: its header does not give its runs"
    assert re.search(r"on 2 (CPU )?cores", header), name
    assert re.search(r"\d+ (min|s)\b|under a minute", header), f"{name}: no duration"


def test_the_slurm_launcher_documents_each_key() -> None:
    """clusters.md: conf/hydra/launcher/slurm.yaml documents each key and its `sbatch` option."""
    text = (ROOT / "conf" / "hydra" / "launcher" / "slurm.yaml").read_text()
    keys = [k for k in yaml.safe_load(text) if k not in ("defaults", "_target_")]
    assert len(keys) >= 8
    for key in keys:
        line = next(ln for ln in text.splitlines() if re.match(rf"{key}:", ln))
        nested = text.split(f"{key}:", 1)[1].split("\n", 2)[1]  # a mapping's first entry
        assert "#" in line or "#" in nested, f"{key} has no comment"
    sbatch = {"partition": "--partition", "timeout_min": "--time", "cpus_per_task":
              "--cpus-per-task", "gpus_per_node": "--gpus-per-node", "mem_gb": "--mem"}  # fmt: skip
    for key, option in sbatch.items():
        line = next(ln for ln in text.splitlines() if ln.startswith(f"{key}:"))
        assert f"sbatch {option}" in line, key


def test_the_page_is_in_the_site() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert "promises.md" in str(config["nav"])
    assert Path(PROMISES).read_text().startswith("# Promises and their tests\n")
