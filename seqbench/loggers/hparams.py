"""TensorBoard HParams summaries with the types TensorBoard's HParams API has.

`torch.utils.tensorboard.summary.hparams` tests `isinstance(v, (int, float))` before `bool`, so a
boolean (`model.bidirectional`) is written as the number 0.0000; and it writes an `Experiment` in
every run, so in a sweep the dashboard shows one run's experiment, in which nothing "differs".
Here a run writes its session (start: typed values; end: status), and the experiment is written
once: by a single run for itself, or at the end of a sweep from every job's values, with the
domain and `differs` of each key computed over the jobs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from google.protobuf import struct_pb2
from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

STATUS = {"completed": "STATUS_SUCCESS", "diverged": "STATUS_FAILURE", "failed": "STATUS_FAILURE",
          "interrupted": "STATUS_RUNNING", "pruned": "STATUS_SUCCESS"}  # fmt: skip


def typed(value) -> tuple[int, struct_pb2.Value] | None:
    """(HParams data type, protobuf value) of a config value; None is left out; lists as text."""
    if value is None:
        return None
    if isinstance(value, bool):  # before int: bool is an int in Python
        return api_pb2.DATA_TYPE_BOOL, struct_pb2.Value(bool_value=value)
    if isinstance(value, int | float):
        return api_pb2.DATA_TYPE_FLOAT64, struct_pb2.Value(number_value=value)
    return api_pb2.DATA_TYPE_STRING, struct_pb2.Value(string_value=str(value))


def _summary(tag: str, data: plugin_data_pb2.HParamsPluginData) -> Summary:
    data.version = metadata.PLUGIN_DATA_VERSION
    plugin = SummaryMetadata.PluginData(
        plugin_name=metadata.PLUGIN_NAME, content=data.SerializeToString()
    )
    return Summary(value=[Summary.Value(tag=tag, metadata=SummaryMetadata(plugin_data=plugin))])


def session_summaries(hparams: dict, status: str) -> list[Summary]:
    """A run's session: its hyperparameter values (typed), then how it ended."""
    start = plugin_data_pb2.SessionStartInfo()
    for name, value in hparams.items():
        if (entry := typed(value)) is not None:
            start.hparams[name].CopyFrom(entry[1])
    end = plugin_data_pb2.SessionEndInfo(
        status=api_pb2.Status.Value(STATUS.get(status, "STATUS_UNKNOWN"))
    )
    Data = plugin_data_pb2.HParamsPluginData
    return [
        _summary(metadata.SESSION_START_INFO_TAG, Data(session_start_info=start)),
        _summary(metadata.SESSION_END_INFO_TAG, Data(session_end_info=end)),
    ]


def experiment_summary(runs: Iterable[dict], metrics: Iterable[str]) -> Summary:
    """The experiment over `runs` (each a dict of hyperparameter values): each key's type, its
    domain (the values seen; an interval for numbers) and whether it differs between runs."""
    values: dict[str, list[tuple[int, struct_pb2.Value]]] = {}
    for hparams in runs:
        for name, value in hparams.items():
            if (entry := typed(value)) is not None:
                values.setdefault(name, []).append(entry)
    infos = []
    for name, entries in values.items():
        kinds = {kind for kind, _ in entries}
        kind = kinds.pop() if len(kinds) == 1 else api_pb2.DATA_TYPE_STRING
        info = api_pb2.HParamInfo(name=name, type=kind)
        if kind == api_pb2.DATA_TYPE_FLOAT64:
            numbers = sorted({v.number_value for _, v in entries if math.isfinite(v.number_value)})
            if numbers:
                info.domain_interval.min_value, info.domain_interval.max_value = (
                    numbers[0],
                    numbers[-1],
                )
            info.differs = len(numbers) > 1
        else:
            seen = {_text(v): v for _, v in entries}
            if kind == api_pb2.DATA_TYPE_STRING:
                seen = {text: struct_pb2.Value(string_value=text) for text in seen}
            info.domain_discrete.values.extend(seen[text] for text in sorted(seen))
            info.differs = len(seen) > 1
        infos.append(info)
    experiment = api_pb2.Experiment(
        hparam_infos=infos,
        metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag)) for tag in metrics],
    )
    return _summary(
        metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment)
    )


def _text(value: struct_pb2.Value) -> str:
    kind = value.WhichOneof("kind")
    return str(getattr(value, kind)) if kind else ""
