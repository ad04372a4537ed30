"""Helpers shared by experiments E1, E2, E4, E5 and E6: seed selection and honest intervals.

Every per-seed number lives in a list indexed by seed (None where the run diverged), so
that ``judge(sweep, seeds)`` can take any bootstrap resample of the seeds with
:func:`pick`. The interval helpers wrap ``deadrelu.lab.verdicts``: a fraction of units gets
a pooled Wilson interval (inside [0, 1], never of zero width), an accuracy a t interval
with the test set's resolution, a paired difference a paired t interval (with the
resolution, so identical differences do not give [d, d]).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from deadrelu.lab.core import SeedIndex, rounded
from deadrelu.lab.verdicts import mean_ci, paired_diff_ci, pooled_proportion_ci

__all__ = [
    "acc_ci",
    "finite",
    "fmt_ci",
    "frac_ci",
    "interval",
    "paired_ci",
    "pick",
    "seed_axis",
]


def seed_axis(n: int, seeds: SeedIndex) -> list[int]:
    """The seed indices a judge uses: ``seeds`` itself, or ``0 .. n-1`` when None."""
    return list(range(n)) if seeds is None else [int(i) for i in seeds]


def pick(values: Sequence[Any], seeds: SeedIndex) -> list[Any]:
    """``values`` (one entry per seed) at the indices ``seeds`` (None: all, in order)."""
    return list(values) if seeds is None else [values[int(i)] for i in seeds]


def finite(values: Sequence[Any]) -> list[float]:
    """The entries that are numbers (None marks a diverged run), as floats."""
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def interval(m: float, lo: float, hi: float) -> dict[str, Any]:
    """``{"mean", "lo", "hi"}`` rounded; non-finite bounds as None."""
    return {"mean": rounded(m), "lo": rounded(lo), "hi": rounded(hi)}


def frac_ci(fracs: Sequence[Any], units: int) -> dict[str, Any]:
    """A fraction of ``units`` units per seed (None = diverged, left out), pooled over the
    seeds: Wilson interval on the pooled counts with the between-seed design effect
    (``verdicts.pooled_proportion_ci``). ``n`` = seeds used."""
    vals = finite(fracs)
    if not vals:
        return {"mean": None, "lo": None, "hi": None, "n": 0}
    k = [round(v * units) for v in vals]
    p, lo, hi = pooled_proportion_ci(k, units)
    return {**interval(p, lo, hi), "n": len(vals)}


def acc_ci(accs: Sequence[Any], n_test: int) -> dict[str, Any]:
    """Mean test accuracy over seeds with its t interval (resolution ``1 / n_test``,
    clipped to [0, 1])."""
    vals = finite(accs)
    if not vals:
        return {"mean": None, "lo": None, "hi": None, "n": 0}
    m, lo, hi = mean_ci(vals, resolution=1.0 / n_test, bounds=(0.0, 1.0))
    return {**interval(m, lo, hi), "n": len(vals)}


def paired_ci(a: Sequence[Any], b: Sequence[Any], resolution: float) -> dict[str, Any]:
    """Mean of ``a[i] - b[i]`` over the seeds where both are numbers, paired t interval
    (``verdicts.paired_diff_ci`` with ``resolution``); ``n`` = pairs used."""
    pairs = [
        (float(x), float(y))
        for x, y in zip(a, b, strict=True)
        if x is not None and y is not None and math.isfinite(float(x)) and math.isfinite(float(y))
    ]
    if not pairs:
        return {"mean": None, "lo": None, "hi": None, "n": 0}
    d, lo, hi = paired_diff_ci([p[0] for p in pairs], [p[1] for p in pairs], resolution=resolution)
    return {**interval(d, lo, hi), "n": len(pairs)}


def fmt_ci(ci: dict[str, Any], pct: bool = True, signed: bool = False, digits: int = 3) -> str:
    """``"12.3 % [10.1, 14.8]"`` (``pct``) or ``"+0.012 [-0.003, +0.027]"`` (``digits``
    decimals)."""
    if ci.get("mean") is None:
        return "n/a"
    sign = "+" if signed else ""

    def one(x: Any) -> str:
        if x is None:
            return "inf"
        return f"{100 * x:{sign}.1f}" if pct else f"{x:{sign}.{digits}f}"

    unit = " %" if pct else ""
    return f"{one(ci['mean'])}{unit} [{one(ci['lo'])}, {one(ci['hi'])}]"
