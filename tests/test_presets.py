"""Every preset in conf/experiment/ as a real `seqbench -m experiment=NAME` sweep, shrunk (few
steps, tiny sizes, one seed, a tmp sweep dir), as lightning-hydra-template's sweep smoke tests
do: it composes, every job completes, and the comparison table holds the preset's
configurations."""

from __future__ import annotations

import itertools
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import ROOT, compose_config, seqbench_main

PRESETS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
SHRINK = ["train.steps=2", "train.eval_every=2", "diagnostics.every=2", "train.batch_size=4",
          "model.hidden_size=4", "checkpoint.every=0", "log.progress=none",
          "log.tensorboard=false", "inference.compare=false"]  # fmt: skip


def shrunk(name: str) -> tuple[list[str], dict[str, list[str]]]:
    """The overrides that shrink preset `name`, and its sweep's parameters after them (each
    value list as the strings Hydra passes on)."""
    cfg = compose_config([f"experiment={name}"], hydra=True)
    spelt = {"true": "True", "false": "False"}  # a boolean as Hydra passes it on to the job
    params = {key: [spelt.get(v.lower(), v) for v in str(values).split(",")]
              for key, values in cfg.hydra.sweeper.params.items()}  # fmt: skip
    shrink = list(SHRINK)
    if "seed" in params:  # one seed
        shrink.append("hydra.sweeper.params.seed=0")
        params["seed"] = ["0"]
    if "n_jobs" in cfg.hydra.launcher:  # joblib, one job: in this process, one after another
        shrink.append("hydra.launcher.n_jobs=1")
    if "val_size" in cfg.task:
        shrink.append("task.val_size=8")
    if cfg.task.name == "chargen":  # the 175 K-character corpus: the same sweep, 30x less reading
        shrink += ["task.corpus=hamlet", "task.sample_len=10"]
    return shrink, params


@pytest.mark.slow
@pytest.mark.parametrize("name", PRESETS)
def test_preset_runs_as_a_sweep(name: str, tmp_path: Path) -> None:
    shrink, params = shrunk(name)
    sweep_dir = tmp_path / name
    result = seqbench_main("-m", f"experiment={name}", *shrink, f"hydra.sweep.dir={sweep_dir}",
                           cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]

    jobs = list(sweep_dir.glob("*/.hydra/overrides.yaml"))
    expected = {tuple(sorted(zip(params, combo, strict=True)))
                for combo in itertools.product(*params.values())}  # fmt: skip
    ran = {tuple(sorted(tuple(kv.split("=", 1)) for kv in yaml.safe_load(p.read_text())
                        if kv.split("=", 1)[0] in params))
           for p in jobs}  # fmt: skip
    assert ran == expected and len(jobs) == len(expected)

    table = pd.read_csv(sweep_dir / "comparison.csv")
    assert (table["completed"] == table["runs"]).all(), table
    keys = [k for k in params if k != "seed"]
    shown = {tuple(str(v) for v in row) for row in table[keys].itertuples(index=False)}
    null = {"null": "nan"}  # comparison.csv writes a null override as an empty (NaN) cell
    assert shown == {tuple(null.get(dict(c)[k], dict(c)[k]) for k in keys) for c in expected}
    printed = result.stdout[result.stdout.rindex("┌") :]  # from the table's top border on
    for column in keys:  # the terminal table, printed last, names every configuration
        for value in params[column]:
            assert value in printed, printed
    assert (sweep_dir / "learning_curves.png").exists()


def test_a_preset_runs_under_the_basic_launcher(tmp_path: Path) -> None:
    """A preset picks joblib for its parallelism without setting a key other launchers lack
    (n_jobs): `hydra/launcher=basic` on the command line runs its jobs one after another. A real
    process, as a user types it."""
    from tests.conftest import seqbench_cli

    shrink, params = shrunk("stocks_cells")
    shrink = [o for o in shrink if not o.startswith("hydra.launcher.")]
    done = seqbench_cli("-m", "experiment=stocks_cells", "hydra/launcher=basic", *shrink,
                        f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "not in BasicLauncherConf" not in done.stderr
    table = pd.read_csv(tmp_path / "sweep" / "comparison.csv")
    assert sorted(table["model"]) == sorted(params["model"])
    assert (table["completed"] == table["runs"]).all()
