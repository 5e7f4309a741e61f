"""Every TensorBoard tag and every result-file column the README promises, read back from the
files (TensorBoard through its own event reader) and checked against where its value comes from:
TensorBoard against history.csv, grad_norms.csv and lag_norms.csv, metrics.json against
history.csv, grad_norms.csv, lag_norms.csv and checkpoint.pt, the comparison table against each
run's own files. Summaries of the gradient norms are recomputed here, independently, from
grad_norms.csv and lag_norms.csv; on the adding problem (one loss term per sequence, at the last
step) the lag profile is the per-timestep norm read backwards, over the square root of the
batch size (RMS over the sequences instead of the norm over all of them)."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import run_small

LR = 0.003  # adam's default rate
# 2 layers, 8 steps, validations at 3, 6 and 8, snapshots at 0, 2, 4, 6 and the end (8), a step
# schedule (the rate changes within the run) and a threshold that clips some steps, not all
RUN = ("model=lstm", "model.num_layers=2", "train.steps=8", "train.eval_every=3", "scheduler=step",
       "scheduler.step_size=3", "scheduler.gamma=0.5", "inference.compare=false")  # fmt: skip


def event_folder(run_dir: Path) -> Path:
    """The one folder of a single run's event files: <run dir>/tb/<the run's name>/."""
    (folder,) = {p.parent for p in (run_dir / "tb").rglob("events.out.tfevents.*")}
    return folder


def read_events(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    guidance = {"scalars": 0, "images": 0, "tensors": 0}
    return EventAccumulator(str(event_folder(run_dir)), size_guidance=guidance).Reload()


def clipping_threshold(tmp: Path) -> float:
    """The median gradient norm of the run's 8 steps, from a first run with no clipping."""
    run_small(tmp / "probe", *RUN, "train.clip.threshold=null", "diagnostics.every=0")
    norms = [e.value for e in read_events(tmp / "probe").Scalars("grad/total_norm")]
    return float(np.median(norms))


def test_one_run_read_back_from_every_file(tmp_path: Path) -> None:
    """One run, every file it writes checked against the others. (One test rather than a
    module fixture shared by four: `make mutate` orders tests by their own duration, and a
    fixture's cost would hide behind a test that looks instant.)"""
    run = make_run(tmp_path)
    check_history(run)
    check_tensorboard_scalars(run)
    check_tensorboard_pictures_and_hparams(run)
    check_metrics_json(run)


def make_run(tmp: Path) -> dict:
    threshold = clipping_threshold(tmp)
    run_dir = tmp / "run"
    metrics = run_small(run_dir, *RUN, "diagnostics.every=2", f"train.clip.threshold={threshold!r}")
    return {
        "dir": run_dir,
        "threshold": threshold,
        "metrics": metrics,
        "history": pd.read_csv(run_dir / "history.csv"),
        "grads": pd.read_csv(run_dir / "grad_norms.csv"),
        "lags": pd.read_csv(run_dir / "lag_norms.csv"),
        "events": read_events(run_dir),
    }


def series(events, tag: str) -> dict[int, float]:
    points = events.Scalars(tag)
    steps = [p.step for p in points]
    assert len(steps) == len(set(steps)), (tag, steps)  # one point per step
    return {p.step: p.value for p in points}


def f32(value: float) -> float:
    """What TensorBoard stores of a float: float32."""
    return float(np.float32(value))


def layer_norms(grads: pd.DataFrame, step: int, layer: int) -> np.ndarray:
    rows = grads[(grads["step"] == step) & (grads["layer"] == layer)].sort_values("t")
    assert rows["t"].tolist() == list(range(1, len(rows) + 1))
    return rows["norm"].to_numpy()


def lag_norms_of(lags: pd.DataFrame, step: int, layer: int) -> np.ndarray:
    rows = lags[(lags["step"] == step) & (lags["layer"] == layer)].sort_values("lag")
    assert rows["lag"].tolist() == list(range(len(rows)))
    assert (rows["pairs"] == 8).all()  # every sequence of the batch reaches every lag
    return rows["norm"].to_numpy()


