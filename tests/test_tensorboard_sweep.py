"""A real sweep as TensorBoard shows it, read through TensorBoard's own data provider: runs named
by the overrides that vary, the `sweep` summary run, typed hyperparameters, descriptions and the
text summaries; a re-run sweep and a resumed job keep writing to the same named runs."""

from __future__ import annotations

from pathlib import Path

from seqbench.loggers.runname import event_dir, run_name, sweep_keys
from tests.conftest import SMALL, seqbench_main

NAMES = ["model=lstm,seed=0", "model=lstm,seed=1", "model=rnn,seed=0", "model=rnn,seed=1"]


def provider(logdir: Path):
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer

    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    return data_provider.MultiplexerDataProvider(multiplexer, str(logdir))


def test_sweep_runs_named_by_what_varies(tmp_path: Path) -> None:
    from tensorboard import context
    from tensorboard.plugins.hparams import api_pb2, metadata

    sweep_dir = tmp_path / "sweep"
    args = ["-m", "model=rnn,lstm", "seed=0,1", *SMALL, "train.steps=4", "inference.compare=false",
            f"hydra.sweep.dir={sweep_dir}"]  # fmt: skip
    done = seqbench_main(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    data, ctx = provider(sweep_dir / "tb"), context.RequestContext()

    # Scalars, images, text and HParams: the same names, the varied keys only
    scalars = data.list_scalars(ctx, experiment_id="", plugin_name="scalars")
    assert sorted(scalars) == NAMES  # the summary run has pictures and text, no scalars
    images = data.list_blob_sequences(ctx, experiment_id="", plugin_name="images")
    assert sorted(images) == [*NAMES, "sweep"]
    assert "sweep/learning_curves" in images["sweep"]
    texts = data.list_tensors(ctx, experiment_id="", plugin_name="text")
    assert sorted(texts) == [*NAMES, "sweep"]
    for name in NAMES:
        assert "summary/text_summary" in texts[name]
        text = read_text(data, name, "summary/text_summary")
        assert "| status | completed |" in text and f"/ {name[-1]} |" in text  # the seed
        for tag, meta in scalars[name].items():
            if tag.startswith(("grad/", "gates/")):
                assert meta.description, (name, tag)
    table = read_text(data, "sweep", "comparison/text_summary")
    assert "4 runs in sweep:" in table and "| lstm " in table and "| rnn " in table
    header = next(line for line in table.splitlines() if line.startswith("| model"))
    columns = ["model", "seeds", "solved", "final mse", "baseline", "vanish@init", "vanish@end"]
    assert [c.strip() for c in header.strip("|").split("|")] == columns
    full = read_text(data, "sweep", "comparison_full/text_summary")
    assert full == (sweep_dir / "comparison.md").read_text() and "## Who wins" in full
    verdicts = read_text(data, "sweep", "verdicts/text_summary")  # the terminal's lines
    assert ("lstm" in verdicts and "rnn" in verdicts and "Bonferroni" in verdicts
            and verdicts.splitlines()[0].startswith(("lstm ", "rnn ")))  # fmt: skip
    assert "Bonferroni over 1 pair)" in done.stdout.replace("\n", " ")  # printed under the table

    sessions = data.list_tensors(ctx, experiment_id="", plugin_name=metadata.PLUGIN_NAME)
    assert sorted(sessions) == [*NAMES, "sweep"]  # each job its session, the sweep the experiment
    start = metadata.parse_session_start_info_plugin_data(
        sessions["model=rnn,seed=1"][metadata.SESSION_START_INFO_TAG].plugin_content
    ).hparams
    assert start["model.bidirectional"].WhichOneof("kind") == "bool_value"
    assert start["model.bidirectional"].bool_value is False
    assert start["model"].string_value == "rnn" and start["seed"].number_value == 1
    experiment = metadata.parse_experiment_plugin_data(
        sessions["sweep"][metadata.EXPERIMENT_TAG].plugin_content
    )
    infos = {info.name: info for info in experiment.hparam_infos}
    assert infos["model.bidirectional"].type == api_pb2.DATA_TYPE_BOOL
    assert infos["model"].type == api_pb2.DATA_TYPE_STRING and infos["model"].differs

    # re-running the sweep skips the completed jobs: their event files stay as they were
    before = {p: p.stat().st_size for p in (sweep_dir / "tb").rglob("events.out.tfevents.*")}
    again = seqbench_main(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    after = {p: p.stat().st_size for p in (sweep_dir / "tb").rglob("events.out.tfevents.*")}
    jobs = {p: size for p, size in after.items() if p.parent.name != "sweep"}
    assert jobs == {p: size for p, size in before.items() if p.parent.name != "sweep"}
    assert len([p for p in after if p.parent.name == "sweep"]) == 1  # the summary, rewritten

    # `seqbench resume=<sweep>/<job>` (no Hydra sweep then) finds the job's named run
    overrides = ["model=lstm", "seed=1", *SMALL, "train.steps=4", "inference.compare=false"]
    job = next(d for d in sweep_dir.iterdir() if (d / ".hydra").is_dir()
               and "model=lstm" in (d / ".hydra" / "overrides.yaml").read_text()
               and "seed=1" in (d / ".hydra" / "overrides.yaml").read_text())  # fmt: skip
    assert event_dir(job, overrides, resumed=True) == sweep_dir / "tb" / "model=lstm,seed=1"


def read_text(data, run: str, tag: str) -> str:
    """The latest text of `tag` in `run`, as TensorBoard's Text tab reads it."""
    from tensorboard import context
    from tensorboard.data.provider import RunTagFilter

    only = RunTagFilter([run], [tag])
    series = data.read_tensors(context.RequestContext(), experiment_id="", plugin_name="text",
                               downsample=10, run_tag_filter=only)  # fmt: skip
    return series[run][tag][-1].numpy.item().decode()


def test_names_from_overrides() -> None:
    assert sweep_keys(["model=rnn,lstm", "seed=0,1", "train.steps=9"]) == ["model", "seed"]
    # sweeps in hydra.sweeper.params (YAML presets, Optuna's search space) vary too
    params = {"optimizer.lr": "interval(0.001,0.1)", "task.seq_len": "50", "seed": "0,1"}
    assert sweep_keys(["model=choice(rnn,gru)"], params) == ["model", "optimizer.lr", "seed"]
    job = ["model=gru", "optimizer.lr=0.012345678901", "seed=1", "train.steps=9"]
    assert run_name(job, ["model", "optimizer.lr"]) == "model=gru,optimizer.lr=0.01235"
    assert run_name(job, ["model"], trial=3) == "trial3,model=gru"  # a sampler can repeat values
    assert run_name([]) == "defaults"
    assert run_name(["log.progress=none", "task.corpus=data/x.txt"]) == "task.corpus=data_x.txt"
    long = run_name([f"task.key{i}={'v' * 20}" for i in range(10)])
    assert len(long) == 120 and long != run_name([f"task.key{i}={'v' * 20}" for i in range(11)])
