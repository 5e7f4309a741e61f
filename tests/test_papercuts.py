"""Small things a new user meets first: hints that work, no library noise before our message."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch

from seqbench.errors import ConfigError
from seqbench.tasks import build_task
from tests.conftest import compose_config

CPU = torch.device("cpu")


def chargen(path: Path, prompt: str):
    cfg = compose_config(["task=chargen", f"task.path={path}", f"task.prompt='{prompt}'",
                          "task.seq_len=8"])  # fmt: skip
    return build_task(cfg.task, CPU, 0)


@pytest.mark.parametrize(
    "text,prompt",
    [("the cat sat on the mat. " * 40, "The "), ("abc abd " * 60, "Zq")],
    ids=["lower-cased prompt", "start of the text"],
)
def test_the_prompt_hint_is_a_prompt_the_corpus_takes(tmp_path: Path, text: str, prompt: str):
    path = tmp_path / "my.txt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"task\.prompt=") as err:
        chargen(path, prompt)
    suggested = re.search(r"e\.g\. task\.prompt='([^']*)'", str(err.value)).group(1)
    assert suggested != prompt
    assert chargen(path, suggested).prompt == suggested  # the hint is accepted as it stands


def test_unparseable_dates_give_our_message_and_no_library_warning(tmp_path: Path) -> None:
    path = tmp_path / "prices.csv"
    rows = "".join(f"not a date {i},{100 + i}\n" for i in range(60))
    path.write_text("date,close\n" + rows, encoding="utf-8")
    cfg = compose_config(["task=stocks", f"task.path={path}", "task.ticker=null",
                          "task.date_column=date", "task.value_column=close"])  # fmt: skip
    with warnings.catch_warnings(record=True) as caught, pytest.raises(ConfigError) as err:
        warnings.simplefilter("always")
        build_task(cfg.task, CPU, 0)
    assert "task.date_column='date'" in str(err.value)
    assert [str(w.message) for w in caught] == []


def test_the_command_prints_our_message_only_on_unparseable_dates(tmp_path: Path) -> None:
    from tests.conftest import seqbench_main

    rows = "".join(f"not a date {i},{100 + i}\n" for i in range(60))
    (tmp_path / "prices.csv").write_text("date,close\n" + rows, encoding="utf-8")
    args = ["task=stocks", "task.path=prices.csv", "task.ticker=null", "task.date_column=date"]
    done = seqbench_main(*args, "task.value_column=close", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("seqbench: error: task.date_column='date' of ")
    assert len(done.stderr.strip().splitlines()) == 1  # no pandas UserWarning and source line


def test_cosine_warmup_follows_the_run_length() -> None:
    from seqbench.checks import check_config
    from seqbench.scheduler import build_scheduler

    cfg = compose_config(["scheduler=cosine", "train.steps=60"])
    check_config(cfg)  # the default warm-up fits a short run
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(cfg.scheduler, optimizer, 60, "min")
    rates = []
    for _ in range(4):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0, 1 / 3, 2 / 3, 1])  # 5% of 60 steps: 3 warm-up steps
    with pytest.raises(ConfigError, match=r"scheduler\.warmup_steps=60"):
        check_config(compose_config(["scheduler=cosine", "train.steps=60",
                                     "scheduler.warmup_steps=60"]))  # fmt: skip


@pytest.mark.parametrize(
    "args,message",
    [
        (["train.steps=-5"], "train.steps=-5 is not allowed (a positive integer)."),
        (["task=stocks", "task.path=missing.csv"], "task.path='missing.csv' does not exist"),
    ],
    ids=["checked before Hydra starts", "found while the run starts"],
)
def test_a_refused_config_writes_nothing(tmp_path: Path, args: list[str], message: str) -> None:
    from tests.conftest import seqbench_cli

    run_dir = tmp_path / "run"
    done = seqbench_cli(*args, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith(f"seqbench: error: {message}")
    assert len(done.stderr.strip().splitlines()) == 1
    assert not run_dir.exists()  # not even Hydra's .hydra/ and cli.log


def test_a_sweep_says_the_device_notice_once_and_one_line_per_job(tmp_path: Path) -> None:
    from tests.conftest import SMALL, seqbench_cli

    small = [o for o in SMALL if not o.startswith(("hardware=", "log.progress="))]
    done = seqbench_cli("-m", "model=rnn,gru", "hardware=auto", *small,
                        f"hydra.sweep.dir={tmp_path}", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    notices = [ln for ln in lines if "no CUDA device found" in ln]
    assert len(notices) == (0 if torch.cuda.is_available() else 1)
    jobs = [ln for ln in lines if ln.startswith("seqbench: #")]
    assert [ln.split()[1] for ln in jobs] == ["#0:", "#1:"]
    assert all("completed, best val mse" in ln for ln in jobs)
    assert sum("seqbench run:" in ln for ln in lines) == 0  # no per-job summary table
    assert sum(f"{tmp_path}: 2 runs" in ln for ln in lines) == 1  # the sweep's one table
    check_hparams_experiment(tmp_path)


def hparams_plugin_data(tb_dir: Path) -> dict:
    """tag -> HParams plugin data in the event files of `tb_dir`, read by TensorBoard's loader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    events = EventAccumulator(str(tb_dir), size_guidance={"tensors": 0}).Reload()
    content = events.PluginTagToContent(metadata.PLUGIN_NAME)
    parse = {
        metadata.EXPERIMENT_TAG: metadata.parse_experiment_plugin_data,
        metadata.SESSION_START_INFO_TAG: metadata.parse_session_start_info_plugin_data,
        metadata.SESSION_END_INFO_TAG: metadata.parse_session_end_info_plugin_data,
    }
    return {tag: parse[tag](raw) for tag, raw in content.items()}


def check_hparams_experiment(sweep_dir: Path) -> None:
    """One experiment for the sweep, at its root, in which the swept key differs; each job writes
    only its session, with booleans as booleans."""
    from tensorboard.plugins.hparams import api_pb2, metadata

    for job in ("0", "1"):  # each job's events under tb/, named by what the sweep varies
        tags = hparams_plugin_data(sweep_dir / "tb" / f"model={('rnn', 'gru')[int(job)]}")
        assert metadata.EXPERIMENT_TAG not in tags  # the sweep's experiment is the only one
        start = tags[metadata.SESSION_START_INFO_TAG].hparams
        assert start["model.bidirectional"].WhichOneof("kind") == "bool_value"
        assert start["model"].string_value == ("rnn", "gru")[int(job)]
    experiment = hparams_plugin_data(sweep_dir / "tb" / "sweep")[metadata.EXPERIMENT_TAG]
    infos = {info.name: info for info in experiment.hparam_infos}
    assert infos["model"].differs and not infos["seed"].differs
    assert not infos["model.bidirectional"].differs
    assert infos["model.bidirectional"].type == api_pb2.DATA_TYPE_BOOL
    assert sorted(v.string_value for v in infos["model"].domain_discrete.values) == ["gru", "rnn"]
    assert "hparams/best_metric" in [m.name.tag for m in experiment.metric_infos]
