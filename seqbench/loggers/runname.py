"""Where a run's TensorBoard events go, so that TensorBoard names the run by what it varies.

TensorBoard names a run by its folder below `--logdir`. A single run writes to
`<run dir>/tb/<its overrides>/` (e.g. `model=gru,seed=1`; `defaults` when it has none). A sweep
writes every job to `<sweep dir>/tb/<the overrides that vary in the sweep>/` (`model=lstm,seed=1`,
leaving out keys that are equal in every job) and its summary to `<sweep dir>/tb/sweep/`, so
`tensorboard --logdir <sweep dir>/tb` lists `model=lstm,seed=1`, ..., `sweep`, in the Scalars,
Images and HParams views alike. The job folders (`<sweep dir>/0`, `1`, ...) stay as they were.

Which keys vary: the sweep overrides (`model=rnn,lstm`, `optimizer.lr=interval(...)`, as Hydra's
OverridesParser tells a sweep from a value) of the sweep's command line (Hydra's basic sweeper
saves it in `<sweep dir>/multirun.yaml`), plus those in `hydra.sweeper.params`. A sampling sweeper
(Optuna) can draw the same values twice, so its job names start with `trial<N>`.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import OmegaConf

EVENTS = "events.out.tfevents.*"
SUMMARY_RUN = "sweep"
SKIPPED = ("hydra", "resume", "log.")
MAX_NAME = 120  # characters; a longer name is cut and ends with a hash of the whole


def sweep_keys(overrides: list[str], params: dict | None = None) -> list[str]:
    """The keys that vary: those of sweep overrides, and of sweeps in `hydra.sweeper.params`."""
    parser = OverridesParser.create()
    keys: list[str] = []
    lines = [o for o in overrides if not o.startswith("hydra")]
    lines += [f"{key}={value}" for key, value in (params or {}).items()]
    for override in parser.parse_overrides(lines):
        if override.is_sweep_override() and override.key_or_group not in keys:
            keys.append(override.key_or_group)
    return keys


def run_name(overrides: list[str], varied: list[str] | None = None, trial: int | None = None):
    """`key=value,...` of `overrides` (only the `varied` keys, in their order, when given); the
    SKIPPED keys left out (they change how a run is shown, not what it is); `defaults` for none.
    """
    parsed = {o.key_or_group: o for o in OverridesParser.create().parse_overrides(overrides)}
    keys = varied if varied is not None else list(parsed)
    parts = [_short(parsed[key].input_line) for key in keys if key in parsed
             and not key.startswith(SKIPPED)]  # fmt: skip
    if trial is not None:
        parts.insert(0, f"trial{trial}")
    name = ",".join(parts) or "defaults"
    name = name.replace("/", "_").replace("\\", "_").lstrip("+~")
    if len(name) > MAX_NAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        name = f"{name[: MAX_NAME - 9]}~{digest}"
    return name


def _short(line: str) -> str:
    """`key=value` with a long float drawn by a sampler (0.012345678) cut to 4 digits."""
    key, _, value = line.partition("=")
    try:
        number = float(value)
    except ValueError:
        return line.lstrip("+~")
    if "." in value and len(value) > 8:
        value = f"{number:.4g}"
    return f"{key.lstrip('+~')}={value}"


def event_dir(run_dir: Path, overrides: list[str], resumed: bool) -> Path:
    """The folder of this run's event files (see the module docstring).

    `overrides`: the run's own (for a resumed run, those of the command that started it)."""
    run_dir = Path(run_dir)
    if resumed and any((run_dir / "tb").glob(EVENTS)):
        return run_dir / "tb"  # a run started before runs had names: continue its file
    sweep = _sweep(run_dir)
    if sweep is None:
        return run_dir / "tb" / run_name(overrides)
    sweep_dir, varied, trial = sweep
    # a "sweep" of one job (`seqbench -m seed=3`) varies nothing: named by its own overrides
    return sweep_dir / "tb" / run_name(overrides, varied or None, trial)


def _sweep(run_dir: Path) -> tuple[Path, list[str], int | None] | None:
    """(sweep dir, varied keys, trial number of a sampling sweeper) of a sweep job, else None.
    A job resumed by `seqbench resume=<sweep dir>/<job>` is found by its sweep's multirun.yaml."""
    hydra = HydraConfig.get() if HydraConfig.initialized() else None
    if hydra is not None and hydra.mode == RunMode.MULTIRUN:
        sweep_dir, job = Path(hydra.sweep.dir), hydra.job.num
        sweeper = OmegaConf.to_container(hydra.sweeper, resolve=True)
    elif (run_dir.parent / "multirun.yaml").exists():
        sweep_dir, job, sweeper = run_dir.parent, None, None
    else:
        return None
    saved = sweep_dir / "multirun.yaml"
    if saved.exists():  # Hydra's basic sweeper: the sweep's own command line
        multirun = OmegaConf.load(saved).hydra
        overrides = list(multirun.overrides.task)
        sweeper = OmegaConf.to_container(multirun.sweeper, resolve=True)
    else:  # another sweeper (Optuna) in this process: the command line it was given
        overrides = [a for a in sys.argv[1:] if "=" in a and not a.startswith("-")]
    sampling = "BasicSweeper" not in str(sweeper.get("_target_", "BasicSweeper"))
    trial = job if sampling else None
    return sweep_dir, sweep_keys(overrides, sweeper.get("params")), trial
