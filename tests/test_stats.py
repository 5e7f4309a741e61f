"""Intervals, the probability of improvement and the verdicts of a comparison (seqbench.stats,
seqbench.verdicts), on hand-made samples whose values are worked out in each docstring or taken
from SciPy's own functions; the number format of every table (compare.format_cells)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from seqbench import stats
from seqbench.compare import aggregate, format_cells, terminal_table, to_display
from seqbench.verdicts import COLUMNS, pair_frame, pairs_markdown, verdict_lines


def test_mean_interval_is_students_t():
    """[1, 2, 3]: mean 2, std 1, t(0.975, df=2) = 4.3027: 2 ± 4.3027 / sqrt(3) = 2 ± 2.4841."""
    low, high = stats.mean_interval([1.0, 2.0, 3.0])
    assert (low, high) == pytest.approx((-0.4841, 4.4841), abs=1e-4)
    assert stats.mean_interval([5.0]) == pytest.approx((math.nan, math.nan), nan_ok=True)
    assert stats.mean_interval([2.0, 2.0, 2.0]) == (2.0, 2.0)  # no spread: the mean itself
    assert stats.mean_interval([1.0, math.nan, 3.0]) == pytest.approx(  # NaN left out
        sps.ttest_1samp([1.0, 3.0], 0).confidence_interval(0.95)
    )


def test_proportion_interval_is_wilsons():
    """3 of 3 at z = 1.96: centre (1 + z²/6) / (1 + z²/3) = 0.7192, half-width
    z / (1 + z²/3) * sqrt(z² / 36) = 0.2808: [0.4385, 1.0]."""
    low, high = stats.proportion_interval(3, 3)
    assert low == pytest.approx(0.4385, abs=1e-4) and high == pytest.approx(1.0)
    ci = sps.binomtest(1, 3).proportion_ci(0.95, method="wilson")
    assert stats.proportion_interval(1, 3) == pytest.approx((ci.low, ci.high))
    assert all(math.isnan(v) for v in stats.proportion_interval(0, 0))
    z, k, n = sps.norm.ppf(0.995), 2, 7  # at 99 %, the closed form
    centre, half = (
        (k + z**2 / 2) / (n + z**2),
        z / (n + z**2) * math.sqrt(k * (n - k) / n + z**2 / 4),
    )
    assert stats.proportion_interval(k, n, 0.99) == pytest.approx((centre - half, centre + half))


def test_improvement_probability_counts_ties_half():
    """a = [1, 2, 3] against b = [2, 2, 4], higher is better: a wins 2 of the 9 pairs (3 > 2
    twice) and ties 2 (2 = 2): (2 + 2/2) / 9 = 1/3; Mann-Whitney's U / (n m) is the same."""
    a, b = [1.0, 2.0, 3.0], [2.0, 2.0, 4.0]
    assert stats.improvement_probability(a, b, "max") == pytest.approx(1 / 3)
    u = sps.mannwhitneyu(a, b).statistic
    assert stats.improvement_probability(a, b, "max") == pytest.approx(u / 9)
    assert stats.improvement_probability(a, b, "min") == pytest.approx(1 - 1 / 3)
    g = np.random.default_rng(4)  # small integers: many ties, many differences of exactly 1
    a, b = g.integers(0, 4, 7).astype(float), g.integers(0, 4, 5).astype(float)
    for mode, better in (("min", lambda x, y: x < y), ("max", lambda x, y: x > y)):
        score = sum(1.0 if better(x, y) else 0.5 if x == y else 0.0 for x in a for y in b)
        assert stats.improvement_probability(a, b, mode) == pytest.approx(score / 35)


