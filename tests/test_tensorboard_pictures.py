"""TensorBoard's pictures at a bounded cadence (after each validation and at the end, never per
snapshot), the heat maps holding one row block per snapshot with the colours of the recorded
values, every chart's description, the run's summary text, and diagnostics.every=auto."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from seqbench.loggers import pictures
from tests.conftest import compose_config, run_small, seqbench_main
from tests.test_effects_files import event_folder, read_events

# snapshots at every step 0..7 and the end (8); validations at 3, 6 and 8
RUN = ("model=lstm", "model.num_layers=2", "train.steps=8", "train.eval_every=3",
       "diagnostics.every=1", "inference.compare=false")  # fmt: skip


def decode(image) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(image.encoded_image_string)).convert("RGB"))


def expected_cells(values: np.ndarray, cmap: str, vmin: float, vmax: float) -> np.ndarray:
    """(S, T) -> the (S, T, 3) colours, written out: matplotlib's colour at the value's place in
    [vmin, vmax] quantised to 256 levels; NaN white; the first snapshot at the bottom."""
    colours = np.full((*values.shape, 3), 255.0)
    for (i, j), v in np.ndenumerate(values):
        if math.isfinite(v):
            level = min(max(round((v - vmin) / (vmax - vmin) * 255), 0), 255)
            colours[i, j] = np.array(matplotlib.colormaps[cmap](level / 255)[:3]) * 255
    return colours[::-1]


def blocks(cells: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """The picture's cell area back to one colour per (snapshot, timestep), after checking that
    each block of repeated pixels holds one colour."""
    ry, rx = cells.shape[0] // rows, cells.shape[1] // columns
    assert (ry * rows, rx * columns) == cells.shape[:2]
    grid = cells.reshape(rows, ry, columns, rx, 3)
    assert (grid == grid[:, :1, :, :1]).all()  # every pixel of a block is the block's colour
    return grid[:, 0, :, 0].astype(float)


def test_pictures_after_validations_with_a_row_per_snapshot(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_small(run_dir, *RUN)
    events = read_events(run_dir)
    grads = pd.read_csv(run_dir / "grad_norms.csv")
    assert sorted(grads["step"].unique()) == list(range(9))  # the CSV: every snapshot
    assert len(events.Scalars("grad/max_norm/layer0")) == 9  # the scalars too
    # the pictures: after each validation (with that step's snapshot) and at the end only
    drawn = {3: 4, 6: 7, 8: 9}  # step -> snapshots in the picture (0..3, 0..6, 0..8)
    for layer in (0, 1):
        images = events.Images(f"grad_heatmap/layer{layer}")
        assert [i.step for i in images] == list(drawn)
        for image in images:
            rows = drawn[image.step]
            picture = decode(image)
            assert picture.shape[:2] == (image.height, image.width)
            top, left = pictures.TOP, pictures.LEFT
            height = image.height - pictures.TOP - pictures.BOTTOM
            width = image.width - pictures.LEFT - pictures.RIGHT
            cells = blocks(picture[top : top + height, left : left + width], rows, 8)
            norms = (grads[(grads["layer"] == layer) & (grads["step"] < rows)]
                     .pivot(index="step", columns="t", values="norm").to_numpy())  # fmt: skip
            logs = np.log10(norms)  # (rows, T)
            reference = expected_cells(logs, "viridis", logs.min(), logs.max())
            np.testing.assert_allclose(cells, reference, atol=4)  # csv rounding: a level at most
    gates = events.Images("gate_heatmap/layer1")
    assert [i.step for i in gates] == list(drawn)
    final = decode(gates[-1])
    cells = final[pictures.TOP : gates[-1].height - pictures.BOTTOM,
                  pictures.LEFT : gates[-1].width - pictures.RIGHT]  # fmt: skip
    forget = (grads[grads["layer"] == 1].pivot(index="step", columns="t", values="gate_forget")
              .to_numpy())  # fmt: skip
    np.testing.assert_allclose(blocks(cells, 9, 8), expected_cells(forget, "magma", 0, 1), atol=4)
    assert [i.step for i in events.Images("grad_norm_vs_t")] == list(drawn)


def test_heatmap_cells_blank_and_repeats() -> None:
    values = np.array([[0.0, np.nan, 1.0], [0.5, 0.25, 2.0]])  # 2 snapshots, 3 timesteps
    cells = pictures.heatmap_cells(values, "viridis", 0.0, 1.0)
    ry, rx = pictures.repeats(2, 3)
    assert cells.shape == (2 * ry, 3 * rx, 3) and ry * 2 >= pictures.MIN_HEIGHT
    colours = blocks(cells, 2, 3)
    reference = expected_cells(np.minimum(values, 1.0), "viridis", 0.0, 1.0)  # 2.0 clips to 1
    np.testing.assert_array_equal(colours, reference.round())
    assert (colours[1, 1] == 255).all()  # NaN: blank, in the first snapshot's (bottom) row
    big = pictures.heatmap_cells(np.zeros((500, 1000)), "viridis", 0.0, 1.0)
    assert big.shape == (500, 1000, 3)  # large maps are not enlarged


def test_descriptions_and_summary_text(tmp_path: Path) -> None:
    """Every grad/* and gates/* chart has its one-sentence description, read back through the
    data provider TensorBoard's server uses; the run's verdict is in its Text tab."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer

    run_dir = tmp_path / "run"
    overrides = ["model=gru", "hardware=cpu", "train.steps=4", "task.seq_len=8",
                 "task.val_size=16", "inference.compare=false"]  # fmt: skip
    done = seqbench_main(*overrides, "log.progress=none", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    folder = event_folder(run_dir)
    assert folder.name == ",".join(overrides)  # a single run: named by its overrides (log.* aside)
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(run_dir / "tb"))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(run_dir / "tb"))
    ctx = context.RequestContext()
    runs = provider.list_scalars(ctx, experiment_id="", plugin_name="scalars")
    assert list(runs) == [folder.name]
    described = {tag: meta.description for tag, meta in runs[folder.name].items()}
    diagnostics = [t for t in described if t.startswith(("grad/", "gates/", "lag/"))]
    assert len(diagnostics) >= 10 and "gates/update_above_0.95/layer0" in diagnostics
    for tag in diagnostics:
        text = described[tag]
        assert text.endswith(".") and text.count(". ") == 0 and len(text) > 30, tag
    assert "layer 0" in described["grad/vanishing_ratio/layer0"]
    assert "layer 0" in described["lag/vanishing_ratio/layer0"]
    images = provider.list_blob_sequences(ctx, experiment_id="", plugin_name="images")
    assert all(meta.description for meta in images[folder.name].values())
    summary = read_events(run_dir).Tensors("summary/text_summary")
    text = summary[-1].tensor_proto.string_val[0].decode()
    assert summary[-1].step == 4
    assert "| status | completed |" in text
    assert f"{metrics['baseline']:.4g}" in text and "clipped steps" in text
    for when in ("init (step 0)", "end (step 4)"):
        assert f"gradient by lag, {when}, layer 0 | vanishing ratio " in text
    assert text.count(" lags, growth ") == 2 and "per step back, horizon " in text


@pytest.mark.parametrize(("steps", "every"), [(1, 1), (49, 1), (100, 2), (3000, 60), (3049, 60)])
def test_diagnostics_every_auto_gives_about_50_points(steps: int, every: int) -> None:
    from seqbench.config import diagnostics_every

    cfg = compose_config(["hardware=cpu", f"train.steps={steps}"])
    assert cfg.diagnostics.every == "auto"  # the default
    assert diagnostics_every(cfg) == every
    cfg.diagnostics.every = 7
    assert diagnostics_every(cfg) == 7


def test_diagnostics_every_auto_in_a_run(tmp_path: Path) -> None:
    run_small(tmp_path / "run", "train.steps=100", "train.eval_every=50", "diagnostics.every=auto",
              "log.tensorboard=false", "inference.compare=false")  # fmt: skip
    steps = sorted(pd.read_csv(tmp_path / "run" / "grad_norms.csv")["step"].unique())
    assert steps == list(range(0, 101, 2))  # 100 // 50 = 2: 51 snapshots


@pytest.mark.parametrize("value", ["often", "-1", "1.5", "true"])
def test_bad_diagnostics_every_is_refused(tmp_path: Path, value: str) -> None:
    done = seqbench_main("hardware=cpu", f"diagnostics.every={value}",
                         f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("seqbench: error: diagnostics.every=")
    assert "auto (max(1, train.steps // 50)" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()
