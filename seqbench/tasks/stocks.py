"""Next-day log return of a stock from the previous `seq_len` daily log returns.

Data: bokeh_sampledata 2026.1 (BSD-3-Clause) ships `stocks.csv.gz` (Quandl WIKI Prices, public
domain): daily Open, High, Low, Close, Volume and Adj Close of AAPL, IBM and MSFT
(2000-03-01..2013-03-01, 3,270 trading days each), GOOG (2004-08-19.., 2,148 days) and FB (196
days). `Adj Close` is used because Close is not adjusted for splits (AAPL's 2:1 splits of
2000-06-21 and 2005-02-28 are -45% and -50% days in Close; its one real crash, -52% on
2000-09-29, is in both).

With prices p_0..p_{N-1} (one ticker, sorted by date), the daily log return is
r_i = log(p_i / p_{i-1}). An example "on day t" has the input window r_{t-L+1}..r_t (L =
`seq_len`, one feature per step, standardized) and the target log(p_{t+h} / p_t), the log return
over the next h = `horizon` days, read from the model output at the last step. Example with
L=3, h=1 (values before standardization):

    date     2000-03-02  2000-03-03  2000-03-06 | 2000-03-07
    x        -0.0659     +0.0480     -0.0182    | y = -0.0227

Splits are chronological, by the date of the target: the first days train, the next
`val_fraction` of the days validate, the last `test_fraction` test; every target of a split falls
inside its days (inputs may reach back into the previous split: the past is known). The scalers
(mean and standard deviation of the daily returns, and of the targets) are fitted on the training
split only; the loss is the MSE of the standardized target, the metrics are in log-return units.

With `stateful=true` the model reads the series as a stream instead (`seqbench.tasks.streams`):
the training days (each with a defined return and a target in the training split) are laid
out as `train.batch_size` contiguous streams, each step takes the next `seq_len` days of every
stream from the state the stream's previous window ended in, and the target is read at every
step (the MSE over the window). Validation and test read one stream, from the series' first
return to the split's last day, window by window with the state carried, and score the
predictions on the split's days: the same targets as the windowed mode. Example, seq_len=3, 2
streams of 6 training days: stream 0 reads days 1-3 then 4-6, stream 1 days 7-9 then 10-12,
each window predicting the next day's return on each of its days.

Metrics: RMSE (the validation metric) and MAE of the predicted return and the accuracy of its
direction (up: > 0), each next to two naive baselines on the same windows: a zero return, and
yesterday's return (the last h-day return, log(p_t / p_{t-h})). `rmse_vs_zero` < 1 means the
model beats the zero baseline; daily returns are close to unpredictable, so expect about 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqbench.errors import ConfigError
from seqbench.tasks.base import (
    Batch,
    Need,
    StreamTaskConfig,
    check_seq_len,
    check_split_fractions,
    last_step_reads,
    last_step_sources,
    make_generator,
)
from seqbench.tasks.data import package_file, read_csv, split_sizes, user_file
from seqbench.tasks.streams import StreamWalk

EVAL_CHUNK = 4096  # windows per forward pass at evaluation
EXPECTED = (
    "a CSV file with a header row, a date column (task.date_column), a price column "
    "(task.value_column) and, for several series in one file, a ticker column "
    "(task.ticker_column, with task.ticker)"
)


@dataclass
class StocksConfig(StreamTaskConfig):
    name: str = "stocks"
    seq_len: int = 30  # trading days of log returns per input window (about six weeks)
    path: str | None = None  # a CSV file; null = the packaged daily prices (bokeh_sampledata)
    ticker: str | None = "AAPL"  # rows whose ticker_column equals this; null = one series
    ticker_column: str = "Ticker"  # the column that names each row's series (with `ticker`)
    date_column: str = "Date"  # the rows are sorted by it (any format pandas parses)
    value_column: str = "Adj Close"  # split-adjusted; Close is not
    horizon: int = 1  # days ahead: the target is log(p[t + horizon] / p[t])
    val_fraction: float = 0.15  # of the days, chronologically after the training days
    test_fraction: float = 0.15  # the last days


def load_prices(
    path: str | None, ticker: str | None, ticker_column: str, date_column: str, value_column: str
) -> tuple[pd.Series, str]:
    """One price series indexed by date (ascending) and a description of its source."""
    if path is None:
        file = package_file(
            "bokeh_sampledata", "2026.1", "bokeh_sampledata/_data/stocks.csv.gz", "daily prices"
        )
        source = "bokeh_sampledata==2026.1: stocks.csv.gz"
    else:
        file = user_file(path, EXPECTED)
        source = str(file)
    columns = {"task.ticker_column": ticker_column} if ticker is not None else {}
    columns |= {"task.date_column": date_column, "task.value_column": value_column}
    hint = {"task.ticker_column": ", or task.ticker=null if the file holds a single series"}
    frame = read_csv(file, columns, EXPECTED, hint)
    if ticker is not None:
        tickers = sorted(frame[ticker_column].astype(str).unique())
        if ticker not in tickers:
            raise ConfigError(
                f"task.ticker={ticker!r} does not occur in column {ticker_column!r} of {file}; "
                f"choose one of {tickers[:30]}, or task.ticker=null if the file is one series."
            )
        frame = frame[frame[ticker_column].astype(str) == ticker]
    # format="mixed": each value parsed on its own, as pandas falls back to anyway when it cannot
    # infer one format (it would also print a UserWarning before our message)
    dates = pd.to_datetime(frame[date_column], errors="coerce", format="mixed")
    values = pd.to_numeric(frame[value_column], errors="coerce")
    for key, column, parsed, allowed in (
        ("task.date_column", date_column, dates, "dates such as 2013-03-01"),
        ("task.value_column", value_column, values, "numbers"),
    ):
        bad = parsed.isna()
        if bad.any():
            raise ConfigError(
                f"{key}={column!r} of {file} has {int(bad.sum())} value(s) that are not {allowed} "
                f"(first: {frame[column][bad].iloc[0]!r}); fix the file or choose another column."
            )
    if (values <= 0).any():
        raise ConfigError(
            f"task.value_column={value_column!r} of {file} has prices <= 0; log returns need "
            "positive prices."
        )
    if dates.duplicated().any():
        raise ConfigError(
            f"task.date_column={date_column!r} of {file} repeats the date "
            f"{dates[dates.duplicated()].iloc[0].date()}; for a file holding several series, "
            "set task.ticker_column= and task.ticker=."
        )
    return pd.Series(values.to_numpy(float), index=dates.to_numpy()).sort_index(), source


class StocksTask:
    name = "stocks"
    schema = StocksConfig
    bidirectional_refusal = None  # the window holds only past days; the target lies after it
    input_size = 1
    vocab_size = None
    output_size = 1
    metric = "rmse"
    mode = "min"
    baseline_name = "predict a zero return"
    splits = ("val", "test")

    def __init__(
        self,
        device: torch.device,
        seed: int,
        seq_len: int,
        path: str | None,
        ticker: str | None,
        ticker_column: str,
        date_column: str,
        value_column: str,
        horizon: int,
        val_fraction: float,
        test_fraction: float,
        stateful: bool = False,
    ) -> None:
        self.seq_len, self.horizon = seq_len, horizon
        prices, source = load_prices(path, ticker, ticker_column, date_column, value_column)
        log_price = np.log(prices.to_numpy())
        returns = np.diff(log_price, prepend=np.nan)  # returns[i] = r_i; returns[0] undefined
        n_train, n_val, _ = split_sizes(len(prices), val_fraction, test_fraction)
        day = np.arange(seq_len, len(prices) - horizon)  # decision days t with a full window
        target_day = day + horizon
        split_of = {
            "train": target_day < n_train,
            "val": (target_day >= n_train) & (target_day < n_train + n_val),
            "test": target_day >= n_train + n_val,
        }
        counts = {split: int(mask.sum()) for split, mask in split_of.items()}
        if min(counts.values()) < 1:
            raise ConfigError(
                f"{len(prices)} days of {ticker or source} are too few for task.seq_len="
                f"{seq_len} and task.horizon={horizon} with task.val_fraction={val_fraction} "
                f"and task.test_fraction={test_fraction} (windows per split: {counts}); use a "
                "shorter seq_len or a longer series."
            )
        targets = log_price[target_day] - log_price[day]
        yesterday = log_price[day] - log_price[day - horizon]
        train_returns = returns[1:n_train]  # every daily return observed before the val days
        self.input_mean, self.input_std = float(train_returns.mean()), float(train_returns.std())
        train_targets = targets[split_of["train"]]
        self.target_mean, self.target_std = float(train_targets.mean()), float(train_targets.std())

        scaled = torch.tensor((returns - self.input_mean) / self.input_std, dtype=torch.float32)
        self.returns = scaled.to(device)  # (N,), standardized; index 0 is NaN and never read
        self.offsets = torch.arange(-seq_len + 1, 1, device=device)  # window = t + offsets
        self.days = {s: torch.as_tensor(day[m], device=device) for s, m in split_of.items()}
        self.targets = {
            s: torch.as_tensor(targets[m], dtype=torch.float32, device=device)
            for s, m in split_of.items()
        }
        self.yesterday = {
            s: torch.as_tensor(yesterday[m], dtype=torch.float32, device=device)
            for s, m in split_of.items()
        }
        self.dates = {s: prices.index[target_day[m]] for s, m in split_of.items()}
        self.generator = make_generator(device, seed)
        self.baseline = self.naive_metrics("val")["rmse_zero"]
        self.info: dict[str, Any] = {
            "source": source,
            "ticker": ticker,
            "days": len(prices),
            "first_date": str(prices.index[0].date()),
            "last_date": str(prices.index[-1].date()),
            "split_sizes": counts,
            "split_target_dates": {
                s: [str(d[0].date()), str(d[-1].date())] for s, d in self.dates.items()
            },
            "input_scaler": {"mean": self.input_mean, "std": self.input_std},
            "target_scaler": {"mean": self.target_mean, "std": self.target_std},
            "baseline_test": self.naive_metrics("test"),
            "stateful": stateful,
        }
        self.stream = None
        if stateful:  # every day from the first return whose target is a training day
            self.stream_days = torch.arange(1, n_train - horizon, device=device)
            self.day_targets = torch.as_tensor(
                log_price[horizon:] - log_price[:-horizon], dtype=torch.float32, device=device
            )  # (N - horizon,): the target of each day
            self.stream = StreamWalk(len(self.stream_days), seq_len, "trading days", self.info)

    @classmethod
    def check(cls, cfg: Any, need: Need) -> None:
        check_seq_len(cfg, need)
        check_split_fractions(cfg, need)
        need(cfg.horizon >= 1, "task.horizon", "a positive number of days")

    def window(self, days: Tensor) -> Tensor:
        """Standardized return windows (B, L, 1) ending on `days` (B,)."""
        return self.returns[days[:, None] + self.offsets].unsqueeze(-1)

    def sample(self, batch_size: int) -> Batch:
        if self.stream is not None:  # the next window of every stream, from its carried state
            days = self.stream_days[self.stream.next(batch_size, self.returns.device)]  # (B, T)
            return Batch(self.returns[days].unsqueeze(-1), self.day_targets[days],
                         state=self.stream.state, carry=self.stream.carry)  # fmt: skip
        train = self.days["train"]
        pick = torch.randint(
            0, len(train), (batch_size,), generator=self.generator, device=train.device
        )
        return Batch(self.window(train[pick]), self.targets["train"][pick])

    def loss(self, output: Tensor, batch: Batch) -> Tensor:
        if self.stream is not None:  # a target on every day of the window
            return F.mse_loss(output[..., 0], (batch.y - self.target_mean) / self.target_std)
        return F.mse_loss(output[:, -1, 0], (batch.y - self.target_mean) / self.target_std)

    def sources(self, batch: Batch) -> Tensor:
        if self.stream is not None:  # every day of a stream's window is read
            return torch.ones(batch.x.shape[:2], dtype=torch.bool, device=batch.x.device)
        return last_step_sources(batch)  # the next return is read at the last day

    def reads(self, batch: Batch) -> Tensor | None:
        return None if self.stream is not None else last_step_reads(batch)

    def predict(self, model: nn.Module, split: str) -> Tensor:
        """Predicted log returns (N,) for every window of `split`, in log-return units."""
        days = self.days[split]
        if self.stream is not None:  # one stream from day 1 to the split's last day
            series = self.returns[1 : int(days[-1]) + 1].view(1, -1, 1)
            state, outputs = None, []
            for start in range(0, series.shape[1], self.seq_len):
                window = series[:, start : start + self.seq_len]
                output, _, state = model(window, state=state, return_state=True)
                outputs.append(output[0, :, 0])
            return torch.cat(outputs)[days - 1] * self.target_std + self.target_mean
        scaled = [
            model(self.window(days[start : start + EVAL_CHUNK]))[0][:, -1, 0]
            for start in range(0, len(days), EVAL_CHUNK)
        ]
        return torch.cat(scaled) * self.target_std + self.target_mean

    def evaluate(self, model: nn.Module, split: str = "val") -> dict[str, float]:
        predicted = self.predict(model, split)
        target = self.targets[split]
        naive = self.naive_metrics(split)
        rmse = (predicted - target).square().mean().sqrt().item()
        return {
            "rmse": rmse,
            "mae": (predicted - target).abs().mean().item(),
            "direction_accuracy": ((predicted > 0) == (target > 0)).float().mean().item(),
            **naive,
            "rmse_vs_zero": rmse / naive["rmse_zero"],
            "rmse_vs_yesterday": rmse / naive["rmse_yesterday"],
            "beats_zero": float(rmse < naive["rmse_zero"]),
            "beats_yesterday": float(rmse < naive["rmse_yesterday"]),
        }

    def solved(self, metrics: dict[str, float]) -> bool:
        return metrics["rmse"] < metrics["rmse_zero"]  # beats predicting no change at all

    def report(self, model: nn.Module) -> dict[str, str]:
        return {}

    def naive_metrics(self, split: str) -> dict[str, float]:
        """The naive baselines on the same windows: zero return, yesterday's return, always up."""
        target, yesterday = self.targets[split], self.yesterday[split]
        up = target > 0
        return {
            "rmse_zero": target.square().mean().sqrt().item(),
            "mae_zero": target.abs().mean().item(),
            "rmse_yesterday": (yesterday - target).square().mean().sqrt().item(),
            "mae_yesterday": (yesterday - target).abs().mean().item(),
            "direction_accuracy_up": up.float().mean().item(),
            "direction_accuracy_yesterday": ((yesterday > 0) == up).float().mean().item(),
        }


TASK = StocksTask
