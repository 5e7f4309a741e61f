"""seqbench-report on real sweeps: a self-contained page whose table equals seqbench-compare's
aggregation and the runs' own metrics.json, with every configuration's figures, the failed and
diverged jobs, the commands; Markdown with its PNGs; bad input refused with exit status 2."""

from __future__ import annotations

import base64
import html.parser
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from seqbench.compare import aggregate, find_runs, load_runs
from seqbench.report.cli import main
from tests.conftest import ROOT, SMALL, run_small, seqbench_cli

PNG = b"\x89PNG\r\n\x1a\n"


def run_sweep(root: Path, name: str, *args: str) -> Path:
    sweep_dir = root / name
    result = seqbench_cli(
        "-m",
        *SMALL,
        "train.steps=9",
        "log.tensorboard=false",
        *args,
        f"hydra.sweep.dir={sweep_dir}",
        cwd=root,
    )
    assert result.returncode == 0, result.stderr
    return sweep_dir


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory) -> tuple[Path, Path]:
    """A plain sweep (two cells, two seeds) and one with a completed, a diverged (lr 1e30, no
    clipping) and two failed jobs (hidden size 0)."""
    root = tmp_path_factory.mktemp("sweeps")
    # lr 0.05: a noisy curve, so that the final and the best metric differ (a table that
    # swapped them would not pass)
    good = run_sweep(root, "cells", "model=rnn,lstm", "seed=0,1", "optimizer.lr=0.05")
    bad = run_sweep(
        root,
        "bad",
        "optimizer=sgd",
        "optimizer.lr=0.01,1e30",
        "train.clip.threshold=null",
        "model.hidden_size=8,0",
    )
    return good, bad