def test_welch_difference_interval_and_the_verdict():
    """a = [1, 2, 3], b = [4, 5, 6]: difference -3, standard error sqrt(1/3 + 1/3) = 0.8165,
    Welch's df = 4, t(0.975, 4) = 2.7764: -3 ± 2.2669 = [-5.2669, -0.7331], all below 0, so a
    is better where lower is better, worse where higher is."""
    pair = stats.compare_pair([1, 2, 3], [4, 5, 6], "min", 0.95)
    assert (pair.diff, pair.low, pair.high) == pytest.approx((-3.0, -5.2669, -0.7331), abs=1e-4)
    assert pair.verdict == "better" and pair.p_better == 1.0 and pair.seeds_needed is None
    assert stats.compare_pair([1, 2, 3], [4, 5, 6], "max", 0.95).verdict == "worse"
    assert pair.p_low <= pair.p_better <= pair.p_high == 1.0
    assert stats.compare_pair([1.0], [4, 5, 6], "min", 0.95).verdict == "n/a"


def test_the_verdict_flips_when_one_seed_crosses_the_line():
    """b = [4, 5, x]: with x = 6 the interval of the difference is [-5.27, -0.73] (better);
    moving that one seed to x = 3 gives b's mean 4 and the same spread: -2 ± 2.2669 =
    [-4.27, 0.27], which holds 0 (a tie); the line is where the upper end crosses 0."""
    assert stats.compare_pair([1, 2, 3], [4, 5, 6], "min", 0.95).verdict == "better"
    tie = stats.compare_pair([1, 2, 3], [4, 5, 3], "min", 0.95)
    assert tie.verdict == "tie" and (tie.low, tie.high) == pytest.approx((-4.2669, 0.2669),
                                                                         abs=1e-4)  # fmt: skip
    # the seeds that would separate them: the smallest n with (t(0.975, df) + t(0.8, df)) *
    # sqrt(2 / n) <= 2, df = 2 (n - 1) for two equal spreads of 1 (checked at n - 1 and n)
    n = tie.seeds_needed
    assert n is not None and n > 3
    quantiles = [sps.t.ppf(0.975, 2 * (k - 1)) + sps.t.ppf(0.8, 2 * (k - 1)) for k in (n - 1, n)]
    assert quantiles[0] * math.sqrt(2 / (n - 1)) > 2 >= quantiles[1] * math.sqrt(2 / n)


def runs_frame(values: dict[str, list[float]], mode: str = "min", **keys) -> pd.DataFrame:
    rows = []
    for model, seeds in values.items():
        for seed, value in enumerate(seeds):
            rows.append({"model": model, "task": "t", **keys, "seed": seed, "status": "completed",
                         "metric": "mse", "mode": mode, "final_metric": value,
                         "test_metric": math.nan, "solved": False})  # fmt: skip
    return pd.DataFrame(rows)


@pytest.mark.parametrize(
    ("a", "b"), [([1, 2, 3], [2, 3, 4]), ([0, 1], [0.5, 1.5]), ([1, 2, 3, 5], [2, 2.5, 6])]
)
def test_seeds_needed_is_the_smallest_n_with_the_power(a, b):
    """For any tie, including a difference of exactly 1 and spreads summing to exactly 1: the
    smallest n with (t(1 - alpha/2, df) + t(0.8, df)) sqrt((s_a^2 + s_b^2) / n) <= |d|, df
    Welch's for n seeds each (checked at n - 1 and n)."""
    d = abs(np.mean(a) - np.mean(b))
    va, vb = np.var(a, ddof=1), np.var(b, ddof=1)
    n = stats.seeds_needed(np.array(a, float), np.array(b, float), 0.95)
    assert n is not None and n > max(len(a), len(b))

    def power_reached(k: int) -> bool:
        df = (k - 1) * (va + vb) ** 2 / (va**2 + vb**2)
        return (sps.t.ppf(0.975, df) + sps.t.ppf(0.8, df)) * math.sqrt((va + vb) / k) <= d

    assert power_reached(n) and not power_reached(n - 1)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ([1, 2], [5, 6.5]),
        ([1, 2], [1.5, 2.5, 9]),
        ([3, 3, 3], [1, 2, 4.5]),
        ([1, 2, 4.5], [3, 3]),
        ([1, 2], [3, 3, 3]),
        ([3, 3], [1, 2]),
    ],
)
def test_welch_interval_with_two_seeds_and_with_one_side_without_spread(a, b):
    """Two seeds on a side are enough for an interval; a side whose seeds all agree still has
    Welch's interval from the other side's spread (SciPy's, not the bare difference)."""
    pair = stats.compare_pair(a, b, "min", 0.95)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ci = sps.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (pair.low, pair.high) == pytest.approx((ci.low, ci.high))
    assert pair.low < pair.diff < pair.high
    expected = "tie" if ci.low <= 0 <= ci.high else ("better" if ci.high < 0 else "worse")
    assert pair.verdict == expected


