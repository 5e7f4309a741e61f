"""The results the documentation (the README, docs/*.md, docs/presets) shows are what
seqbench-report computes: every committed table is recomputed from the runs' metrics.json, kept
per preset sweep under tests/fixtures/presets/NAME (scripts/keep_fixture.py copies them out of
the sweep)."""

from __future__ import annotations

import math
import re
import statistics
from pathlib import Path

import pytest
import yaml

from seqbench.compare import to_display
from seqbench.report.collect import load_sweep
from seqbench.report.content import compared_pairs
from seqbench.report.render import to_markdown
from seqbench.report.tables import gate_table, gradient_table, pairs_table, results_table
from seqbench.verdicts import pair_frame
from tests.conftest import ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "presets"
KEPT = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())
# in the README and the docs pages, a table produced by seqbench-report follows a marker naming
# its preset and kind
MARKER = re.compile(
    r"<!-- seqbench-report (\w+) (results|gradients|gates|pairs|pairs_vs) -->\n+((?:\|.*\n)+)"
)
# the pages that may show such tables: the README and docs/*.md (the reports in docs/presets are
# checked whole, below)
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


# the presets whose report also compares another key (`seqbench-report --vs KEY`)
ALSO_VS = {"chargen_cells": "task.stateful"}


def computed(name: str, root: Path = FIXTURES) -> dict[str, str]:
    """The report's Markdown tables for the kept sweep NAME: results, gradients, gates, and who
    wins (pairs) where the sweep has pairs to compare; `pairs_vs`, the pairs of ALSO_VS's key."""
    sweep = load_sweep(root / name)
    tables = {"results": results_table(sweep), "gradients": gradient_table(sweep)}
    if (gates := gate_table(sweep)) is not None:
        tables["gates"] = gates
    if not (pairs := pair_frame(sweep.runs, sweep.by)).empty:
        tables["pairs"] = pairs_table(pairs)
    if name in ALSO_VS:
        tables["pairs_vs"] = pairs_table(compared_pairs(sweep, ALSO_VS[name]))
    return {kind: to_markdown([table], Path("."))[0] for kind, table in tables.items()}


def tables_in(text: str) -> list[str]:
    """Every Markdown table of a document: runs of lines that start with '|'."""
    return [m.group(0) for m in re.finditer(r"(?m)(?:^\|.*\n)+", text)]


def test_every_preset_has_a_report_and_its_runs_kept() -> None:
    reports = {p.stem for p in (ROOT / "docs" / "presets").glob("*.md")}
    presets = {p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")}
    assert reports == set(KEPT) == presets  # every preset has its report and its runs kept
    for name in KEPT:  # all of the preset's sweep: the product of its sweeper's value lists
        params = yaml.safe_load((ROOT / "conf" / "experiment" / f"{name}.yaml").read_text())
        values = params["hydra"]["sweeper"]["params"].values()
        runs = math.prod(len(str(v).split(",")) for v in values)
        assert len(list((FIXTURES / name).glob("*/metrics.json"))) == runs, name


@pytest.mark.parametrize("name", KEPT)
def test_the_preset_report_tables_are_what_the_report_computes(name: str) -> None:
    committed = tables_in((ROOT / "docs" / "presets" / f"{name}.md").read_text())
    for kind, table in computed(name).items():
        assert table in committed, f"docs/presets/{name}.md: its {kind} table is stale"


def test_the_tables_in_the_pages_are_what_the_report_computes() -> None:
    found = [(page, *m) for page in PAGES for m in MARKER.findall(page.read_text())]
    # every kept preset shows its results table somewhere in the README or the docs pages
    assert {name for _, name, kind, _ in found if kind == "results"} == set(KEPT)
    for page, name, kind, table in found:
        where = page.relative_to(ROOT)
        assert table == computed(name)[kind], f"{where}: the {kind} table of {name} is stale"


def test_a_changed_number_is_noticed(tmp_path: Path) -> None:
    """The check can fail: one run's metric changed in a copy of a kept sweep changes a row."""
    name = KEPT[0]
    copy = tmp_path / name
    for run in (FIXTURES / name).glob("*/metrics.json"):
        (copy / run.parent.name).mkdir(parents=True)
        (copy / run.parent.name / "metrics.json").write_text(run.read_text())
    target = sorted(copy.glob("*/metrics.json"))[0]
    text = target.read_text()
    value = re.search(r'"final_metric": ([0-9.e-]+)', text).group(1)
    changed = repr(float(value) * 2)
    target.write_text(text.replace(f'"final_metric": {value}', f'"final_metric": {changed}', 1))
    assert computed(name, tmp_path)["results"] != computed(name)["results"]


def test_the_test_column_is_the_runs_own_test_split() -> None:
    """The report's test column is each configuration's mean ± std of metrics.json's test
    score (sentiment has a test split); a task without one (adding) gets no such column."""
    sweep = load_sweep(FIXTURES / "sentiment_cells")
    results = computed("sentiment_cells")["results"]
    assert "| test accuracy |" in results
    for model, group in sweep.runs.groupby("model"):
        scores = [sweep.metrics[d]["test"]["accuracy"] for d in group["run_dir"]]
        row = sweep.table[sweep.table["model"] == model].iloc[0]
        assert row["test_metric_mean"] == pytest.approx(statistics.mean(scores), abs=1e-12)
        assert row["test_metric_std"] == pytest.approx(statistics.stdev(scores), abs=1e-12)
        # and it is not the validation number
        assert row["test_metric_mean"] != pytest.approx(row["best_metric_mean"], abs=1e-3)
    assert "test" not in computed("long_adding")["results"]
    assert "test_metric" not in to_display(load_sweep(FIXTURES / "long_adding").table).columns
    assert "test_metric" in to_display(sweep.table).columns


def test_the_stateful_claims_are_the_kept_runs() -> None:
    """README and presets.md: on chargen_cells the GRU reaches 2.17 bits per character on
    validation windowed and 2.16 stateful, and stateful ties windowed for every cell (each
    scored its own way): recomputed from the kept runs, so a re-run that changes either fails
    here."""
    sweep = load_sweep(FIXTURES / "chargen_cells")
    done = sweep.runs[sweep.runs["status"] == "completed"]
    gru = done[done["model"] == "gru"].groupby(done["task.stateful"].map(str))["best_metric"]
    assert {mode: f"{v:.2f}" for mode, v in gru.mean().items()} == {"False": "2.17", "True": "2.16"}
    pairs = compared_pairs(sweep, "task.stateful")
    assert sorted(pairs["setting"]) == ["model=gru", "model=lstm", "model=rnn"]
    assert set(pairs["verdict"]) == {"tie"}
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "the GRU reaches 2.17 bits per character on validation windowed and 2.16" in readme
    assert "stateful ties windowed for every cell" in readme
    presets = " ".join((ROOT / "docs" / "presets.md").read_text().split())
    assert "the stateful runs tie the windowed ones for every cell" in presets
