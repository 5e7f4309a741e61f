"""Benchmark the hand-written BPTT engine (seqbench.engine) against PyTorch on CPU.

One training step = forward of the recurrent net + linear head on the last output + MSE loss
+ backward (the parameters' .grad are reset before every step). Input size 2, one layer.

Variants, timed in alternation (round-robin, in a new seeded random order every round, so that
no variant always follows the same one) so that ratios hold on a noisy machine; medians:

* ``default``   nn.RNN/nn.LSTM/nn.GRU with default settings, no denormal flushing;
* ``tuned``     the same with denormals flushed, best of oneDNN on/off. Flushing is a per-thread
  CPU flag that torch's worker threads inherit when they are created and that
  ``torch.set_flush_denormal`` sets only for the calling thread, so a process cannot switch it
  on and off for all threads. ``tuned`` therefore runs in a helper process that enables
  flushing before its thread pool exists; the parent process drives it step by step in the
  same round-robin, and only one process computes at a time;
* ``engine_norms`` seqbench.engine.recurrent with a GradNormRecorder (norms on every step);
* ``engine``    the same without recorder;
* ``engine_norms_run`` ``engine_norms`` on the model as a ``seqbench`` run initialises it
  (``ModelConfig``'s defaults: the LSTM's forget-gate bias 1.0; only cells whose run
  initialisation differs from PyTorch's). The engine's cost depends on the gradient it carries:
  where the signal vanishes more than 2**60 below the largest, it skips those steps' weight-
  gradient products; with a forget bias of 1 the LSTM's signal does not vanish that far in 200
  steps, so a run's step does every product. This is the step to hold a run against;
* ``engine_lag_rows`` ``engine_norms`` plus each sequence's own norms (``per_row``): a
  diagnostic step's lag profile on a task read once per sequence (adding, stocks, sentiment);
* ``engine_lag_probe`` ``engine_norms`` plus the lag probe of 64 (sequence, source) pairs
  (``probe``, one more backward through the saved forward without weight gradients): a
  diagnostic step's lag profile on a task read at many positions (copy, chargen). The table
  gives each as an overhead on ``engine_norms`` and, for the probe, as a share of a whole run
  with ``diagnostics.every=auto`` (one diagnostic step in ``train.steps // 50``: 2 %);
* ``floor``     only the step's matrix products (input projection, T-1 recurrent products
  forward and backward, one product each for the weight gradients), on preallocated buffers.
  The engine skips the weight-gradient products of steps whose backward signal is more than
  2**60 below the largest one, so with strongly vanishing gradients it does fewer matrix
  products than this floor.

The table is printed and written as CSV (``--csv``, default outputs/bench.csv). Peak memory
(B=128, T=1000, H=256; ``--no-mem`` skips it) is measured in a fresh single-threaded subprocess
per variant (two run side by side; memory does not depend on the thread count) and
written next to it (``*_memory.csv``): the resident-set high-water mark during one step (VmHWM
after resetting it through /proc/self/clear_refs; ru_maxrss where that is unavailable) minus
the resident set just before the step, and the bytes autograd keeps for backward (sum of the
unique storages seen by ``torch.autograd.graph.saved_tensors_hooks``), next to the engine's
analytic count of its saved buffers.

After them (not with ``--quick``), the end-to-end rows of ``scripts/e2e.py`` (the ``seqbench``
command against a plain PyTorch script, logging's cost, several runs at once), appended to
``*_e2e.csv``; ``--e2e-only`` runs just those, ``--no-e2e`` skips them.

Usage: ``python scripts/bench.py [--quick] [--csv PATH] [--repeats N] [--budget S] [--no-mem]
[--no-e2e | --e2e-only]``
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

INPUT_SIZE = 2
AUTO_EVERY = 50  # diagnostics.every=auto: one diagnostic step in train.steps // 50


def _torch():
    import torch

    return torch


def _cell(name: str):
    """The cell of a bench row: a registered name, or ``name:nonlinearity`` for a variant."""
    from seqbench.cells import get_cell

    cell, _, nonlinearity = name.partition(":")
    spec = get_cell(cell)
    return spec.with_nonlinearity(nonlinearity) if nonlinearity else spec


def bench_cells() -> list[str]:
    """The registered cells that have both engine kernels and a fused PyTorch layer, and their
    other nonlinearities as ``name:nonlinearity`` (the ReLU RNN)."""
    from seqbench.cells import CELLS

    return [
        n if nl == c.nonlinearities[0] else f"{n}:{nl}"
        for n, c in CELLS.items()
        if c.engine is not None and c.fused is not None
        for nl in c.nonlinearities
    ]


def build(cell: str, B: int, T: int, H: int, seed: int = 0):
    """Module, head, input and target, identical in every process for a given seed."""
    torch = _torch()
    g = torch.Generator().manual_seed(seed)
    cls = _cell(cell).fused
    torch.manual_seed(seed)
    mod = cls(INPUT_SIZE, H, batch_first=True)
    head = torch.nn.Linear(H, 1)
    x = torch.randn(B, T, INPUT_SIZE, generator=g)
    y = torch.randn(B, 1, generator=g)
    return mod, head, x, y


def run_init(cell: str, mod) -> bool:
    """Initialise ``mod`` as a ``seqbench`` run with the model config's defaults does (the
    LSTM's forget-gate bias); whether that changed anything (False: PyTorch's own init)."""
    from seqbench.config import ModelConfig

    spec, defaults = _cell(cell), ModelConfig(cell=cell)
    if spec.forget_gate is None and defaults.init == "default":
        return False
    spec.initialise(mod, defaults.init, defaults.forget_bias, defaults.recurrent_gain)
    return True


def torch_step(mod, head, x, y):
    def step():
        mod.zero_grad(set_to_none=True)
        head.zero_grad(set_to_none=True)
        out = mod(x)[0]
        loss = ((head(out[:, -1]) - y) ** 2).mean()
        loss.backward()

    return step


def engine_step(cell, mod, head, x, y, with_norms: bool, lag: str | None = None):
    from seqbench.engine import GradNormRecorder, recurrent

    torch = _torch()
    rec = GradNormRecorder() if with_norms else None
    if lag == "rows":
        rec.per_row = True
    elif lag == "probe":  # the default diagnostics.lag_sources pairs, each reaching every lag
        pairs = min(len(x), 64)
        rec.probe = (torch.arange(pairs), torch.full((pairs,), x.shape[1] - 1))
    spec = _cell(cell)

    def step():
        mod.zero_grad(set_to_none=True)
        head.zero_grad(set_to_none=True)
        out = recurrent(
            spec,
            x,
            list(mod._flat_weights),
            num_layers=mod.num_layers,
            hidden_size=mod.hidden_size,
            recorder=rec,
        )
        loss = ((head(out[:, -1]) - y) ** 2).mean()
        loss.backward()

    return step


def floor_step(cell, B, T, H):
    """Only the matrix products of one training step, on preallocated random buffers."""
    torch = _torch()
    G = _cell(cell).gates * H
    g = torch.Generator().manual_seed(1)
    w_ih = torch.randn(G, INPUT_SIZE, generator=g) * 0.1
    w_hh = torch.randn(G, H, generator=g) * 0.1
    xf = torch.randn(T * B, INPUT_SIZE, generator=g)
    proj = torch.empty(T * B, G)
    h = torch.randn(T, B, H, generator=g)
    gates = torch.empty(B, G)
    dG = torch.randn(T, B, G, generator=g)
    dh = torch.empty(B, H)
    dw_hh = torch.empty(G, H)
    dw_ih = torch.empty(G, INPUT_SIZE)
    w_hh_t = w_hh.t()

    def step():
        torch.mm(xf, w_ih.t(), out=proj)
        for t in range(1, T):
            torch.mm(h[t - 1], w_hh_t, out=gates)
        for t in range(T - 1, 0, -1):
            torch.mm(dG[t], w_hh, out=dh)
        torch.mm(dG[1:].reshape(-1, G).t(), h[:-1].reshape(-1, H), out=dw_hh)
        torch.mm(dG.reshape(-1, G).t(), xf, out=dw_ih)

    return step


ROW_BUDGET_S = 60.0  # a reference row's timed rounds, about (see run_reference_bench)


def reference_cells() -> list[str]:
    """The registered cells with engine kernels and no PyTorch layer (IndRNN, minGRU,
    minLSTM): timed against the autograd path through their own step equations."""
    from seqbench.cells import CELLS

    return [n for n, c in CELLS.items() if c.engine is not None and c.fused is None]


def _reference_variants(cell: str, B: int, T: int, H: int) -> dict:
    """The four timed steps of one cell and shape (see `run_reference_bench`)."""
    torch = _torch()
    from seqbench.model import SequenceModel

    torch.manual_seed(0)
    eng = SequenceModel(cell, INPUT_SIZE, 1, H, engine=True)
    ref = SequenceModel(cell, INPUT_SIZE, 1, H, engine=False)
    ref.load_state_dict(eng.state_dict())
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(B, T, INPUT_SIZE, generator=g), torch.randn(B, generator=g)
    G = eng.spec.gates * H
    xf, w_ih = x.reshape(-1, INPUT_SIZE), torch.randn(G, INPUT_SIZE, generator=g)
    proj, dG = torch.empty(T * B, G), torch.randn(T * B, G, generator=g)
    dw = torch.empty(G, INPUT_SIZE)

    def step(model, record):
        def run():
            model.zero_grad(set_to_none=True)
            out, _ = model(x, record_states=record)
            ((out[:, -1, 0] - y) ** 2).mean().backward()

        return run

    def floor():
        torch.mm(xf, w_ih.t(), out=proj)
        torch.mm(dG.t(), xf, out=dw)

    return {"reference": step(ref, False), "engine_norms": step(eng, True),
            "engine": step(eng, False), "floor": floor}  # fmt: skip


def run_reference_bench(shapes, repeats: int, cells) -> list[dict]:
    """Cells without a PyTorch layer: a training step (forward, MSE on the last output,
    backward) on the autograd path through the cell's step equations (``reference``, what
    model.engine=fused runs for them), on the engine with norms and without, and the step's
    matrix products alone (``floor``: the input projection and its weight gradient; such a
    cell has no recurrent product). Round-robin, medians. The autograd path through the step
    equations is slow at long T (minLSTM: ~30 s a step at T=1000 on 2 cores): a row whose
    warm-up round took more than ROW_BUDGET_S / `repeats` gets fewer rounds (at least 3), so
    that no row takes much more than ROW_BUDGET_S."""
    rows = []
    for B, T, H in shapes:
        for cell in cells:
            variants = _reference_variants(cell, B, T, H)
            times = {k: [] for k in variants}
            rounds, r = repeats, 0
            while r <= rounds:  # round 0 warms up
                order = list(variants)
                random.Random(r).shuffle(order)
                start = time.perf_counter()
                for name in order:
                    took = timed(variants[name])
                    if r:
                        times[name].append(took)
                if r == 0:
                    warm = time.perf_counter() - start
                    rounds = max(3, min(repeats, int(ROW_BUDGET_S / warm)))
                r += 1
            med = {k: statistics.median(v) for k, v in times.items()}
            row = {"cell": cell, "B": B, "T": T, "H": H, "rounds": rounds,
                   **{f"{k}_s": v for k, v in med.items()}}  # fmt: skip
            row["reference/engine_norms"] = med["reference"] / med["engine_norms"]
            row["norms_overhead_%"] = 100 * (med["engine_norms"] / med["engine"] - 1)
            row["engine_norms/floor"] = med["engine_norms"] / med["floor"]
            print(f"  {cell:7s} B={B} T={T} H={H}: reference {med['reference'] * 1e3:.1f} ms, "
                  f"engine+norms {med['engine_norms'] * 1e3:.1f} ms, floor "
                  f"{med['floor'] * 1e3:.1f} ms", flush=True)  # fmt: skip
            rows.append(row)
    return rows


def step_flops(cell: str, B: int, T: int, H: int) -> float:
    """Floating-point operations of one training step's matrix products (what `floor` runs):
    forward, the input projection 2*T*B*I*G and the recurrence 2*(T-1)*B*H*G; backward, the
    recurrence 2*(T-1)*B*G*H and the weight gradients 2*(T-1)*B*G*H + 2*T*B*G*I."""
    G = _cell(cell).gates * H
    return 2.0 * (2 * T * B * INPUT_SIZE * G + 3 * (T - 1) * B * H * G)


def cpu_model() -> str:
    """The CPU's model name (and, on AMD/Intel, family and model numbers), from /proc/cpuinfo."""
    fields = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        import platform

        return platform.processor() or "unknown CPU"
    flags = fields.get("flags", "").split()
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return (f"{fields.get('model name', '?')} (family {fields.get('cpu family', '?')}, model "
            f"{fields.get('model', '?')}, {vector})")  # fmt: skip


