"""The number format of every table (the comparison's terminal, Markdown and LaTeX tables, the
report, TensorBoard's text): one rule, so that a mean and its spread always read alike.

The spread (std) to 2 significant digits, the mean and the interval's ends to the same decimal
place ('0.1419 ± 0.0024 [0.1359, 0.1479]'); a cell with an interval and no std (a difference of
means) takes its precision from the interval's half-width; without either (one seed, or all
equal) the mean to 4 significant digits. A column is in scientific notation, every cell of it,
only where fixed point would need more than `MAX_DECIMALS` decimals or a value reaches 1e6.
comparison.csv keeps the raw numbers.
"""

from __future__ import annotations

import math

import pandas as pd

#: A column needing more decimals than this (a spread below ~1e-5) is written in scientific
#: notation, every cell of it.
MAX_DECIMALS = 6


def decimals(spread: float) -> int:
    """Decimal places that give `spread` 2 significant digits (negative: tens, hundreds)."""
    return 1 - math.floor(math.log10(abs(spread)))


def format_cells(means, stds, lows=None, highs=None, *, integer: bool = False) -> list[str]:
    """One column's cells by the rule of this module: 'mean ± std [low, high]', the spread to
    2 significant digits and the mean and the interval to the same place ('0.1419 ± 0.0024
    [0.1359, 0.1479]'); a cell with an interval and no std (a difference of means) takes its
    precision from the interval's half-width: '-3.0 [-5.3, -0.7]'; 'n/a' for a missing mean,
    '-inf'/'inf' as such. Integer columns (parameters, steps) keep thousands separators and
    never go below units. The whole column is in scientific notation when one cell would need
    more than MAX_DECIMALS decimals or a value reaches 1e6."""
    n = len(means)
    rows = list(zip(means, stds, lows if lows is not None else [math.nan] * n,
                    highs if highs is not None else [math.nan] * n, strict=True))  # fmt: skip
    spreads = [p for m, s, lo, hi in rows if (p := _precision(s, lo, hi)) is not None]
    big = any(_ok(m) and abs(m) >= 1e6 for m, *_ in rows)
    sci = not integer and (big or any(decimals(s) > MAX_DECIMALS for s in spreads) or any(
        _ok(m) and m != 0 and (not _ok(s) or s == 0) and abs(m) < 10.0**-MAX_DECIMALS
        for m, s, _, _ in rows))  # fmt: skip
    return [_cell(float(m), float(s), float(lo), float(hi), integer, sci) for m, s, lo, hi in rows]


def key_text(value) -> str:
    """A configuration key's value in a table or a verdict line: as the override spells it
    (100, not the 100.0 of a column with a gap), 'n/a' where a run has no such key."""
    return "n/a" if pd.isna(value) else str(value)  # None, NaN, pandas' NA


#: A float value of a key with more significant digits than this (an Optuna trial's
#: 0.006995044937418831) is shortened in tables and verdicts, as far as its column allows.
KEY_DIGITS = 6


def key_texts(values) -> list[str]:
    """`key_text` for one key's values (a column, or the values a verdict names): floats with
    more than KEY_DIGITS significant digits to the fewest digits (4 or more) that keep the
    column's distinct values distinct ('0.006995', not '0.006995044937418831')."""
    values = list(values)
    texts = [key_text(v) for v in values]
    long = {v for v in values if isinstance(v, float) and math.isfinite(v)
            and _digits(v) > KEY_DIGITS}  # fmt: skip
    if not long:
        return texts
    others = {t for v, t in zip(values, texts, strict=True) if v not in long}
    for digits in range(4, 18):
        short = {v: f"{v:.{digits}g}" for v in long}
        if len(set(short.values())) == len(long) and not others & set(short.values()):
            break
    return [short[v] if v in long else t for v, t in zip(values, texts, strict=True)]


def _digits(value: float) -> int:
    """Significant digits of a float as Python writes it (0.006995044937418831: 16, 100.0: 1)."""
    return len(repr(value).lstrip("-").split("e")[0].replace(".", "").strip("0"))


def _ok(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value)) and \
        math.isfinite(float(value))  # fmt: skip


def _precision(std: float, low: float, high: float) -> float | None:
    """What sets a cell's decimal places: its std, else its interval's half-width, else
    nothing (one seed, or seeds all equal)."""
    if _ok(std) and std != 0:
        return abs(float(std))
    if _ok(low) and _ok(high) and high > low:
        return (float(high) - float(low)) / 2
    return None


def _cell(mean: float, std: float, low: float, high: float, integer: bool, sci: bool) -> str:
    if math.isnan(mean):
        return "n/a"
    if math.isinf(mean):
        return f"{mean}"
    precision = _precision(std, low, high)
    if precision is None:  # one seed, or all seeds equal: nothing sets the precision
        if integer:
            return f"{mean:,.0f}"
        return f"{mean:.3e}" if sci else f"{mean:.4g}"
    places = decimals(precision)
    if integer:
        places = min(places, 0)
    spread = _ok(std) and std != 0
    if sci:
        digits = max(0, math.floor(math.log10(abs(mean))) + places) if mean else 0
        number = lambda v: f"{v:.{digits}e}"  # noqa: E731
        text = number(mean) + (f" ± {std:.1e}" if spread else "")
    else:
        number = lambda v: _fixed(v, places, integer)  # noqa: E731
        text = number(mean) + (f" ± {_fixed(std, places, integer)}" if spread else "")
    if _ok(low) and _ok(high):
        text += f" [{number(low)}, {number(high)}]"
    return text


def _fixed(value: float, places: int, integer: bool) -> str:
    """`value` rounded to `places` decimals (negative: to tens, hundreds)."""
    if places <= 0:
        rounded = round(value, places)
        return f"{rounded:,.0f}" if integer else f"{rounded:.0f}"
    return f"{value:.{places}f}"
