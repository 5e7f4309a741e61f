"""Promises of docs/sweeps.md and docs/getting-started.md about sweeps and their tables, each
checked where no other test held it (docs/promises.md names them): where a sweep goes without
`hydra.sweep.dir` and everything it ends with (lag_profile.png and comparison_pairs.csv
included), the verdict lines under the terminal table, `seqbench-compare --vs` and its pairs,
the rules of which key is compared, the joblib launcher's thread share, and the pictures' bands
and baseline. In-process and small: seconds each."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import SMALL, seqbench_main
from tests.test_effects_units import fake_run


def test_a_sweep_goes_to_multirun_and_ends_with_its_tables_pictures_and_verdicts(tmp_path):
    """getting-started.md: a sweep writes every job under `multirun/DATE/TIME/` and ends with a
    comparison table; sweeps.md: the sweep directory then holds comparison.csv/.md (who wins
    under the table), comparison_pairs.csv, lag_profile.png, grad_norm_vs_t.png and
    learning_curves.png, and the terminal prints the table with the verdict lines under it."""
    done = seqbench_main("-m", "model=rnn,gru", "seed=0,1", *SMALL, "log.tensorboard=false",
                         "inference.compare=false", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (sweep_dir,) = tmp_path.glob("multirun/*/*")  # multirun/DATE/TIME
    assert sorted(p.parent.name for p in sweep_dir.glob("*/metrics.json")) == ["0", "1", "2", "3"]
    for name in ("lag_profile.png", "grad_norm_vs_t.png", "learning_curves.png"):
        assert (sweep_dir / name).read_bytes().startswith(b"\x89PNG"), name
    table = pd.read_csv(sweep_dir / "comparison.csv")
    assert sorted(table["model"]) == ["gru", "rnn"] and (table["completed"] == 2).all()
    pairs = pd.read_csv(sweep_dir / "comparison_pairs.csv")
    assert len(pairs) == 1 and set(pairs[["a", "b"]].iloc[0]) == {"gru", "rnn"}
    assert pairs["key"].iloc[0] == "model" and pairs["metric"].iloc[0] == "final_metric"
    markdown = (sweep_dir / "comparison.md").read_text()
    assert markdown.index("| model") < markdown.index("## Who wins")
    header = markdown[markdown.index("## Who wins") :].split("\n| setting")[1].split("\n")[0]
    assert [c.strip() for c in header.split("|")[1:4]] == ["a", "b", "seeds"]
    from seqbench.compare import INTERVALS

    assert INTERVALS in markdown  # sweeps.md, Intervals: the note under every table
    printed = " ".join(done.stdout.split())
    title = printed.index(f"{sweep_dir.relative_to(tmp_path)}: 4 runs")
    verdicts = printed.index("Who wins on the final validation metric")
    assert title < verdicts and "(Bonferroni over 1 pair)" in printed[verdicts:]
    check_the_report(sweep_dir, tmp_path)


def check_the_report(sweep_dir: Path, tmp_path: Path) -> None:
    """sweeps.md, seqbench-report: per sweep, how many runs and when, and each figure's caption
    says what to look at; `--format md` writes Markdown with the PNGs in `<name>_files/`."""
    import datetime
    import re

    from seqbench.report.cli import main

    out = tmp_path / "page.txt"
    assert main([str(sweep_dir), "--format", "md", "-o", str(out)]) == 0
    text = out.read_text()
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    assert re.search(rf": 4 runs \(4 completed\), finished {today} ", text)
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)\n\n\*([^*]+)\*", text)
    assert len(figures) >= 6 and all(len(caption) > 40 for _, caption in figures)
    for path, _ in figures:
        assert path.startswith("page_files/") and (tmp_path / path).read_bytes()[:4] == b"\x89PNG"
    assert len(figures) == len(re.findall(r"!\[", text))  # every picture has its caption
    html = tmp_path / "page.html"
    assert main([str(sweep_dir), "-o", str(html)]) == 0
    page = html.read_text()
    assert page.count("<figure") == len(figures)
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", page, re.S)
    assert len(captions) == len(figures) and all(len(c) > 40 for c in captions)


def test_compare_vs_chooses_the_key_compared_pair_by_pair(tmp_path: Path, capsys) -> None:
    """sweeps.md, seqbench-compare: `--vs KEY` is the key whose values are compared pair by pair
    (default: the model); the verdict lines are printed under the table and the pairs written
    to comparison_pairs.csv beside comparison.csv; an unknown key is one message, status 2."""
    from seqbench.compare import main

    for model in ("rnn", "gru"):
        for lr in ("0.1", "0.01"):
            for seed, value in enumerate((0.1, 0.2, 0.3)):
                final = value * (2 if model == "rnn" else 1) * (3 if lr == "0.1" else 1)
                overrides = [f"model={model}", f"optimizer.lr={lr}", f"seed={seed}"]
                fake_run(
                    tmp_path / "runs" / f"{model}-{lr}-{seed}",
                    overrides,
                    model=model,
                    task="adding",
                    seed=seed,
                    final_metric=final,
                    best_metric=final,
                )
    out = tmp_path / "tables"
    assert main([str(tmp_path / "runs"), "--out", str(out), "--vs", "optimizer.lr"]) == 0
    pairs = pd.read_csv(out / "comparison_pairs.csv")
    assert set(pairs["key"]) == {"optimizer.lr"}
    assert sorted(pairs["setting"]) == ["model=gru", "model=rnn"]  # the model is the setting
    assert all(pairs["a"].astype(str) == "0.01")  # lower is better: 0.01 ranks first
    printed = " ".join(capsys.readouterr().out.split())
    assert "model=gru: 0.01 " in printed and "Who wins on the final validation metric" in printed
    assert main([str(tmp_path / "runs"), "--out", str(out)]) == 0  # default: the model
    assert set(pd.read_csv(out / "comparison_pairs.csv")["key"]) == {"model"}
    capsys.readouterr()
    assert main([str(tmp_path / "runs"), "--out", str(out), "--vs", "nope"]) == 2
    assert "--vs 'nope' is not a key of the table" in capsys.readouterr().err


def runs(values: dict[tuple, list[float]], keys: tuple[str, ...], **extra) -> pd.DataFrame:
    rows = []
    for config, seeds in values.items():
        for seed, value in enumerate(seeds):
            rows.append({**dict(zip(keys, config, strict=True)), "task": "adding", "seed": seed,
                         "status": "completed", "metric": "mse", "mode": "min",
                         "final_metric": value, "test_metric": math.nan, "solved": False,
                         **extra})  # fmt: skip
    return pd.DataFrame(rows)


def test_which_key_is_compared_and_which_runs_count() -> None:
    """sweeps.md, Who wins: without the model varying, the one group key that varies is compared
    (no pairs when several do); only completed runs count; a side with fewer than 2 seeds has
    no verdict and its line says `a ? b (too few seeds)`."""
    from seqbench.verdicts import pair_frame, verdict_lines

    one = runs({("lstm", 0.1): [1, 2, 3], ("lstm", 0.01): [4, 5, 6]}, ("model", "optimizer.lr"))
    pairs = pair_frame(one, ["model", "task", "optimizer.lr"])
    assert pairs["key"].tolist() == ["optimizer.lr"]
    grid = {("lstm", lr, hidden): [1 + hidden, 2 + lr] for lr in (0.1, 0.01) for hidden in (8, 16)}
    two = runs(grid, ("model", "optimizer.lr", "model.hidden_size"))  # two keys vary, not the model
    assert pair_frame(two, ["model", "task", "optimizer.lr", "model.hidden_size"]).empty
    mixed = runs({("rnn",): [1, 2, 3], ("gru",): [4, 5, 6]}, ("model",))
    mixed.loc[2, ["status", "final_metric"]] = ["diverged", 1e9]  # not counted
    mixed.loc[5, ["status", "final_metric"]] = ["failed", -1e9]
    pairs = pair_frame(mixed, ["model", "task"])
    assert (pairs["n_a"].iloc[0], pairs["n_b"].iloc[0]) == (2, 2)
    assert (pairs["mean_a"].iloc[0], pairs["mean_b"].iloc[0]) == (1.5, 4.5)
    lonely = runs({("rnn",): [1], ("gru",): [4, 5, 6]}, ("model",))
    lines = verdict_lines(pair_frame(lonely, ["model", "task"]))
    assert lines[0] == "rnn ? gru (too few seeds)"


def test_joblib_jobs_share_the_cores_unless_num_threads_is_set(monkeypatch) -> None:
    """sweeps.md: with `hydra/launcher=joblib hydra.launcher.n_jobs=N` each job gets cores/N
    torch threads (unless hardware.num_threads is set); without n_jobs (joblib's -1), one job
    per core, one thread each."""
    from seqbench import cli

    monkeypatch.setattr(cli.os, "cpu_count", lambda: 8)
    set_threads: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", set_threads.append)
    joblib = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"

    def threads(n_jobs, num_threads=0, target=joblib):
        cfg = OmegaConf.create({"hardware": {"num_threads": num_threads}})
        hydra = OmegaConf.create({"launcher": {"_target_": target, "n_jobs": n_jobs}})
        set_threads.clear()
        cli._set_job_threads(cfg, hydra)
        return set_threads[-1] if set_threads else None

    assert threads(2) == 4 and threads(4) == 2 and threads(8) == 1 and threads(16) == 1
    assert threads(-1) == 1  # joblib's default: every core a job
    assert threads(2, num_threads=3) is None  # the user's setting is left alone
    assert threads(2, target="hydra._internal.core_plugins.basic_launcher.BasicLauncher") is None
    composed = compose_joblib()
    assert composed.n_jobs == -1  # what "without n_jobs" means


def compose_joblib():
    from tests.conftest import compose_config

    return compose_config(["hydra/launcher=joblib"], hydra=True).hydra.launcher


def profile_runs(tmp_path: Path) -> tuple[pd.DataFrame, dict]:
    """Two seeds of one configuration with crafted lag_norms.csv and grad_norms.csv files."""
    rows, logs = [], {}
    for seed, shift in enumerate((0.0, -2.0)):
        run_dir = tmp_path / f"run{seed}"
        run_dir.mkdir()
        lags, grads = [], []
        for step, slope in ((0, -1.0), (10, -0.25)):
            for k in range(5):
                value = shift + slope * k
                logs[(seed, step, k)] = value
                lags.append({"step": step, "layer": 0, "lag": k, "norm": 10**value,
                             "log10_norm": value, "pairs": 4})  # fmt: skip
                lags.append({"step": step, "layer": 1, "lag": k, "norm": 1.0, "log10_norm": 0.0,
                             "pairs": 4})  # fmt: skip
                grads.append({"step": step, "layer": 0, "t": 5 - k, "norm": 10**value,
                              "positions": 4})  # fmt: skip
        pd.DataFrame(lags).to_csv(run_dir / "lag_norms.csv", index=False)
        pd.DataFrame(grads).to_csv(run_dir / "grad_norms.csv", index=False)
        rows.append({"model": "gru", "task": "adding", "seed": seed, "status": "completed",
                     "run_dir": str(run_dir)})  # fmt: skip
    return pd.DataFrame(rows), logs


def test_the_sweep_gradient_pictures_are_layer_0_at_init_and_end_over_seeds(tmp_path) -> None:
    """sweeps.md: lag_profile.png is the gradient by lag of layer 0 per configuration at init and
    at the end (left, right), the mean over seeds with a min-max band; grad_norm_vs_t.png the
    same for log10 ||dL/dh_t|| against t."""
    from matplotlib.collections import PolyCollection

    from seqbench.plots import grad_norm_figure, lag_figure

    frame, logs = profile_runs(tmp_path)
    for figure, across in ((lag_figure(frame, ["model"]), "lag"),
                           (grad_norm_figure(frame, ["model"]), "t")):  # fmt: skip
        init, end = figure.axes[:2]
        assert "initialisation" in init.get_title() and "end" in end.get_title()
        for ax, step in ((init, 0), (end, 10)):
            x, y = ax.get_lines()[0].get_data()
            lags = np.arange(5) if across == "lag" else 5 - np.asarray(x)
            order = [int(k) for k in lags]
            mean = [np.mean([logs[(s, step, k)] for s in (0, 1)]) for k in order]
            np.testing.assert_allclose(y, mean)  # layer 0 only: layer 1 is flat at 0
            (band,) = [c for c in ax.collections if isinstance(c, PolyCollection)]
            ys = band.get_paths()[0].vertices[:, 1]
            lows = [min(logs[(s, step, k)] for s in (0, 1)) for k in order]
            highs = [max(logs[(s, step, k)] for s in (0, 1)) for k in order]
            assert ys.min() == pytest.approx(min(lows)) and ys.max() == pytest.approx(max(highs))


def test_the_learning_curves_draw_the_baseline_dotted(tmp_path: Path) -> None:
    """sweeps.md: learning_curves.png draws the baseline dotted."""
    from seqbench.plots import learning_curve_figure
    from tests.test_plots import STEPS, fake_runs

    decay = 0.17 * np.exp(-STEPS / 150)
    frame = fake_runs(tmp_path, "mse", "min", {"gru": [decay, decay * 2]}, baseline=1 / 6)
    ax = learning_curve_figure(frame, ["model"]).axes[0]
    dotted = [line for line in ax.get_lines() if line.get_linestyle() == ":"]
    assert len(dotted) == 1 and np.allclose(dotted[0].get_ydata(), 1 / 6)


def test_a_failed_job_is_counted_and_its_error_kept(tmp_path: Path) -> None:
    """sweeps.md, Failures: a job that raises is recorded with its status and error in its
    metrics.json and the sweep goes on (exit 0); the table counts it."""
    done = seqbench_main("-m", *SMALL, "model.hidden_size=8,0", "log.tensorboard=false",
                         f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    statuses = {p.parent.name: json.loads(p.read_text())
                for p in (tmp_path / "sweep").glob("*/metrics.json")}  # fmt: skip
    assert statuses["0"]["status"] == "completed" and statuses["1"]["status"] == "failed"
    assert "model.hidden_size=0 is not allowed" in statuses["1"]["error"]
    table = pd.read_csv(tmp_path / "sweep" / "comparison.csv")
    assert (table["runs"].sum(), table["failed"].sum(), table["completed"].sum()) == (2, 1, 1)