def denormal_penalty(n: int = 256, repeats: int = 21) -> float:
    """How much slower a float32 matrix product is on denormal inputs than on normal ones on
    this CPU (median time ratio): 10-100x on some, ~1x on others (AMD Zen 4). Every ratio
    against PyTorch's default path depends on it."""
    torch = _torch()
    torch.set_flush_denormal(False)  # the process default: denormals computed as such
    g = torch.Generator().manual_seed(0)
    normal = torch.randn(n, n, generator=g)
    tiny = normal * 1e-39  # float32 denormals
    assert tiny.abs().max() < torch.finfo(torch.float32).tiny
    times = {"normal": [], "tiny": []}
    for _ in range(repeats):
        for name, a in (("normal", normal), ("tiny", tiny)):
            times[name].append(timed(lambda a=a: torch.mm(a, a)))
    return statistics.median(times["tiny"]) / statistics.median(times["normal"])


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ------------------------------------------------------------------ tuned PyTorch helper process


def serve_tuned() -> None:
    """Helper process: flush denormals before torch creates any thread, then time steps on
    request (one JSON line in, one JSON line out)."""
    import warnings

    warnings.filterwarnings("ignore", message=".*TF32 acceleration on top of oneDNN.*")
    torch = _torch()
    torch.set_flush_denormal(True)
    models = {}
    for line in sys.stdin:
        req = json.loads(line)
        key = (req["cell"], req["B"], req["T"], req["H"])
        if key not in models:
            models[key] = torch_step(*build(*key))
        step = models[key]
        if req["onednn"]:
            t = timed(step)
        else:
            with torch.backends.mkldnn.flags(enabled=False):
                t = timed(step)
        sys.stdout.write(json.dumps({"t": t}) + "\n")
        sys.stdout.flush()


