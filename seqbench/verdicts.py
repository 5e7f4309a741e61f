"""Who wins: configurations that differ in one swept key (the model, typically) at otherwise
equal settings, compared pair by pair over their seeds (`seqbench.stats`), and the verdict
lines the terminal, comparison.md, the report and TensorBoard show.

The value compared is the task's test metric where every completed run has one (the held-out
split, scored with the best validation weights), else the final validation metric.
"""

from __future__ import annotations

import itertools
import math
import textwrap
from collections.abc import Sequence

import pandas as pd

from seqbench import stats
from seqbench.numbers import key_text, key_texts

COLUMNS = ["setting", "key", "a", "b", "metric", "n_a", "n_b", "mean_a", "mean_b", "diff",
           "diff_low", "diff_high", "p_better", "p_low", "p_high", "verdict", "seeds_needed",
           "confidence"]  # fmt: skip


def decisive_metric(runs: pd.DataFrame) -> str:
    """'test_metric' where every completed run has one, else 'final_metric'."""
    done = runs[runs["status"] == "completed"]
    if len(done) and "test_metric" in done and done["test_metric"].notna().all():
        return "test_metric"
    return "final_metric"


def compared_key(runs: pd.DataFrame, by: Sequence[str], vs: str | None = None) -> str | None:
    """The key whose values are compared: `vs`, else the model when it varies, else the one
    group key that varies (None when none or several do)."""
    if vs is not None:
        return vs
    varying = [k for k in by if runs[k].map(str).nunique() > 1]
    if "model" in varying:
        return "model"
    return varying[0] if len(varying) == 1 else None


def pair_frame(runs: pd.DataFrame, by: Sequence[str], vs: str | None = None) -> pd.DataFrame:
    """One row per pair of configurations in the same setting (every group key but the compared
    one equal), ordered best first within a setting; intervals Bonferroni-corrected over all
    the pairs of the table (see `seqbench.stats`)."""
    key = compared_key(runs, by, vs)
    done = runs[runs["status"] == "completed"]
    if key is None or done.empty:
        return pd.DataFrame(columns=COLUMNS)
    metric = decisive_metric(runs)
    mode = done["mode"].dropna().iloc[0] if done["mode"].notna().any() else "min"
    others = [k for k in by if k != key and runs[k].map(str).nunique() > 1]
    settings = done.groupby(others, sort=True, dropna=False) if others else [((), done)]
    texts = {k: _texts(done[k]) for k in [*others, key]}  # as the tables write them
    jobs = []
    for values, group in settings:
        values = values if isinstance(values, tuple) else (values,)
        setting = ", ".join(
            f"{k.rsplit('.', 1)[-1]}={texts[k](v)}" for k, v in zip(others, values, strict=True)
        )
        seeds = {name: g[metric].to_numpy(dtype=float) for name, g in group.groupby(key)}
        order = sorted(seeds, key=lambda n: _rank(seeds[n], mode))
        jobs += [(setting, a, b, seeds[a], seeds[b]) for a, b in itertools.combinations(order, 2)]
    level = stats.corrected(len(jobs))
    rows = []
    for setting, a, b, va, vb in jobs:
        p = stats.compare_pair(va, vb, mode, level, (texts[key](a), texts[key](b)))
        rows.append({
            "setting": setting, "key": key, "a": p.a, "b": p.b, "metric": metric,
            "n_a": p.n_a, "n_b": p.n_b, "mean_a": _mean(va), "mean_b": _mean(vb),
            "diff": p.diff, "diff_low": p.low, "diff_high": p.high, "p_better": p.p_better,
            "p_low": p.p_low, "p_high": p.p_high, "verdict": p.verdict,
            "seeds_needed": p.seeds_needed, "confidence": p.confidence,
        })  # fmt: skip
    return pd.DataFrame(rows, columns=COLUMNS)


