"""Inference comparison after training: the trained model in float32 against dynamic int8
quantization (`torch.ao.quantization.quantize_dynamic`: int8 weights for nn.Linear and for the
fused layers that the cells mark `quantizable`, nn.LSTM and nn.GRU; PyTorch has no
dynamic-quantized tanh nn.RNN, so there only the head is quantized), on the CPU, measured on the
task's validation split."""

from __future__ import annotations

import copy
import statistics
import time
import warnings
from collections.abc import Callable

import torch
from torch import nn

from seqbench.cells import CELLS
from seqbench.tasks import Task


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def quantizable_modules() -> set[type[nn.Module]]:
    """The module types dynamic int8 quantization replaces: the head and the quantizable fused
    layers of the registered cells."""
    return {nn.Linear} | {c.fused for c in CELLS.values() if c.quantizable and c.fused}


@torch.no_grad()
def compare_inference(model: nn.Module, task: Task, repeats: int = 3) -> dict:
    """For float32 and int8 weights: the validation metrics, the time of a full validation pass
    (median of `repeats`) and the latency of a single-sequence forward (median of 20).

    The model and the task's data must be on the CPU (dynamic quantization is a CPU feature).
    """
    model = copy.deepcopy(model).eval()
    if hasattr(model, "engine"):  # float32 on the fused layer: the one int8 quantization replaces
        model.engine = False
    with warnings.catch_warnings():  # torch.ao.quantization is deprecated in favour of torchao
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        quantized = quantize_dynamic(model, quantizable_modules(), dtype=torch.qint8)
    modules = sorted(
        type(m).__name__
        for m in quantized.modules()
        if ".quantized" in type(m).__module__ and "Packed" not in type(m).__name__
    )
    state = task.generator.get_state()
    walk = task.stream.state_dict() if task.stream is not None else None  # task.stateful
    one = task.sample(1).x  # one sequence from the training distribution, for the latency
    task.generator.set_state(state)  # leave the data stream where training left it
    if walk is not None:  # and the streams: their layout, place and carried state
        task.stream.load_state_dict(walk)

    results: dict = {}
    for name, variant in (("float32", model), ("int8_dynamic", quantized)):
        results[name] = {
            **task.evaluate(variant, "val"),
            "val_pass_s": _median_seconds(lambda v=variant: task.evaluate(v, "val"), repeats),
            "latency_ms": 1000 * _median_seconds(lambda v=variant: v(one), 20),
        }
    results["speedup_val_pass"] = (
        results["float32"]["val_pass_s"] / results["int8_dynamic"]["val_pass_s"]
    )
    results["quantized_modules"] = modules
    return results