class TunedClient:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve-tuned"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )

    def step(self, cell, B, T, H, onednn: bool) -> float:
        req = {"cell": cell, "B": B, "T": T, "H": H, "onednn": onednn}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())["t"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


# ------------------------------------------------------------------ memory (subprocess per variant)


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak() -> bool:
    """Reset the kernel's resident-set high-water mark (VmHWM), Linux >= 4.0."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def measure_memory(variant: str, cell: str, B: int, T: int, H: int) -> dict:
    torch = _torch()
    torch.set_flush_denormal(True)  # speed only; memory does not depend on it
    torch.set_num_threads(1)  # robust on a busy machine; two workers run side by side
    mod, head, x, y = build(cell, B, T, H)
    if variant == "pytorch":
        step = torch_step(mod, head, x, y)
    else:
        step = engine_step(cell, mod, head, x, y, with_norms=True)
        import seqbench.engine as eng

        eng.native_available()  # build/load the kernels before measuring
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
        return t

    # saved-for-backward bytes (separate untimed step)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    saved = sum(seen.values())
    import gc

    gc.collect()
    if variant == "engine":
        eng.clear_buffer_cache()  # count the engine's buffers as fresh allocations
    before = _status_bytes("VmRSS")
    if _reset_peak():
        step()
        peak = _status_bytes("VmHWM")
    else:  # high-water mark since process start; may include import-time peaks
        step()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"peak_step_MiB": (peak - before) / 2**20, "saved_for_backward_MiB": saved / 2**20}


def memory_table(shape, timeout_s: float = 240.0):
    """One fresh single-threaded worker process per (cell, variant), two at a time."""
    B, T, H = shape
    jobs = [(cell, variant) for cell in bench_cells() for variant in ("pytorch", "engine")]
    procs = {}
    results = {}
    pending = list(jobs)
    while pending or procs:
        while pending and len(procs) < 2:
            cell, variant = job = pending.pop(0)
            cmd = [sys.executable, __file__, "--mem-worker", variant, cell, str(B), str(T), str(H)]
            procs[job] = (subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True), time.time())
        time.sleep(0.2)
        for job, (proc, t0) in list(procs.items()):
            if proc.poll() is not None:
                out = proc.stdout.read().strip().splitlines()
                results[job] = json.loads(out[-1]) if proc.returncode == 0 and out else None
                del procs[job]
            elif time.time() - t0 > timeout_s:
                proc.kill()
                proc.wait()
                results[job] = None
                del procs[job]
    rows = []
    for cell, variant in jobs:
        # what the engine keeps per layer: the cell's own buffers (e.g. LSTM gates (T,B,4H) and
        # cell states (T+1,B,H)), h (T+1,B,H) and the time-major input copy (T,B,I)
        per = _cell(cell).engine.saved_elements(T, B, H) + (T + 1) * B * H
        per += T * B * INPUT_SIZE
        res = results.get((cell, variant)) or {}
        rows.append(
            {
                "cell": cell,
                "variant": variant,
                "B": B,
                "T": T,
                "H": H,
                "peak_step_MiB": round(res.get("peak_step_MiB", float("nan")), 1),
                "saved_for_backward_MiB": round(res.get("saved_for_backward_MiB", float("nan")), 1),
                "engine_analytic_MiB": round(per * 4 / 2**20, 1) if variant == "engine" else None,
            }
        )
    return rows


# ------------------------------------------------------------------ main benchmark


def run_bench(shapes, repeats: int, cells, budget_s: float) -> list[dict]:
    """Round-robin timing. One warm-up round per configuration measures its cost; the number
    of timed rounds is then reduced (not below 5) if ``repeats`` would not fit ``budget_s``."""
    torch = _torch()
    import seqbench.engine as eng

    t0 = time.perf_counter()
    native = eng.native_available()
    build_s = time.perf_counter() - t0
    loop = native and eng.native.native().loop(torch.float32) is not None
    print(
        f"{cpu_model()}, load {os.getloadavg()[0]:.2f}; float32 matmul on denormals "
        f"{denormal_penalty():.2f}x the time on normal numbers\n"
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, native kernels: "
        f"{native} (load/build {build_s:.2f} s), native time loop: {loop}",
        flush=True,
    )
    tuned = TunedClient()
    configs = []
    try:
        for B, T, H in shapes:
            for cell in cells:
                mod, head, x, y = build(cell, B, T, H)
                local = {
                    "default": torch_step(mod, head, x, y),
                    "engine_norms": engine_step(cell, mod, head, x, y, True),
                    "engine": engine_step(cell, mod, head, x, y, False),
                    "engine_lag_rows": engine_step(cell, mod, head, x, y, True, "rows"),
                    "engine_lag_probe": engine_step(cell, mod, head, x, y, True, "probe"),
                    "floor": floor_step(cell, B, T, H),
                }
                run_mod = copy.deepcopy(mod)
                if run_init(cell, run_mod):
                    local["engine_norms_run"] = engine_step(cell, run_mod, head, x, y, True)
                configs.append(((cell, B, T, H), local))

        def one_round(cfg, local, times, r=0):
            # a new (seeded) order every round: the variant that runs right after another
            # process or a slow variant meets cold caches and sleeping worker threads; shuffling
            # spreads that over all variants (a mere rotation would keep the same neighbours)
            order = ["tuned", *local]
            random.Random(r).shuffle(order)
            for name in order:
                if name != "tuned":
                    times[name].append(timed(local[name]))
                    continue
                for onednn in (True, False) if r % 2 == 0 else (False, True):
                    key = "tuned_onednn" if onednn else "tuned_native"
                    times[key].append(tuned.step(*cfg, onednn))

        start = time.perf_counter()
        round_cost = []
        for cfg, local in configs:  # warm-up round (not used), also measures the cost
            t1 = time.perf_counter()
            one_round(cfg, local, {k: [] for k in [*local, "tuned_onednn", "tuned_native"]})
            round_cost.append(time.perf_counter() - t1)
        left = budget_s - (time.perf_counter() - start)
        fit = int(left / max(sum(round_cost), 1e-9))
        n_rounds = max(5, min(repeats, fit))
        if n_rounds < repeats:
            print(f"  (time budget: {n_rounds} timed rounds instead of {repeats})", flush=True)
        rows = []
        for cfg, local in configs:
            times: dict[str, list[float]] = {
                k: [] for k in [*local, "tuned_onednn", "tuned_native"]
            }
            for r in range(n_rounds):
                one_round(cfg, local, times, r)
            rows.append(summarise(cfg, times))
    finally:
        tuned.close()
    return rows


def summarise(cfg, times) -> dict:
    cell, B, T, H = cfg
    med = {k: statistics.median(v) for k, v in times.items()}
    best = min(("tuned_onednn", "tuned_native"), key=med.__getitem__)
    row = {
        "cell": cell,
        "B": B,
        "T": T,
        "H": H,
        "rounds": len(times["default"]),
        "default_s": med["default"],
        "tuned_s": med[best],
        "tuned_backend": "onednn" if best == "tuned_onednn" else "native",
        "engine_norms_s": med["engine_norms"],
        "engine_s": med["engine"],
        "floor_s": med["floor"],
        "engine_norms_run_s": med.get("engine_norms_run", med["engine_norms"]),
    }
    row["default/engine_norms"] = row["default_s"] / row["engine_norms_s"]
    row["tuned/engine_norms"] = row["tuned_s"] / row["engine_norms_s"]
    row["norms_overhead_%"] = 100 * (row["engine_norms_s"] / row["engine_s"] - 1)
    row["engine_norms/floor"] = row["engine_norms_s"] / row["floor_s"]
    row["engine_norms_run/floor"] = row["engine_norms_run_s"] / row["floor_s"]
    flops = step_flops(cell, B, T, H)
    row["engine_norms_GFLOP/s"] = flops / row["engine_norms_s"] / 1e9
    row["floor_GFLOP/s"] = flops / row["floor_s"] / 1e9
    row["lag_rows_%"] = 100 * (med["engine_lag_rows"] / med["engine_norms"] - 1)
    row["lag_probe_%"] = 100 * (med["engine_lag_probe"] / med["engine_norms"] - 1)
    row["lag_probe_%_of_run"] = row["lag_probe_%"] / AUTO_EVERY
    print(
        f"  {cell:4s} B={B} T={T} H={H}: default {row['default_s'] * 1e3:.1f} ms, "
        f"tuned {row['tuned_s'] * 1e3:.1f} ms, engine+norms {row['engine_norms_s'] * 1e3:.1f} ms, "
        f"engine {row['engine_s'] * 1e3:.1f} ms, floor {row['floor_s'] * 1e3:.1f} ms, "
        f"engine+norms at a run's init {row['engine_norms_run_s'] * 1e3:.1f} ms, "
        f"lag rows +{row['lag_rows_%']:.1f} %, lag probe +{row['lag_probe_%']:.0f} %",
        flush=True,
    )
    return row


def show(df, title: str) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover
        print(title)
        print(df.to_string(index=False))
        return
    table = Table(title=title)
    for col in df.columns:
        table.add_column(str(col), justify="right")
    for _, r in df.iterrows():
        table.add_row(*[_fmt(v) for v in r.tolist()])
    Console(width=250).print(table)


def _fmt(v) -> str:
    if isinstance(v, float):
        if v != v:
            return ""
        return f"{v:.4g}"
    return "" if v is None else str(v)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small shapes, few repeats")
    ap.add_argument("--csv", default="outputs/bench.csv")
    ap.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed rounds, a multiple of 5 (default 10, quick 5)",
    )
    ap.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds for the timing part; fewer rounds (>= 5) if needed (default 150, quick 40)",
    )
    cells = bench_cells()
    ap.add_argument("--cells", nargs="+", default=cells, choices=cells)
    ap.add_argument("--no-mem", action="store_true", help="skip the peak-memory table")
    ap.add_argument("--no-e2e", action="store_true", help="skip the end-to-end rows (e2e.py)")
    ap.add_argument("--e2e-only", action="store_true", help="only the end-to-end rows (e2e.py)")
    ap.add_argument("--serve-tuned", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mem-worker", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve_tuned:
        serve_tuned()
        return 0
    if args.mem_worker:
        variant, cell, B, T, H = args.mem_worker
        print(json.dumps(measure_memory(variant, cell, int(B), int(T), int(H))))
        return 0

    import pandas as pd

    e2e_csv = Path(args.csv).with_name(Path(args.csv).stem + "_e2e.csv")
    if args.e2e_only:
        from scripts.e2e import main as e2e

        e2e(["--csv", str(e2e_csv)])
        return 0
    if args.quick:
        shapes = [(32, 50, 64), (8, 200, 64), (16, 25, 256)]
        repeats, budget, mem_shape = args.repeats or 5, args.budget or 40, (32, 200, 64)
    else:
        shapes = [(128, 200, 128), (32, 1000, 128), (64, 100, 512)]
        repeats, budget, mem_shape = args.repeats or 10, args.budget or 150, (128, 1000, 256)
    t_start = time.perf_counter()
    rows = run_bench(shapes, repeats, args.cells, budget)
    df = pd.DataFrame(rows)
    show(df, "training step, median over round-robin rounds, seconds")
    others = reference_cells()
    if others:  # the cells PyTorch has no layer for: against their own autograd path
        ref = pd.DataFrame(run_reference_bench(shapes, repeats, others))
        show(ref, "cells without a PyTorch layer: training step, medians, seconds")
        ref.to_csv(Path(args.csv).with_name(Path(args.csv).stem + "_cells.csv"), index=False)
    csv = Path(args.csv)
    csv.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(csv, index=False)
    print(f"wrote {csv}")
    main_shape = shapes[0]
    for r in rows if not args.quick else []:  # the targets refer to the full-size shapes
        if (r["B"], r["T"], r["H"]) != main_shape:
            continue
        cell = _cell(r["cell"])
        need = 2.0 if cell.gates == 1 else 5.0  # one gate: little elementwise work to fuse
        checks = [
            f"default/engine_norms {r['default/engine_norms']:.2f}x (target >= {need:g}x)",
            f"norms overhead {r['norms_overhead_%']:.1f}% (target <= 10%)",
        ]
        if cell.cell_state:  # the LSTM: the floor target
            checks.append(f"engine_norms/floor {r['engine_norms/floor']:.2f} (target <= 2.5)")
        print(f"{r['cell']}: " + "; ".join(checks))
    if not args.no_mem:
        mem = pd.DataFrame(memory_table(mem_shape))
        show(mem, f"peak memory of one training step, B,T,H = {mem_shape}, float32")
        mem_csv = csv.with_name(csv.stem + "_memory.csv")
        mem.to_csv(mem_csv, index=False)
        print(f"wrote {mem_csv}")
    if not (args.no_e2e or args.quick):
        from scripts.e2e import main as e2e

        e2e(["--csv", str(e2e_csv)])
    print(f"total {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
