"""Console output: a rich progress bar on a terminal, plain periodic lines otherwise, and the
closing summary table."""

from __future__ import annotations

import math
import time

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from seqbench.callbacks import Callback
from seqbench.errors import silence_stdout, stdout_console

MODES = ("auto", "rich", "plain", "none")


class _StepsPerSecond(ProgressColumn):
    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:6.1f} steps/s" if speed else "   -- steps/s", style="cyan")


def bar_columns(width: int, total: int, metric: str) -> list[ProgressColumn]:
    """The live bar's columns for a terminal `width` columns wide, on one line: the step count,
    the loss, the validation metric and the time left always; the elapsed time, then the speed
    go first where they do not fit, the bar narrows (to 10) before it goes, and the label
    'train' goes last."""
    count = len(f"{total}/{total}")
    parts = [  # (column, its width with the space before it)
        (TextColumn("[bold]train"), 5),
        (None, 0),  # the bar: its width is what is left
        (MofNCompleteColumn(), 1 + count),
        (TextColumn("loss {task.fields[loss]}"), 1 + len("loss 00.0000")),
        (TextColumn("val {task.fields[metric]} {task.fields[value]}"),
         1 + len(f"val {metric} 0.0000")),
        (_StepsPerSecond(), 1 + len("  00.0 steps/s")),
        (TimeElapsedColumn(), 1 + len("0:00:00")),
        (TextColumn("eta"), 1 + len("eta")),
        (TimeRemainingColumn(), 1 + len("0:00:00")),
    ]  # fmt: skip
    for drop in (6, 5):  # the elapsed time, then the speed, while the bar has under 10
        if width - 1 - sum(w for _, w in parts) >= 10:
            break
        parts[drop] = (None, 0)
    room = width - 1 - sum(w for _, w in parts)  # rich keeps the last column off the edge
    if room >= 11:
        parts[1] = (BarColumn(bar_width=min(40, room - 1)), room)
    elif room < 0:
        parts[0] = (None, 0)
    return [column for column, _ in parts if column is not None]


def _field(value: float) -> str:
    """A number in the live bar: '--' until there is one (the metric before the first
    validation)."""
    return "--" if math.isnan(value) else f"{value:.4f}"


class ConsoleLogger(Callback):
    """Progress with step, training loss, validation metric, steps/s and ETA.

    Args:
        total_steps: the planned number of steps.
        metric: the validation metric shown next to the loss.
        mode: "rich" (live bar), "plain" (one line per validation, for CI and log files),
            "none", or "auto" (rich when stdout is a terminal, else plain).
        sweep_job: the job's label in a multirun (#N, as Hydra numbers it), or None for a single
            run. A sweep job says one line when it ends instead of the summary table; with
            "auto" its bar disappears when the job ends and nothing is printed without a terminal.
        side_by_side: the job runs at the same time as others that write to the same terminal
            (the joblib launcher): with "auto" it shows no live bar (several processes' bars
            overwrite each other), only its closing line.

    When what reads stdout goes away (`seqbench | head`), the logger goes silent and `closed`
    says "SIGPIPE": the run stops between two steps as on a signal, resumable.
    """

    def __init__(
        self, total_steps: int, metric: str, mode: str = "auto", start_step: int = 0,
        sweep_job: str | None = None, side_by_side: bool = False,
    ) -> None:  # fmt: skip
        self.console = stdout_console()
        self.closed: str | None = None
        self.sweep_job = sweep_job
        self.silent = mode == "none"
        if mode == "auto":
            terminal = self.console.is_terminal and not self.console.is_dumb_terminal
            terminal = terminal and not (side_by_side and sweep_job is not None)
            mode = "rich" if terminal else "none" if sweep_job is not None else "plain"
        self.mode = mode
        self.total = total_steps
        self.metric = metric
        self.loss = math.nan
        self.value = math.nan
        self.started = time.perf_counter()
        self.start_step = start_step
        self.progress: Progress | None = None
        if mode == "rich":
            self.progress = Progress(
                *bar_columns(self.console.width, total_steps, metric),
                console=self.console,
                transient=sweep_job is not None,
            )
            self.task_id = self.progress.add_task(
                "train", total=total_steps, completed=start_step, loss=_field(math.nan),
                metric=metric, value=_field(math.nan),
            )  # fmt: skip
            self.progress.start()

    def _write(self, write) -> None:
        """Call `write` (a print); if stdout's reader has gone, go silent and say so."""
        if self.closed is not None:
            return
        try:
            write()
        except BrokenPipeError:
            silence_stdout()
            self.closed, self.mode, self.silent = "SIGPIPE", "none", True
            if self.progress is not None:  # its last refresh now goes to /dev/null
                self.progress.stop()
                self.progress = None

    def on_step(self, step: int, loss: float, grad_norm: float, clipped: bool) -> None:
        self.loss = loss
        if self.progress is not None:
            self.progress.update(self.task_id, completed=step, loss=_field(loss))

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        self.value = metrics[self.metric]
        if self.progress is not None:
            self.progress.update(self.task_id, value=_field(self.value))
        elif self.mode == "plain":
            elapsed = time.perf_counter() - self.started
            rate = (step - self.start_step) / elapsed if elapsed > 0 else 0.0
            eta = (self.total - step) / rate if rate > 0 else math.nan
            line = (
                f"step {step}/{self.total} | loss {self.loss:.4f} | val {self.metric} "
                f"{self.value:.4f} | {rate:.1f} steps/s | eta {_duration(eta)}"
            )
            self._write(lambda: print(line, flush=True))

    def on_text(self, step: int, texts: dict[str, str]) -> None:
        for name, text in texts.items():
            self.info(Text.assemble((f"step {step} {name}:", "bold"), f" {text!r}"))

    def close(self) -> None:
        if self.progress is not None:
            self._write(self.progress.stop)
            self.progress = None

    def info(self, message: str | Text) -> None:
        """Print a line as it is written: brackets in a path or a generated sample are text,
        not rich markup (which dropped `[exp1]` from a run directory and stopped a run on a
        `[/x]` with a MarkupError)."""
        if self.mode == "none":
            return
        console = self.progress.console if self.progress is not None else self.console
        self._write(lambda: console.print(message, markup=False, highlight=False, soft_wrap=True))

    def summary(self, metrics: dict, run_dir: str) -> None:
        """The closing table: status, what ran, the metric next to its baseline, gradients. In a
        sweep, one line per job (the table is in each run's files and the sweep's comparison)."""
        if self.sweep_job is not None and not self.silent:
            status = metrics["status"]
            name = metrics["metric"]
            line = (
                f"seqbench: {self.sweep_job}: {status}, best val {name} "
                f"{_fmt(metrics['best_metric'])} (baseline {_fmt(metrics['baseline'])}), "
                f"{metrics['steps']:,} steps in {_duration(metrics['wall_time_s'])} -> {run_dir}"
            )
            self._write(lambda: self.console.print(line, markup=False, highlight=False,
                                                   soft_wrap=True))  # fmt: skip
            return
        if self.mode == "none" or self.sweep_job is not None:
            return
        self._write(lambda: self.console.print(summary_table(metrics, run_dir)))