def test_no_spread_on_either_side_and_a_reproducible_bootstrap():
    """Seeds that all agree on both sides: the difference is exact (its interval is the point);
    P(better)'s interval is SciPy's percentile bootstrap with a fixed seed, the same on every
    call whatever numpy's global state."""
    exact = stats.compare_pair([1, 1], [2, 2, 2], "min", 0.95)
    assert (exact.diff, exact.low, exact.high, exact.verdict) == (-1, -1, -1, "better")
    assert (exact.p_low, exact.p_better, exact.p_high) == (1.0, 1.0, 1.0)
    g = np.random.default_rng(5)  # 15 seeds a side: P has 225 values, where the resamples show
    a, b = g.normal(0.45, 0.2, 15), g.normal(0.55, 0.2, 15)
    first = stats.compare_pair(a, b, "min", 0.95)
    np.random.seed(123)
    np.random.rand(10)
    again = stats.compare_pair(a, b, "min", 0.95)
    assert (first.p_low, first.p_high) == (again.p_low, again.p_high)
    boot = sps.bootstrap((a, b), lambda x, y: stats.improvement_probability(x, y, "min"),
                         paired=False, vectorized=False, n_resamples=stats.RESAMPLES,
                         method="percentile", rng=np.random.default_rng(0))  # fmt: skip
    ci = boot.confidence_interval
    assert (first.p_low, first.p_high) == (ci.low, ci.high)
    assert first.p_low < first.p_better < first.p_high


def test_equal_seeds_tie_and_a_higher_a_is_worse_for_min_and_better_for_max():
    """Both sides the same constant: a tie (the interval is the point 0), with no seed count
    to tell them apart. a above b with an interval inside (0, 1): worse when lower is better,
    better when higher is."""
    same = stats.compare_pair([1, 1, 1], [1, 1], "min", 0.95)
    assert (same.low, same.high, same.verdict, same.seeds_needed) == (0, 0, "tie", None)
    a, b = [0.5, 0.52, 0.51], [0.1, 0.11, 0.12]
    lower = stats.compare_pair(a, b, "min", 0.95)
    assert 0 < lower.low < lower.high < 1 and lower.verdict == "worse"
    assert stats.compare_pair(a, b, "max", 0.95).verdict == "better"


def test_seeds_needed_at_its_bounds():
    """Two seeds each when they already give the power; None without any spread."""
    assert stats.seeds_needed(np.array([0.0, 1.0]), np.array([100.0, 101.0]), 0.95) == 2
    assert stats.seeds_needed(np.array([1.0, 1.0]), np.array([2.0, 2.0]), 0.95) is None