def summary(norms: np.ndarray, explode_factor: float = 10.0) -> dict:
    """The README's definitions, written out: log10(||dL/dh_1|| / ||dL/dh_T||), the least-squares
    slope of log10 ||dL/dh_t|| per step over the non-zero values, the growth factor per step
    back (10**-slope), the maximum, the flag, and the memory horizon (steps from T back while
    the norm stays >= 1e-3 x ||dL/dh_T||)."""
    logs = np.log10(norms)
    t = np.arange(len(norms), dtype=float)
    slope = ((t - t.mean()) * (logs - logs.mean())).sum() / ((t - t.mean()) ** 2).sum()
    horizon = 0
    while horizon < len(norms) and norms[-1 - horizon] >= 1e-3 * norms[-1]:
        horizon += 1
    return {
        "growth_rate": 10.0**-slope,
        "memory_horizon": horizon,
        "vanishing_ratio": math.log10(norms[0] / norms[-1]),
        "decay_rate": slope,
        "max_norm": norms.max(),
        "exploding": bool(norms.max() > explode_factor * norms[-1]),
        "nonzero": int((norms > 0).sum()),
        "timesteps": len(norms),
    }


def check_history(one_run: dict) -> None:
    history, events = one_run["history"], one_run["events"]
    assert list(history.columns) == ["step", "wall_time", "train_loss", "lr", "val_mse"]
    assert history["step"].tolist() == [3, 6, 8]
    losses = series(events, "train/loss")
    for previous, step, mean in zip([0, 3, 6], history["step"], history["train_loss"], strict=True):
        window = [losses[s] for s in range(previous + 1, step + 1)]
        assert mean == pytest.approx(statistics.fmean(window), rel=1e-6), step
    # the rate after `step` updates: lr * gamma ** (step // step_size)
    assert history["lr"].tolist() == pytest.approx([LR * 0.5 ** (s // 3) for s in (3, 6, 8)])
    assert history["wall_time"].is_monotonic_increasing and history["wall_time"].iloc[0] > 0


def check_tensorboard_scalars(one_run: dict) -> None:
    events, history, grads = one_run["events"], one_run["history"], one_run["grads"]
    metrics = one_run["metrics"]
    scalars = set(events.Tags()["scalars"])
    names = ("vanishing_ratio", "decay_rate", "growth_rate", "memory_horizon", "max_norm",
             "nonzero_steps")  # fmt: skip
    per_layer = {f"grad/{name}/layer{layer}" for layer in (0, 1) for name in names}
    finals = ("best_metric", "final_metric", "end_vanishing_ratio", "diverged")
    hparams = {f"hparams/{name}" for name in finals}
    expected_tags = {"train/loss", "train/lr", "val/mse", "grad/total_norm", "grad/clip_fraction"}
    gates = {f"gates/{gate}_mean/layer{layer}" for gate in ("input", "forget", "output")
             for layer in (0, 1)}  # fmt: skip
    gates |= {f"gates/forget_above_0.95/layer{layer}" for layer in (0, 1)}
    lag_names = ("vanishing_ratio", "growth_rate", "memory_horizon", "exploding")
    by_lag = {f"lag/{name}/layer{layer}" for layer in (0, 1) for name in lag_names}
    assert scalars == expected_tags | per_layer | hparams | gates | by_lag
    # by lag: the README's verdicts over the lags more than half the pairs reach (all, here)
    for layer in (0, 1):
        for step in (0, 2, 4, 6, 8):
            expected = summary(lag_norms_of(one_run["lags"], step, layer)[::-1])
            for name in ("vanishing_ratio", "growth_rate", "memory_horizon"):
                tb = series(events, f"lag/{name}/layer{layer}")
                assert tb[step] == pytest.approx(expected[name], rel=1e-5), (name, step)
            exploding = series(events, f"lag/exploding/layer{layer}")[step]
            assert exploding == float(expected["exploding"])
    # gate means: the mean over t of grad_norms.csv's gate columns, at every diagnostic step
    for gate in ("input", "forget", "output"):
        for layer in (0, 1):
            rows = grads[(grads["layer"] == layer) & grads[f"gate_{gate}"].notna()]
            expected = rows.groupby("step")[f"gate_{gate}"].mean().to_dict()
            assert sorted(expected) == [0, 2, 4, 6, 8]  # every snapshot, the final one too
            tb = series(events, f"gates/{gate}_mean/layer{layer}")
            assert tb == {k: pytest.approx(v, rel=1e-5) for k, v in expected.items()}

    assert list(series(events, "train/loss")) == list(range(1, 9))
    lrs = series(events, "train/lr")
    assert lrs == {s: pytest.approx(f32(LR * 0.5 ** (s // 3))) for s in range(1, 9)}
    val = series(events, "val/mse")
    assert val == {s: f32(v) for s, v in zip(history["step"], history["val_mse"], strict=True)}

    # clipped steps: those whose norm (before clipping) exceeds the threshold
    norms = series(events, "grad/total_norm")
    assert list(norms) == list(range(1, 9))
    clipped = [norms[s] > one_run["threshold"] for s in range(1, 9)]
    assert 0 < sum(clipped) < 8
    fractions = series(events, "grad/clip_fraction")
    assert fractions == {s: pytest.approx(f32(sum(clipped[:s]) / s)) for s in (3, 6, 8)}
    assert metrics["clip_fraction"] == pytest.approx(sum(clipped) / 8)

    for layer in (0, 1):
        for step in (0, 2, 4, 6, 8):
            expected = summary(layer_norms(grads, step, layer))
            for name in ("vanishing_ratio", "decay_rate", "growth_rate", "memory_horizon",
                         "max_norm"):  # fmt: skip
                tb = series(events, f"grad/{name}/layer{layer}")
                assert tb[step] == pytest.approx(expected[name], rel=1e-5), (name, step)
            nonzero = series(events, f"grad/nonzero_steps/layer{layer}")[step]
            assert nonzero == expected["nonzero"] == 8
        assert sorted(series(events, f"grad/max_norm/layer{layer}")) == [0, 2, 4, 6, 8]

    end = metrics["lag_norms"]["end"]["layers"][0]["vanishing_ratio"]
    for name, value in [("best_metric", metrics["best_metric"]),
                        ("final_metric", metrics["final_metric"]),
                        ("end_vanishing_ratio", end), ("diverged", 0.0)]:  # fmt: skip
        assert series(events, f"hparams/{name}") == {8: pytest.approx(f32(value))}, name


def check_tensorboard_pictures_and_hparams(one_run: dict) -> None:
    events = one_run["events"]
    images = events.Tags()["images"]
    gate_maps = {"gate_heatmap/layer0", "gate_heatmap/layer1"}  # the forget gate's
    grad_maps = {"grad_heatmap/layer0", "grad_heatmap/layer1", "grad_norm_vs_t"}
    lag_maps = {"lag_heatmap/layer0", "lag_heatmap/layer1", "lag_profile"}
    assert set(images) == grad_maps | lag_maps | gate_maps
    for tag in images:  # after each validation (3, 6, 8) and at the end (8): once per step
        assert [i.step for i in events.Images(tag)] == [3, 6, 8]
        assert all(i.encoded_image_string.startswith(b"\x89PNG") for i in events.Images(tag))
    content = events.PluginTagToContent("hparams")
    from tensorboard.plugins.hparams import plugin_data_pb2

    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = {k: v.ListFields()[0][1] for k, v in start.session_start_info.hparams.items()}
    assert hparams["model"] == "lstm" and hparams["task"] == "adding"
    assert hparams["optimizer"] == "adam" and hparams["model.num_layers"] == 2
    assert hparams["train.clip.threshold"] == pytest.approx(one_run["threshold"])


def check_metrics_json(one_run: dict) -> None:
    m, history, grads = one_run["metrics"], one_run["history"], one_run["grads"]
    ckpt = torch.load(one_run["dir"] / "checkpoint.pt", weights_only=True)
    assert (m["status"], m["model"], m["task"], m["seed"]) == ("completed", "lstm", "adding", 0)
    assert (m["device"], m["torch"], m["overrides"]) == ("cpu", torch.__version__, [])
    assert (m["diverged_step"], m["error"], m["stopped_early"]) == (None, None, False)
    assert m["steps"] == m["steps_planned"] == ckpt["step"] == 8
    assert m["num_parameters"] == sum(t.numel() for t in ckpt["model"].values())
    assert m["metric"] == "mse" and m["mode"] == "min" and m["baseline"] == pytest.approx(1 / 6)
    assert m["final_metric"] == history["val_mse"].iloc[-1]
    assert m["final"] == {"mse": history["val_mse"].iloc[-1]}
    best = history["val_mse"].idxmin()
    assert (m["best_metric"], m["best_step"]) == (history["val_mse"][best], history["step"][best])
    solved = history.loc[history["val_mse"] < 0.01, "step"]
    assert m["solved_step"] == (int(solved.iloc[0]) if len(solved) else None)
    best_pt = torch.load(one_run["dir"] / "best.pt", weights_only=True)
    assert (best_pt["step"], best_pt["mse"]) == (m["best_step"], m["best_metric"])
    assert m["steps_per_s"] == pytest.approx(8 / m["wall_time_s"], rel=0.01)

    assert sorted(grads["step"].unique()) == [0, 2, 4, 6, 8]
    assert m["grad_norms"]["max_norm"] == grads["norm"].max()
    for when, step in (("init", 0), ("end", 8)):
        snapshot = m["grad_norms"][when]
        assert (snapshot["step"], snapshot["timesteps"]) == (step, 8)
        for layer, recorded in enumerate(snapshot["layers"]):
            expected = summary(layer_norms(grads, step, layer))
            for key, value in expected.items():
                assert recorded[key] == pytest.approx(value, rel=1e-9), (when, layer, key)
            assert recorded["positions"] == 8 * 8  # T steps x batch of 8, nothing padded
    lags = one_run["lags"]
    assert sorted(lags["step"].unique()) == [0, 2, 4, 6, 8]
    assert np.allclose(lags["log10_norm"], np.log10(lags["norm"]), rtol=0, atol=1e-12)
    for when, step in (("init", 0), ("end", 8)):
        snapshot = m["lag_norms"][when]
        assert (snapshot["step"], snapshot["lags"]) == (step, 8)
        for layer, recorded in enumerate(snapshot["layers"]):
            by_lag = lag_norms_of(lags, step, layer)
            # one loss term per sequence, at T: lag k is t = T - k, RMS = Frobenius / sqrt(B)
            per_t = layer_norms(grads, step, layer)[::-1] / math.sqrt(8)
            np.testing.assert_allclose(by_lag, per_t, rtol=1e-9)
            expected = summary(by_lag[::-1])
            assert (recorded["max_lag"], recorded["pairs"]) == (7, 8)
            for key in ("vanishing_ratio", "decay_rate", "growth_rate", "memory_horizon",
                        "exploding", "nonzero"):  # fmt: skip
                assert recorded[key] == pytest.approx(expected[key], rel=1e-9), (when, key)


def test_comparison_table_matches_the_runs_files(tmp_path: Path) -> None:
    """aggregate(load_runs(...)) over three runs (two lstm seeds, one gru): every number column
    is the mean and std of values read from each run's own files."""
    from seqbench.compare import aggregate, load_runs, to_display

    runs = {("lstm", 0): tmp_path / "a", ("lstm", 1): tmp_path / "b", ("gru", 0): tmp_path / "c"}
    for (model, seed), run_dir in runs.items():
        run_small(run_dir, f"model={model}", f"seed={seed}", "train.steps=4", "train.eval_every=2",
                  "log.tensorboard=false", "inference.compare=false")  # fmt: skip
    table = aggregate(load_runs(list(runs.values()))).set_index("model")
    assert sorted(table.index) == ["gru", "lstm"]

    def from_files(run_dir: Path) -> dict:
        m = json.loads((run_dir / "metrics.json").read_text())
        history = pd.read_csv(run_dir / "history.csv")
        grads = pd.read_csv(run_dir / "grad_norms.csv")
        lags = pd.read_csv(run_dir / "lag_norms.csv").query("layer == 0")
        ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
        first, last = lags["step"].min(), lags["step"].max()

        def by_lag(step: int) -> dict:  # the verdicts: by lag (every lag: all 8 pairs reach it)
            rows = lags[lags["step"] == step].sort_values("lag")
            return summary(rows["norm"].to_numpy()[::-1])

        init, end = by_lag(first), by_lag(last)
        return {
            "final_metric": history["val_mse"].iloc[-1],
            "best_metric": history["val_mse"].min(),
            "baseline": 1 / 6,
            "solved_step": math.nan,  # none reaches 0.01 in 4 steps
            "init_vanishing_ratio": init["vanishing_ratio"],
            "init_decay_rate": init["decay_rate"],
            "end_vanishing_ratio": end["vanishing_ratio"],
            "end_decay_rate": end["decay_rate"],
            "init_growth_rate": init["growth_rate"],
            "end_growth_rate": end["growth_rate"],
            "init_memory_horizon": init["memory_horizon"],
            "end_memory_horizon": end["memory_horizon"],
            "max_grad_norm": grads["norm"].max(),
            "wall_time_s": m["wall_time_s"],
            "steps_per_s": m["steps_per_s"],
            "num_parameters": sum(t.numel() for t in ckpt["model"].values()),
        }

    values = {key: from_files(run_dir) for key, run_dir in runs.items()}
    for model, seeds in (("lstm", [0, 1]), ("gru", [0])):
        row = table.loc[model]
        assert (row["task"], row["metric"], row["runs"], row["completed"]) == (
            "adding", "mse", len(seeds), len(seeds))  # fmt: skip
        assert (row["diverged"], row["failed"], row["interrupted"], row["solved"]) == (0, 0, 0, 0)
        for column, first in values[(model, seeds[0])].items():
            data = [values[(model, s)][column] for s in seeds]
            if math.isnan(first):
                assert math.isnan(row[f"{column}_mean"]), column
                continue
            assert row[f"{column}_mean"] == pytest.approx(statistics.fmean(data), rel=1e-9), column
            if len(data) > 1:
                expected_std = statistics.stdev(data)
                assert row[f"{column}_std"] == pytest.approx(expected_std, rel=1e-6, abs=1e-12), (
                    column
                )
            else:
                assert math.isnan(row[f"{column}_std"]), column
    display = to_display(table.reset_index()).set_index("model")
    assert display.loc["lstm", "seeds"] == "2/2" and display.loc["gru", "seeds"] == "1/1"
    assert display.loc["lstm", "diverged/failed"] == "0/0"
    assert display.loc["gru", "solved"] == "0/1 [0.00, 0.79]"  # Wilson's interval
    assert display.loc["gru", "num_parameters"] == f"{values[('gru', 0)]['num_parameters']:,}"


def test_chargen_sample_and_test_split(tmp_path: Path) -> None:
    """After each validation, TensorBoard's sample/sample holds prompt + sample_len generated
    characters; metrics.json's test split is scored with the best validation weights."""
    run_dir = tmp_path / "run"
    metrics = run_small(run_dir, "task=chargen", "task.corpus=hamlet", "task.seq_len=10",
                        "task.sample_len=20", "hardware=cpu", "model.hidden_size=8",
                        "model.embedding_dim=8", "train.batch_size=4", "train.steps=2",
                        "train.eval_every=1", "diagnostics.every=0", "log.progress=none",
                        "inference.compare=false", base=())  # fmt: skip
    events = read_events(run_dir)
    samples = {e.step: e.tensor_proto.string_val[0].decode()
               for e in events.Tensors("sample/sample/text_summary")}  # fmt: skip
    assert list(samples) == [1, 2]
    assert all(s.startswith("The ") and len(s) == 4 + 20 for s in samples.values()), samples
    history = pd.read_csv(run_dir / "history.csv")
    val = zip(history["step"], history["val_bpc"], strict=True)
    assert series(events, "val/bpc") == {step: f32(value) for step, value in val}
    assert set(metrics["test"]) == {"bpc", "accuracy", "baseline_bpc"}
    best = torch.load(run_dir / "best.pt", weights_only=True)
    assert best["step"] == metrics["best_step"] and best["bpc"] == metrics["best_metric"]
    # diagnostics.every=0: gradient norms at initialisation and at the end only
    assert sorted(pd.read_csv(run_dir / "grad_norms.csv")["step"].unique()) == [0, 2]


def test_log10_norms_at_every_snapshot(tmp_path: Path) -> None:
    """diagnostics.log_magnitude=true: grad_norms.csv's log10_norm is log10(norm) on every row,
    the final snapshot's included, and the summaries are computed from it."""
    run_dir = tmp_path / "run"
    metrics = run_small(run_dir, "model=rnn", "diagnostics.log_magnitude=true", "train.steps=4",
                        "diagnostics.every=1", "log.tensorboard=false",
                        "inference.compare=false")  # fmt: skip
    grads = pd.read_csv(run_dir / "grad_norms.csv")
    assert sorted(grads["step"].unique()) == [0, 1, 2, 3, 4]  # every step, and the end
    np.testing.assert_allclose(grads["log10_norm"], np.log10(grads["norm"]), rtol=0, atol=1e-9)
    end = grads[grads["step"] == 4].sort_values("t")["log10_norm"].to_numpy()
    recorded = metrics["grad_norms"]["end"]["layers"][0]["vanishing_ratio"]
    assert recorded == pytest.approx(end[0] - end[-1], abs=1e-12)