def summary_table(metrics: dict, run_dir: str) -> Table:
    """The closing table of a single run. Long values (a path, gradient lines, an error) wrap
    onto more lines (fold) rather than lose characters to an ellipsis: at 100 columns nothing
    is cut."""
    table = Table(title=Text(f"seqbench run: {run_dir}"), show_header=False, title_justify="left")
    table.add_column(style="bold", overflow="fold")
    table.add_column(overflow="fold")
    status_style = {"completed": "green", "diverged": "red", "failed": "red", "pruned": "yellow"}
    status = metrics["status"]
    if metrics.get("diverged_step") is not None:
        status += f" at step {metrics['diverged_step']}"
    if metrics.get("stopped_early"):  # train.early_stopping
        status += f", stopped early at step {metrics['stopped_at_step']:,} (train.early_stopping)"
    if metrics.get("pruned_at_step") is not None:  # an Optuna trial
        status += f" at step {metrics['pruned_at_step']:,}"
    table.add_row("status", Text(status, style=status_style.get(metrics["status"], "yellow")))
    stateful = " (stateful)" if (metrics.get("task_info") or {}).get("stateful") else ""
    table.add_row("model / task", f"{metrics['model']} / {metrics['task']}{stateful}")
    table.add_row("seed", str(metrics["seed"]))
    table.add_row("parameters", f"{metrics['num_parameters']:,}")
    planned = metrics.get("steps_planned")
    of = f" of {planned:,}" if planned and planned != metrics["steps"] else ""
    table.add_row("steps", f"{metrics['steps']:,}{of} ({metrics['steps_per_s'] or 0:.1f} steps/s)")
    table.add_row("wall time", _duration(metrics["wall_time_s"]))
    name, mode = metrics["metric"], metrics["mode"]
    table.add_row(f"final val {name}", _fmt(metrics["final_metric"]))
    table.add_row(
        f"best val {name}", f"{_fmt(metrics['best_metric'])} at step {metrics['best_step']}"
    )
    table.add_row(
        "baseline",
        f"{_fmt(metrics['baseline'])} ({metrics['baseline_name']}; {mode} is better)",
    )
    table.add_row("clipped steps", f"{100 * metrics['clip_fraction']:.1f}%")
    for when in ("init", "end"):  # the gradient of a loss term by lag (seqbench.lags)
        snap = (metrics.get("lag_norms") or {}).get(when)
        if snap is None:
            continue
        for layer, s in enumerate(snap["layers"]):
            growth = s.get("growth_rate")
            growth = "n/a" if growth is None else f"x{growth:.3g}/step back"
            table.add_row(
                f"grad by lag {when} (step {snap['step']}) L{layer}",
                f"log10 lag {s['max_lag']}/lag 0 = {s['vanishing_ratio']:.2f}, growth {growth}, "
                f"horizon {s['memory_horizon']}/{s['max_lag'] + 1} lags"
                f"{', EXPLODING' if s['exploding'] else ''}",
            )
    if test := metrics.get("test"):  # one row, folded: stocks has 13 numbers, 3 its own
        scores = ", ".join(f"{name} {_score(name, value)}" for name, value in test.items())
        table.add_row("test split (best weights)", scores)
    if metrics.get("error"):
        table.add_row("error", Text(metrics["error"]))  # as written: brackets are not markup
    return table


def _score(name: str, value: float | None) -> str:
    """A test score as the summary shows it: stocks' beats_zero and beats_yesterday (1.0 or
    0.0 in metrics.json, so that a sweep's mean is the fraction of seeds) as yes or no."""
    if name.startswith("beats_") and value in (0.0, 1.0):
        return "yes" if value else "no"
    return _fmt(value)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "--"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