def test_a_configuration_whose_every_seed_diverged_is_too_few_seeds_without_warnings():
    """Every seed NaN (diverged runs): no difference, no P, verdict n/a, and no numpy
    warning about the mean of an empty array in the user's terminal."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pair = stats.compare_pair([math.nan, math.nan], [1.0, 2.0, 3.0], "min", 0.95)
    assert (pair.n_a, pair.n_b, pair.verdict) == (0, 3, "n/a")
    assert math.isnan(pair.diff) and math.isnan(pair.p_better)
    assert math.isnan(pair.low) and math.isnan(pair.p_low) and math.isnan(pair.p_high)


def test_bonferroni_correction_over_the_pairs_of_a_table():
    """Alone, a = [1, 2, 3] beats b = [4, 5, 6] at 95%. In a table of three models (three
    pairs) every interval is taken at 1 - 0.05/3: t(0.99167, 4) = 4.1 gives a half-width of
    3.35 > 3, so the same pair is a tie."""
    assert stats.corrected(3) == pytest.approx(1 - 0.05 / 3)
    two = pair_frame(runs_frame({"a": [1, 2, 3], "b": [4, 5, 6]}), ["model", "task"])
    assert two["verdict"].tolist() == ["better"] and two["confidence"].iloc[0] == 0.95
    three = pair_frame(runs_frame({"a": [1, 2, 3], "b": [4, 5, 6], "c": [40, 50, 60]}),
                       ["model", "task"])  # fmt: skip
    row = three[(three["a"] == "a") & (three["b"] == "b")].iloc[0]
    assert row["confidence"] == pytest.approx(1 - 0.05 / 3) and row["verdict"] == "tie"
    half = sps.t.ppf(1 - 0.05 / 6, 4) * math.sqrt(2 / 3)
    assert (row["diff_low"], row["diff_high"]) == pytest.approx((-3 - half, -3 + half))


def test_pairs_are_within_a_setting_and_ranked():
    """Two settings (seq_len 50 and 100): pairs compare models at equal seq_len only, best first;
    the verdict lines name each setting."""
    runs = pd.concat([
        runs_frame({"rnn": [0.9, 0.91, 0.92], "gru": [0.1, 0.11, 0.12], "lstm": [0.5, 0.51, 0.52]},
                   **{"task.seq_len": 50}),
        runs_frame({"rnn": [1.0, 1.0, 1.0], "gru": [0.9, 1.1, 1.0], "lstm": [1.0, 1.2, 0.8]},
                   **{"task.seq_len": 100}),
    ])  # fmt: skip
    pairs = pair_frame(runs, ["model", "task", "task.seq_len"])
    assert len(pairs) == 6 and set(pairs["setting"]) == {"seq_len=50", "seq_len=100"}
    first = pairs[pairs["setting"] == "seq_len=50"]
    assert first[["a", "b"]].values.tolist() == [["gru", "lstm"], ["gru", "rnn"], ["lstm", "rnn"]]
    lines = verdict_lines(pairs)
    assert lines[0].startswith("seq_len=50: gru better than lstm (P=1 [")
    assert ", lstm better than rnn (P=1 [" in lines[0]
    assert any(line.startswith("seq_len=100: ") and " ~ " in line for line in lines)
    assert all(len(line) <= 100 for line in lines)
    table = [[c.strip() for c in row.split("|")[1:-1]] for row in
             pairs_markdown(pairs).splitlines()[2:]]  # fmt: skip
    # -0.4 ± t(1 - 0.05/12, df 4) * sqrt(2 * 0.01² / 3) = -0.4 ± 0.0396 (6 pairs: Bonferroni)
    half = sps.t.ppf(1 - 0.05 / 12, 4) * math.sqrt(2 * 0.01**2 / 3)
    assert half == pytest.approx(0.0396, abs=1e-4)
    assert table[0][:5] == ["seq_len=50", "gru", "lstm", "3 / 3", "-0.400 [-0.440, -0.360]"]
    assert table[0][6] == "a better" and table[-1][6].startswith("tie")


def test_settings_of_two_keys_a_missing_value_and_none_with_a_pair():
    """A setting named by two keys ("seq_len=50, hidden_size=8"); runs that lack a key form a
    setting of their own ("=n/a"), not dropped, and the others keep their ints (a column of
    ints with a gap, as load_runs reads it); settings where only one configuration ran give no
    pairs, and an empty frame with every column."""
    both = {"a": [1, 2, 3], "b": [4, 5, 6]}
    runs = pd.concat([
        runs_frame(both, **{"task.seq_len": seq_len, "model.hidden_size": hidden})
        for seq_len, hidden in ((50, 8), (100, 8), (50, 16), (None, 16))
    ]).astype({"task.seq_len": "Int64"})  # fmt: skip
    pairs = pair_frame(runs, ["model", "task", "task.seq_len", "model.hidden_size"], vs="model")
    assert sorted(pairs["setting"]) == [
        "seq_len=100, hidden_size=8", "seq_len=50, hidden_size=16",
        "seq_len=50, hidden_size=8", "seq_len=n/a, hidden_size=16",
    ]  # fmt: skip
    lonely = pd.concat([runs_frame({"a": [1, 2]}, **{"task.seq_len": 50}),
                        runs_frame({"b": [3, 4]}, **{"task.seq_len": 100})])  # fmt: skip
    none = pair_frame(lonely, ["model", "task", "task.seq_len"], vs="model")
    assert none.empty and list(none.columns) == COLUMNS


def test_the_pairs_table_of_one_setting():
    """comparison.md's pairs table when only the model varies: its header, the setting "all",
    the seeds of each side, P(a better) with its interval (alone when there is none), and each
    verdict's word. max mode: a = [10, 11, 12] beats b = [0, 1, 2] in every pair of seeds, and
    by more than Welch's half-width over 3 pairs (t(1 - 0.05/6, 4) sqrt(2/3) = 3.96)."""
    runs = runs_frame({"a": [10, 11, 12], "b": [0, 1, 2], "c": [20]}, mode="max")
    pairs = pair_frame(runs, ["model", "task"])
    lines = pairs_markdown(pairs).splitlines()
    header = [c.strip() for c in lines[0].split("|")[1:-1]]
    assert header == ["setting", "a", "b", "seeds", "mean a − b [interval]",
                      "P(a better) [interval]", "verdict"]  # fmt: skip
    table = {(r[1], r[2]): r for r in
             ([c.strip() for c in row.split("|")[1:-1]] for row in lines[2:])}  # fmt: skip
    assert set(table) == {("c", "a"), ("c", "b"), ("a", "b")}  # best first: c, a, b
    assert {row[0] for row in table.values()} == {"all"}
    ab = table[("a", "b")]
    assert ab[3] == "3 / 3" and ab[4].startswith("10.0")
    assert ab[5].startswith("1 [") and ab[6] == "a better"
    ca = table[("c", "a")]  # one seed of c: P without an interval, no verdict
    assert (ca[3], ca[5], ca[6]) == ("1 / 3", "1", "too few seeds")
    empty = pair_frame(runs.iloc[:0], ["model", "task"])
    assert pairs_markdown(empty) == "" and list(empty.columns) == COLUMNS