@pytest.fixture(scope="module")
def page(sweeps, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("report") / "report.html"
    assert main([str(sweeps[0]), str(sweeps[1]), "-o", str(out)]) == 0
    return out.read_text()


class PageParser(html.parser.HTMLParser):
    """Every element's attributes, and the comparison tables' numeric cells per row."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict]] = []
        self.tables: list[dict[str, dict[str, dict]]] = []  # per results table: config -> col
        self.row: dict | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attrs = dict(attrs)
        self.elements.append((tag, attrs))
        if tag == "table" and "results" in (attrs.get("class") or ""):
            self.tables.append({})
            self.in_results = True
        elif tag == "table":
            self.in_results = False
        elif tag == "tr" and "data-config" in attrs and getattr(self, "in_results", False):
            self.row = self.tables[-1].setdefault(attrs["data-config"], {})
        elif tag == "td" and self.row is not None and "data-col" in attrs:
            self.row[attrs["data-col"]] = attrs


def parse(page: str) -> PageParser:
    parser = PageParser()
    parser.feed(page)
    return parser


def test_the_page_is_self_contained(page: str) -> None:
    parser = parse(page)
    images = [a["src"] for tag, a in parser.elements if tag == "img"]
    assert len(images) >= 10
    for src in images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG)
    links = [v for _, a in parser.elements for k, v in a.items() if k in ("src", "href") and v]
    assert not [v for v in links if re.match(r"(https?:)?//", v)]
    assert not [tag for tag, _ in parser.elements if tag in ("script", "link", "iframe")]
    assert "url(" not in page and "@import" not in page


def reference_numbers(sweep_dir: Path) -> dict[str, dict]:
    """Per model, straight from each run's metrics.json: counts, and mean/std over the
    completed seeds of the final and best metric and the baseline."""
    by_model: dict[str, list[dict]] = {}
    for path in sweep_dir.glob("*/metrics.json"):
        metrics = json.loads(path.read_text())
        by_model.setdefault(metrics["model"], []).append(metrics)
    out = {}
    for model, runs in by_model.items():
        done = [m for m in runs if m["status"] == "completed"]
        numbers = {"completed": len(done), "runs": len(runs)}
        for key in ("final_metric", "best_metric", "baseline"):
            values = [m[key] for m in done]
            numbers[key] = (statistics.mean(values), statistics.stdev(values))
        out[model] = numbers
    return out


def test_the_table_equals_compare_and_the_runs_metrics(page: str, sweeps) -> None:
    table = parse(page).tables[0]
    assert sorted(table) == ["lstm", "rnn"]
    expected = aggregate(load_runs(find_runs([sweeps[0]]))).set_index("model")
    reference = reference_numbers(sweeps[0])
    for model, cells in table.items():
        assert int(cells["completed"]["data-count"]) == expected.loc[model, "completed"] == 2
        assert int(cells["completed"]["data-of"]) == reference[model]["runs"] == 2
        for col in (
            "final_metric",
            "best_metric",
            "baseline",
            "solved_step",
            "wall_time_s",
            "num_parameters",
        ):
            for stat in ("mean", "std"):
                ours, theirs = (
                    float(cells[col][f"data-{stat}"]),
                    expected.loc[model, f"{col}_{stat}"],
                )
                assert ours == theirs or (ours != ours and theirs != theirs), (model, col, stat)
        assert reference[model]["final_metric"] != reference[model]["best_metric"]
        for col in ("final_metric", "best_metric"):
            mean, std = reference[model][col]
            assert float(cells[col]["data-mean"]) == pytest.approx(mean, rel=1e-12)
            assert float(cells[col]["data-std"]) == pytest.approx(std, rel=1e-12)
        assert float(cells["baseline"]["data-mean"]) == pytest.approx(1 / 6, rel=1e-12)
    # and the comparison.csv the sweep itself wrote when it ended
    written = pd.read_csv(sweeps[0] / "comparison.csv").set_index("model")
    for model, cells in table.items():
        for col in ("final_metric_mean", "final_metric_std", "best_metric_mean"):
            value = float(cells[col.rsplit("_", 1)[0]][f"data-{col.rsplit('_', 1)[1]}"])
            assert value == pytest.approx(written.loc[model, col], rel=1e-12)


def test_every_run_is_listed(page: str, sweeps) -> None:
    for index, sweep_dir in enumerate(sweeps, 1):
        section = page[page.index(f'id="sweep-{index}"') :]
        listed = section[section.index("<summary>All ") :]
        jobs = sorted(p.parent.name for p in sweep_dir.glob("*/metrics.json"))
        assert len(jobs) == 4
        for job in jobs:
            assert f"<td><code>{job}</code></td>" in listed.split("</details>")[0]


def test_every_configuration_has_its_figures(page: str) -> None:
    ids = {a.get("id") for tag, a in parse(page).elements if tag == "figure"}
    sweep_wide = ("learning_curves", "grad_norm_vs_t", "memory_horizon")
    assert {f"fig-s1-{name}" for name in sweep_wide} <= ids
    assert {"fig-s1-heatmap-rnn", "fig-s1-heatmap-lstm", "fig-s1-gates-lstm"} <= ids
    assert "fig-s1-gates-rnn" not in ids  # an ungated cell has no gates
    # the second sweep: one completed configuration, its figures; the others have none
    assert {f"fig-s2-{name}" for name in sweep_wide} <= ids
    heatmaps = [i for i in ids if i and i.startswith("fig-s2-heatmap-")]
    assert heatmaps == ["fig-s2-heatmap-lstm-model.hidden-size-8-optimizer.lr-0.01"]


def test_failed_and_diverged_jobs_are_listed_with_their_error(page: str, sweeps) -> None:
    table = parse(page).tables[1]
    assert sum(int(c["completed"]["data-count"]) for c in table.values()) == 1
    assert sum(int(c["completed"]["data-of"]) for c in table.values()) == 4
    section = page[page.index('id="sweep-2"') :]
    listed = section[section.index("Runs that did not complete") : section.index("<details>")]
    assert listed.count("failed: ConfigError: model.hidden_size=0 is not allowed") == 2
    assert listed.count("diverged at step 1: the training loss became non-finite") == 1
    for job in ("1", "2", "3"):
        assert f"<code>{job}</code>" in listed


def test_the_commands_and_configs_appear(page: str, sweeps) -> None:
    text = html.unescape(page)
    for sweep_dir in sweeps:
        multirun = yaml.safe_load((sweep_dir / "multirun.yaml").read_text())["hydra"]
        typed = ["seqbench -m", *multirun["overrides"]["task"], f"hydra.sweep.dir={sweep_dir}"]
        assert f"<code>{' '.join(typed)}</code>" in text
        for overrides in sweep_dir.glob("*/.hydra/overrides.yaml"):
            assert "seqbench " + " ".join(yaml.safe_load(overrides.read_text())) in text
    config = (sweeps[0] / "0" / ".hydra" / "config.yaml").read_text()
    assert config.strip() in text
    assert "the runs differ only in <code>model.cell</code>, <code>seed</code>." in text


def test_markdown_writes_the_pngs_it_links(sweeps, tmp_path: Path) -> None:
    out = tmp_path / "report.md"
    (tmp_path / "report_files").mkdir()
    (tmp_path / "report_files" / "s9-from-an-earlier-report.png").write_bytes(PNG)
    (tmp_path / "report_files" / "mine.png").write_bytes(PNG)  # not the report's: kept
    assert main([str(sweeps[0]), "-o", str(out)]) == 0
    text = out.read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(links) >= 6 and all(link.startswith("report_files/") for link in links)
    for link in links:
        assert (tmp_path / link).read_bytes().startswith(PNG)
    assert sorted(p.name for p in (tmp_path / "report_files").iterdir()) == sorted(
        [Path(link).name for link in links] + ["mine.png"]
    )
    assert re.search(r"^\| lstm \| 2/2 \| 0 / 0 \| ", text, re.M)


def test_the_command_runs_as_a_process(sweeps, tmp_path: Path) -> None:
    if "MUTANT_UNDER_TEST" in os.environ:
        pytest.skip("a real process imports the unmutated package")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "seqbench.report", str(sweeps[1]), "-o", "page.html"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "wrote page.html (1 sweep, 4 runs)" in result.stdout
    assert 'id="sweep-1"' in (tmp_path / "page.html").read_text()


@pytest.mark.parametrize(
    "case,message",
    [
        ("missing", "does not exist. Give a sweep directory"),
        ("empty", "is not a seqbench sweep or run: no metrics.json"),
        ("file", "is not a directory"),
        ("no_parent", "the directory"),
        ("output_is_dir", "is a directory; give a file name"),
        (
            "vs_unknown",
            "--vs 'task.seq_len' is not a key that varies in the sweeps; the keys "
            "that vary: model.",
        ),
        ("no_history", "history.csv (No such file or directory). A run directory holds"),
        ("corrupt", "metrics.json cannot be read (Expecting"),
    ],
)
def test_bad_input_exits_2_with_one_message(case, message, sweeps, tmp_path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    out = tmp_path / "report.html"
    out.write_text("an earlier report")
    path, output, extra = str(sweeps[0]), str(out), []
    if case in ("missing", "empty", "file"):
        path = str(tmp_path / case)
    elif case == "no_parent":
        output = str(tmp_path / "file" / "report.html")
    elif case == "vs_unknown":
        extra = ["--vs", "task.seq_len"]  # a key of the table that does not vary
    elif case == "no_history":  # a run directory that lost a file: named, not blamed on -o
        path = str(tmp_path / "cells")
        shutil.copytree(sweeps[0], path)
        next(Path(path).glob("*/history.csv")).unlink()
    elif case == "corrupt":  # a metrics.json cut short: the file named (seqbench.rundirs)
        path = str(tmp_path / "cells")
        shutil.copytree(sweeps[0], path)
        next(Path(path).glob("*/metrics.json")).write_text('{"status": ')
    else:
        output = str(tmp_path)
    assert main([path, "-o", output, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("seqbench-report: error: ") and message in err
    assert "Traceback" not in err and err.count("\n") == 1
    assert out.read_text() == "an earlier report"


def test_a_generated_sample_is_kept_in_metrics_and_shown(tmp_path: Path) -> None:
    """chargen's sample after the last validation lands in metrics.json (with its step), and
    the report prints it; a task without texts writes no "texts" key."""
    chargen = ["hardware=cpu", "task=chargen", "task.corpus=hamlet", "task.seq_len=16",
               "task.sample_len=25", "train.steps=5", "train.eval_every=2", "train.batch_size=4",
               "model.hidden_size=8", "log.tensorboard=false", "diagnostics.every=0"]  # fmt: skip
    metrics = run_small(tmp_path / "run", base=chargen)
    sample = metrics["texts"]["sample"]
    assert sample["step"] == 5  # the final validation (5 is not a multiple of eval_every)
    assert sample["text"].startswith("The ") and len(sample["text"]) == 4 + 25
    out = tmp_path / "report.md"
    assert main([str(tmp_path / "run"), "-o", str(out)]) == 0
    page = out.read_text()
    assert "### Samples" in page and f"```text\n{sample['text']}\n```" in page
    assert "texts" not in run_small(tmp_path / "adding")


def test_paths_are_relative_to_the_report_or_named(sweeps, tmp_path: Path) -> None:
    """A report written elsewhere names the sweep directory by its name and where the command
    was typed relative to the sweep directory: no path of this machine outside the command."""
    out = tmp_path / "elsewhere" / "report.md"
    out.parent.mkdir()
    assert main([str(sweeps[0]), "-o", str(out)]) == 0
    text = out.read_text()
    assert f"Directory `{sweeps[0].name}`:" in text
    outside_code = re.sub(r"```.*?```", "", text, flags=re.S)
    assert str(sweeps[0].parent) not in outside_code
    inside = sweeps[0] / "report.md"  # written in the sweep directory itself: "."
    assert main([str(sweeps[0]), "-o", str(inside)]) == 0
    assert "Directory `.`:" in inside.read_text()
    inside.unlink()
    shutil.rmtree(sweeps[0] / "report_files", ignore_errors=True)


def test_who_wins_gives_each_setting_its_own_paragraph() -> None:
    """A sweep over a second key (the kept adding_lengths preset: T = 25, 50, 100) gets one
    verdict paragraph per setting, each starting with its setting, then the pairs' table."""
    from seqbench.report.collect import load_sweep
    from seqbench.report.content import _verdict_blocks
    from seqbench.report.render import to_markdown
    from tests.conftest import ROOT

    sweep = load_sweep(ROOT / "tests" / "fixtures" / "presets" / "adding_lengths")
    text = to_markdown(_verdict_blocks(sweep), Path("."))[0]
    section = text.split("### Who wins\n\n", 1)[1].split("\n\n| setting")[0]
    assert [p.split(":")[0] for p in section.split("\n\n")] == [
        "seq_len=25", "seq_len=50", "seq_len=100"]  # fmt: skip


def test_vs_compares_another_key_per_model() -> None:
    """`--vs KEY` adds a Who wins section for KEY's values (named key=value), one paragraph per
    model."""
    from seqbench.report.collect import load_sweep
    from seqbench.report.content import _verdict_blocks
    from seqbench.report.render import to_markdown
    from tests.conftest import ROOT

    sweep = load_sweep(ROOT / "tests" / "fixtures" / "presets" / "adding_lengths")
    text = to_markdown(_verdict_blocks(sweep, "task.seq_len"), Path("."))[0]
    section = text.split("### Who wins: seq_len\n\n", 1)[1].split("\n\n| setting")[0]
    paragraphs = section.split("\n\n")
    assert [p.split(":")[0] for p in paragraphs] == ["model=gru", "model=lstm", "model=rnn"]
    # the tanh RNN's MSE grows with T: 25 beats 50 beats 100 (the kept runs' numbers)
    assert paragraphs[2].startswith("model=rnn: seq_len=25 better than seq_len=50")
    assert "| model=rnn | seq_len=25 | seq_len=100 |" in text
