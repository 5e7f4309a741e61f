"""What each TensorBoard tag means, in one sentence that TensorBoard shows beside its chart, and
the summary protos that carry it (torch's `SummaryWriter.add_scalar` cannot attach one)."""

from __future__ import annotations

import re

from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata

# what every gradient diagnostic is measured over (`task.stateful`: seqbench.tasks.streams)
WINDOW = (
    "within the training window (task.seq_len steps; with task.stateful=true the state carried "
    "in from the previous window gets no gradient: truncated BPTT)"
)

# tag pattern -> description; `{layer}` and `{gate}` are filled from the tag
DESCRIPTIONS = {
    r"train/loss": "Training loss of each optimizer step, on that step's batch.",
    r"train/lr": "Learning rate after this many optimizer updates (the scheduler's value).",
    r"val/(?P<metric>.+)": "Validation {metric} on the fixed validation set, at each validation.",
    r"grad/total_norm": "Norm of the whole gradient of each step, before clipping.",
    r"grad/clip_fraction": "Fraction of the steps so far whose gradient was clipped.",
    r"lag/vanishing_ratio/layer(?P<layer>\d+)": (
        "The vanishing verdict of layer {layer}: log10 of the gradient norm of a loss term k "
        "steps back over its norm where the loss reads (lag 0), at the largest lag that more "
        f"than half of the (sequence, source) pairs reach (negative: it vanishes), {WINDOW}."
    ),
    r"lag/growth_rate/layer(?P<layer>\d+)": (
        "Factor by which the gradient of a loss term changes per step back from where the loss "
        "reads, in layer {layer} (least-squares over the lags of the training window; below 1 "
        "vanishes, above 1 explodes)."
    ),
    r"lag/memory_horizon/layer(?P<layer>\d+)": (
        "Lags (lag 0 included) over which the gradient of a loss term in layer {layer} stays at "
        "least 1e-3 of its value where the loss reads: how far back the cell's memory reaches "
        "within the training window."
    ),
    r"lag/exploding/layer(?P<layer>\d+)": (
        "1 when the gradient of a loss term in layer {layer} grows going back: its largest norm "
        "by lag in the training window is above diagnostics.explode_factor times its norm at lag "
        "0, else 0."
    ),
    r"grad/vanishing_ratio/layer(?P<layer>\d+)": (
        "log10(||dL/dh_1|| / ||dL/dh_T||) in layer {layer}, t over the timesteps of the training "
        "window: where the training signal lands along the sequence (on padded or many-loss "
        "tasks this is the loss's shape, not the cell's memory: lag/vanishing_ratio is the "
        "verdict)."
    ),
    r"grad/decay_rate/layer(?P<layer>\d+)": (
        "Least-squares slope of log10 ||dL/dh_t|| against t in layer {layer}, t over the "
        "training window: decades gained per timestep forward (positive: the gradient shrinks "
        "going back in time)."
    ),
    r"grad/growth_rate/layer(?P<layer>\d+)": (
        "Factor by which ||dL/dh_t|| changes per timestep going back in layer {layer}, within "
        "the training window (10 ** -decay_rate; below 1 vanishes, above 1 explodes)."
    ),
    r"grad/memory_horizon/layer(?P<layer>\d+)": (
        "Timesteps back from the training window's end over which ||dL/dh_t|| in layer {layer} "
        "stays at least 1e-3 of its value at the last timestep: how far back the gradient still "
        "reaches."
    ),
    r"grad/max_norm/layer(?P<layer>\d+)": (
        "Largest ||dL/dh_t|| over the timesteps of the training window in layer {layer}."
    ),
    r"grad/nonzero_steps/layer(?P<layer>\d+)": (
        "Timesteps of the training window in layer {layer} whose ||dL/dh_t|| is not 0 (an "
        "underflowed norm is 0): how many timesteps still receive any gradient."
    ),
    r"gates/(?P<gate>\w+)_mean/layer(?P<layer>\d+)": (
        "Mean activation of the {gate} gate in layer {layer}, over units, timesteps and the "
        "snapshot's batch."
    ),
    r"gates/(?P<gate>\w+)_above_0\.95/layer(?P<layer>\d+)": (
        "Fraction of layer {layer}'s units whose {gate} gate averages above 0.95 (a near-"
        "saturated gate that keeps, or for GRU's update gate copies, its state)."
    ),
    r"grad_heatmap/layer(?P<layer>\d+)": (
        "log10 ||dL/dh_t|| in layer {layer}: timestep t across, one row per diagnostic snapshot "
        "(step 0 at the bottom, the latest at the top); white = a norm that underflowed to 0; "
        f"t runs {WINDOW}."
    ),
    r"gate_heatmap/layer(?P<layer>\d+)": (
        "Mean memory gate (LSTM forget, GRU update) in layer {layer}, 0 to 1: timestep t across, "
        "one row per diagnostic snapshot (step 0 at the bottom)."
    ),
    r"grad_norm_vs_t": "||dL/dh_t|| against the timestep t, at initialisation (dashed) and at "
    f"the latest snapshot (solid), per layer, on a log scale, t {WINDOW}.",
    r"lag_heatmap/layer(?P<layer>\d+)": (
        "log10 of the gradient norm by lag in layer {layer} (RMS over the (sequence, source) "
        "pairs of ||d l_s/dh_(s-k)||): lag k across from 0, where the loss reads, one row per "
        "diagnostic snapshot (step 0 at the bottom); white = beyond the batch's longest reach; "
        f"lags {WINDOW}."
    ),
    r"lag_profile": "The gradient norm of a loss term by lag k (steps back from where the loss "
    "reads), at initialisation (dashed) and at the latest snapshot (solid), per layer, on a "
    f"log scale, lags {WINDOW}.",
    r"hparams/(?P<name>.+)": "The run's final {name}, for the HParams dashboard.",
    r"summary": "The run's verdict: status, metric against the baseline, the gradient by lag.",
}
_PATTERNS = [(re.compile(pattern + "$"), text) for pattern, text in DESCRIPTIONS.items()]


def describe(tag: str) -> str:
    """The one-sentence description of `tag`, or '' for a tag not listed."""
    for pattern, text in _PATTERNS:
        if match := pattern.match(tag):
            return text.format(**{k: v.replace("_", " ") for k, v in match.groupdict().items()})
    return ""


def scalars(values: dict[str, float], described: set[str]) -> Summary:
    """A summary of scalars; a tag not in `described` gets its description in its metadata
    (TensorBoard keeps the metadata of a tag's first point, so it goes out once per file)."""
    entries = []
    for tag, value in values.items():
        entry = Summary.Value(tag=tag, simple_value=value)
        if tag not in described:  # TensorBoard's loader reads it with the value (data_compat)
            entry.metadata.CopyFrom(SummaryMetadata(
                summary_description=describe(tag),
                plugin_data=SummaryMetadata.PluginData(plugin_name="scalars"),
            ))  # fmt: skip
        entries.append(entry)
    return Summary(value=entries)


def image(tag: str, encoded_png: bytes, height: int, width: int) -> Summary:
    """An image summary with the tag's description (the images plugin shows it)."""
    picture = Summary.Image(height=height, width=width, colorspace=3,
                            encoded_image_string=encoded_png)  # fmt: skip
    metadata = SummaryMetadata(
        summary_description=describe(tag),
        plugin_data=SummaryMetadata.PluginData(plugin_name="images"),
    )
    return Summary(value=[Summary.Value(tag=tag, image=picture, metadata=metadata)])