def test_runs_without_a_mode_count_lower_as_better_and_a_wholly_diverged_one_ranks_last():
    """Runs whose results name no mode (lower is better, as for every loss), and a
    configuration whose every seed diverged: ranked last, its mean NaN, too few seeds."""
    runs = runs_frame({"a": [1, 2, 3], "b": [4, 5, 6]}, mode=math.nan)
    pair = pair_frame(runs, ["model", "task"]).iloc[0]
    assert [pair["a"], pair["b"], pair["verdict"]] == ["a", "b", "better"]
    runs = runs_frame({"a": [math.nan, math.nan], "b": [4, 5, 6], "c": [1, 2, 3]})
    pairs = pair_frame(runs, ["model", "task"])
    assert pairs[["a", "b"]].values.tolist() == [["c", "b"], ["c", "a"], ["b", "a"]]
    last = pairs.iloc[-1]
    assert math.isnan(last["mean_b"]) and last["mean_a"] == 5 and last["verdict"] == "n/a"


def test_the_test_metric_decides_where_every_run_has_one():
    runs = runs_frame({"a": [1, 2, 3], "b": [4, 5, 6]}, mode="max")
    runs["test_metric"] = [9, 9.1, 9.2, 1, 1.1, 1.2]  # reversed: a wins on test
    pairs = pair_frame(runs, ["model", "task"])
    assert pairs.iloc[0][["a", "b", "metric", "verdict"]].tolist() == [
        "a", "b", "test_metric", "better"]  # fmt: skip
    assert "Who wins on the test metric, over seeds" in " ".join(verdict_lines(pairs))