def _texts(values: pd.Series):
    """value -> its text (`numbers.key_texts` over the key's distinct values; 'n/a' for a gap)."""
    unique = list(dict.fromkeys(v for v in values if not pd.isna(v)))
    known = dict(zip(unique, key_texts(unique), strict=True))
    return lambda value: key_text(value) if pd.isna(value) else known.get(value, key_text(value))


def _mean(values) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _rank(values, mode: str) -> float:
    mean = _mean(values)
    if math.isnan(mean):
        return math.inf
    return mean if mode == "min" else -mean


def _phrase(row: pd.Series) -> str:
    """'gru better than lstm (P=0.94 [0.71, 1.0])', 'lstm ~ rnn', 'a ? b (one seed)'."""
    if row["verdict"] == "n/a":
        return f"{row['a']} ? {row['b']} (too few seeds)"
    if row["verdict"] == "tie":
        need = row["seeds_needed"]
        hint = "" if pd.isna(need) else f" (~{int(need)} seeds to tell)"
        return f"{row['a']} ~ {row['b']}{hint}"
    word = "better" if row["verdict"] == "better" else "worse"
    return (f"{row['a']} {word} than {row['b']} (P={row['p_better']:.2g} "
            f"[{row['p_low']:.2g}, {row['p_high']:.2g}])")  # fmt: skip


def verdict_lines(pairs: pd.DataFrame, width: int = 100) -> list[str]:
    """One line per setting (folded to `width`): its neighbours in ranked order, best first,
    e.g. 'seq_len=100: gru better than lstm (P=1 [0.5, 1]), lstm ~ rnn'; then a line naming
    the metric and the correction."""
    if pairs.empty:
        return []
    lines = []
    for setting, group in pairs.groupby("setting", sort=False):
        order = list(dict.fromkeys([*group["a"], *group["b"]]))  # ranked: a before b
        steps = []
        for first, second in itertools.pairwise(order):
            row = group[(group["a"] == first) & (group["b"] == second)]
            if len(row):
                steps.append(_phrase(row.iloc[0]))
        text = (f"{setting}: " if setting else "") + ", ".join(steps)
        lines += textwrap.wrap(text, width, subsequent_indent="    ", break_on_hyphens=False)
    first = pairs.iloc[0]
    metric = "test metric" if first["metric"] == "test_metric" else "final validation metric"
    note = (f"Who wins on the {metric}, over seeds: a pair is a tie when the difference of its "
            f"means is within Welch's interval; P = P(better), the chance a seed of one beats "
            f"a seed of the other; intervals {first['confidence']:.3g} each (Bonferroni over "
            f"{len(pairs)} pair{'s' * (len(pairs) > 1)}).")  # fmt: skip
    return lines + textwrap.wrap(note, width)


def pairs_markdown(pairs: pd.DataFrame) -> str:
    """Every pair as a Markdown table (comparison.md, the report)."""
    from seqbench.numbers import format_cells

    if pairs.empty:
        return ""
    diffs = format_cells(pairs["diff"], [math.nan] * len(pairs), pairs["diff_low"],
                         pairs["diff_high"])  # fmt: skip
    table = pd.DataFrame({
        "setting": pairs["setting"].replace("", "all"),
        "a": pairs["a"], "b": pairs["b"],
        "seeds": pairs["n_a"].astype(str) + " / " + pairs["n_b"].astype(str),
        "mean a − b [interval]": diffs,
        "P(a better) [interval]": [
            f"{p:.2g} [{lo:.2g}, {hi:.2g}]" if not math.isnan(lo) else f"{p:.2g}"
            for p, lo, hi in zip(pairs["p_better"], pairs["p_low"], pairs["p_high"],
                                 strict=True)
        ],
        "verdict": [_word(r) for _, r in pairs.iterrows()],
    })  # fmt: skip
    return table.to_markdown(index=False)


def _word(row: pd.Series) -> str:
    if row["verdict"] == "tie":
        need = row["seeds_needed"]
        return "tie" + ("" if pd.isna(need) else f" (~{int(need)} seeds to tell)")
    return {"better": "a better", "worse": "b better"}.get(row["verdict"], "too few seeds")