def test_the_verdict_lines_say_how_sure_and_on_what():
    """A tie names the seeds that would tell the two apart (stats.seeds_needed), in the line
    and in the pairs table; a tie of equal means names none; the note names the metric that
    decided; a long line folds with an indent."""
    tie = pair_frame(runs_frame({"a": [1, 2, 3], "b": [4, 5, 3]}), ["model", "task"])
    need = stats.compare_pair([1, 2, 3], [4, 5, 3], "min", 0.95).seeds_needed
    assert need is not None and need > 3
    lines = verdict_lines(tie)
    assert lines[0] == f"a ~ b (~{need} seeds to tell)"
    assert "Who wins on the final validation metric, over seeds" in " ".join(lines[1:])
    assert pairs_markdown(tie).splitlines()[2].split("|")[-2].strip() == (
        f"tie (~{need} seeds to tell)"
    )
    level = pair_frame(runs_frame({"a": [1, 2, 3], "b": [3, 1, 2]}), ["model", "task"])
    assert verdict_lines(level)[0] == "a ~ b"  # equal means: no number of seeds tells them
    assert pairs_markdown(level).splitlines()[2].split("|")[-2].strip() == "tie"
    names = {f"model-number-{i}": [i, i + 0.01, i + 0.02] for i in range(4)}
    folded = verdict_lines(pair_frame(runs_frame(names), ["model", "task"]), width=40)
    first_note = next(i for i, line in enumerate(folded) if line.startswith("Who wins"))
    assert first_note > 1 and all(line.startswith("    ") for line in folded[1:first_note])
    assert all(len(line) <= 40 for line in folded)
    assert "model-number-0 better than model-number-1" in " ".join(
        line.strip() for line in folded[:first_note])  # fmt: skip


def test_aggregate_gives_intervals_beside_mean_and_std():
    runs = runs_frame({"a": [1.0, 2.0, 3.0]})
    runs["solved"] = [True, True, False]
    row = aggregate(runs).iloc[0]
    assert (row["final_metric_low"], row["final_metric_high"]) == pytest.approx(
        (-0.4841, 4.4841), abs=1e-4)  # fmt: skip
    assert (row["solved_low"], row["solved_high"]) == pytest.approx(
        stats.proportion_interval(2, 3))  # fmt: skip
    shown = to_display(aggregate(runs)).iloc[0]
    assert shown["final_metric"] == "2.0 ± 1.0 [-0.5, 4.5]"
    assert shown["solved"] == "2/3 [0.21, 0.94]"


# the cases issue #30 quotes: "0.1558 ± 0.003" beside "0.1504 ± 0.0017", "-2.319 ± 0.3",
# "1 ± 0.00021" and "0.09456 ± 6.2e-06"
@pytest.mark.parametrize(("mean", "std", "text"), [
    (0.1558, 0.003, "0.1558 ± 0.0030"),
    (0.1504, 0.0017, "0.1504 ± 0.0017"),
    (-2.319, 0.3, "-2.32 ± 0.30"),
    (1.0, 0.00021, "1.00000 ± 0.00021"),
    (0.1419, 0.0024, "0.1419 ± 0.0024"),
    (1900.0, 283.0, "1900 ± 280"),
    (0.5, math.nan, "0.5"),
])  # fmt: skip
def test_spread_to_two_digits_and_the_mean_to_the_same_place(mean, std, text):
    assert format_cells([mean], [std]) == [text]


def test_a_column_needing_scientific_notation_is_scientific_throughout():
    """6.2e-06 needs 7 decimals: the whole column switches, the other cell too."""
    cells = format_cells([0.09456, 0.1], [6.2e-06, 0.01])
    assert cells == ["9.45600e-02 ± 6.2e-06", "1.00e-01 ± 1.0e-02"]
    assert format_cells([1900.0], [283.0], integer=True) == ["1,900 ± 280"]
    assert format_cells([2500.0], [0.0], integer=True) == ["2,500"]
    assert format_cells([-math.inf, math.nan], [math.nan] * 2) == ["-inf", "n/a"]
    assert format_cells([0.1419], [0.0024], [0.13594], [0.14786]) == [
        "0.1419 ± 0.0024 [0.1359, 0.1479]"]  # fmt: skip


def test_terminal_table_and_verdicts_fit_100_columns():
    """Rendered as the terminal shows them: the final metric with its interval, then one verdict
    line per setting, nothing wider than 100 columns and nothing cut."""
    from rich.console import Console

    runs = runs_frame({"rnn": [0.16, 0.17, 0.165], "gru": [0.1419, 0.1443, 0.1395],
                       "lstm": [0.1595, 0.1541, 0.1649]}, **{"task.seq_len": 100})  # fmt: skip
    runs["init_vanishing_ratio"] = -2.319
    table = aggregate(runs, ["model", "task", "task.seq_len"])
    console = Console(width=100, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(terminal_table(table, "copy_lengths"), soft_wrap=False)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 100
    assert "0.1419 ± 0.0024" in text and "[0.1359, 0.1479]" in text.replace("\n", "")
    lines = verdict_lines(pair_frame(runs, ["model", "task", "task.seq_len"]))
    assert lines[0].startswith("gru better than lstm") or lines[0].startswith("gru ")
    assert all(len(line) <= 100 for line in lines)
    assert np.isfinite(table["final_metric_low"]).all()


def test_long_float_values_are_shortened_as_far_as_their_column_allows():
    """An Optuna search's learning rates (0.006995044937418831) read '0.006995' in the tables
    and the verdicts: floats of more than 6 significant digits to the fewest digits (4 or more)
    that keep the key's distinct values distinct; short floats, ints, names and gaps as
    before. The comparison.csv columns keep the values whole."""
    from seqbench.compare import _short_parts
    from seqbench.numbers import key_texts

    trials = [0.006995044937418831, 0.005558016213920624, 0.002345829390285611]
    assert key_texts(trials) == ["0.006995", "0.005558", "0.002346"]
    close = [0.0012345678, 0.0012345679, 0.5]  # distinct only at the 10th digit
    assert key_texts(close) == ["0.0012345678", "0.0012345679", "0.5"]
    assert key_texts([0.1, 1e-05, 100.0, 0.30000000000000004, None, 7, "gru"]) == [
        "0.1", "1e-05", "100.0", "0.3", "n/a", "7", "gru"]  # fmt: skip
    for values in (trials, close):  # 4 significant digits or more: within 5e-4 of the value
        for value, text in zip(values, key_texts(values), strict=True):
            assert abs(float(text) / value - 1) <= 5e-4, text

    runs = pd.concat([runs_frame({"gru": [1 + i, 2 + i, 3 + i]}, **{"optimizer.lr": lr})
                      for i, lr in enumerate(trials)])  # fmt: skip
    pairs = pair_frame(runs, ["model", "task", "optimizer.lr"], vs="optimizer.lr")
    assert sorted({*pairs["a"], *pairs["b"]}) == sorted(key_texts(trials))
    assert "0.006995044937418831" not in " ".join(verdict_lines(pairs))
    table = aggregate(runs)
    assert table["optimizer.lr"].tolist() == sorted(trials)  # the raw numbers, for the CSV
    assert to_display(table)["optimizer.lr"].tolist() == ["0.002346", "0.005558", "0.006995"]
    assert _short_parts(table)[0]["lr"] == ["0.002346", "0.005558", "0.006995"]
    settings = pd.concat([runs_frame({"a": [1, 2, 3], "b": [4, 5, 6]}, **{"optimizer.lr": lr})
                          for lr in trials])  # fmt: skip
    pairs = pair_frame(settings, ["model", "task", "optimizer.lr"], vs="model")
    assert sorted(pairs["setting"]) == [f"lr={t}" for t in ["0.002346", "0.005558", "0.006995"]]
