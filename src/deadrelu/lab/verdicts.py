"""Verdict rules: from numbers measured over seeds to supported / not supported / mixed.

Every verdict the lab prints comes from one of the small rules below, applied to samples
(one number per seed) or to counts. Each rule is a pure function of its inputs, so the same
numbers always give the same verdict, and each has a ``*_detail`` twin returning the effect
size, its 95 % interval and the rule in words, for the report.

The rules (``d`` is the effect in the claimed direction, ``[lo, hi]`` its interval):

* :func:`compare` -- the claim "A is better than B by at least ``min_effect``":
  **supported** when ``lo > 0`` and ``d >= min_effect`` (an effect in the claimed direction
  that the interval separates from zero and that is large enough to matter);
  **not supported** when ``hi < min_effect`` (the interval rules out an effect of the
  claimed size: no effect, or one the other way); **mixed** otherwise (inconclusive).
* :func:`compare_to_many` -- "the reference is better than each of several settings": one
  :func:`compare`-style verdict per setting, with Holm-adjusted p-values and simultaneous
  (Bonferroni) intervals, so picking the best of many after the fact is not rewarded.
* :func:`threshold` -- the claim "the quantity is above (or below) ``bound``":
  **supported** when the whole interval is beyond the bound, **not supported** when the
  whole interval is on the other side, **mixed** when it straddles it.
* :func:`within` -- the claim "the quantity lies in ``[low, high]``": **supported** when
  the interval lies inside, **not supported** when it lies entirely outside, **mixed**
  otherwise.
* :func:`combine` -- several sub-verdicts of one claim: all supported -> supported, all
  not supported -> not supported, otherwise mixed ("n/a" parts are ignored).
* :func:`stability` -- how often bootstrap resamples of the seeds give the same verdict;
  below :data:`FRAGILE_BELOW` (90 %) the verdict is *fragile*.

Intervals, all honest (never degenerate, proportions never outside [0, 1]):

* :func:`mean_ci` -- Student t over seeds (Welch for two independent groups, paired t for
  per-seed differences). Identical samples say nothing about the spread: without the
  measurement's ``resolution`` the interval is unbounded; with it, the rounding variance
  ``resolution**2 / 12`` is added (Sheppard).
* :func:`proportion_ci` -- Wilson score interval for ``k`` of ``n`` (0 of 20 -> [0, 0.161]).
* :func:`pooled_proportion_ci` -- Wilson on counts pooled over seeds, with the sample size
  shrunk by the design effect between seeds (units of one seed are not independent).
* :func:`paired_proportion_diff_ci` -- paired t on per-seed differences of proportions;
  when every seed gives the same difference, Newcombe's hybrid score interval (method 10,
  Newcombe 1998) on the pooled counts.

Planning: :func:`seeds_for_two_proportions`, :func:`power_two_proportions` and
:func:`seeds_for_paired_difference` (how many seeds a difference needs), and
:func:`holm` (step-down adjusted p-values).

The t quantile is computed here in pure Python (regularised incomplete beta + bisection) so
that no optional dependency decides a verdict; the normal quantile is the standard
library's ``statistics.NormalDist``.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import Any, Literal

__all__ = [
    "FRAGILE_BELOW",
    "Comparison",
    "ManyComparison",
    "Stability",
    "Verdict",
    "bootstrap_indices",
    "combine",
    "compare",
    "compare_detail",
    "compare_to_many",
    "decide",
    "holm",
    "mean_ci",
    "paired_diff_ci",
    "paired_proportion_diff_ci",
    "pooled_proportion_ci",
    "power_two_proportions",
    "proportion_ci",
    "seeds_for_paired_difference",
    "seeds_for_two_proportions",
    "stability",
    "t_pvalue",
    "t_quantile",
    "threshold",
    "threshold_detail",
    "within",
    "within_detail",
    "z_quantile",
]

#: Same literal as ``deadrelu.lab.core.Verdict`` (kept here so this module stands alone).
Verdict = Literal["supported", "not supported", "mixed", "n/a"]

_VERDICTS: tuple[str, ...] = ("supported", "not supported", "mixed", "n/a")

#: A verdict that fewer than this share of bootstrap resamples reproduce is "fragile".
FRAGILE_BELOW = 0.9


# --------------------------------------------------------------------------------------
# Student t quantile
# --------------------------------------------------------------------------------------


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) for ``0 <= x <= 1``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def _t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    x = df / (df + t * t)
    tail = 0.5 * _betainc(df / 2.0, 0.5, x)
    return 1.0 - tail if t > 0 else tail


@functools.lru_cache(maxsize=4096)
def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df > 0`` (real) degrees of freedom.

    Accurate to about 1e-10 (bisection on the exact CDF); ``t_quantile(0.975, 4)`` is
    2.7764..., and as ``df`` grows it tends to the normal quantile 1.95996...
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if not df > 0:
        raise ValueError(f"df must be > 0, got {df}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < p:
        hi *= 2.0
        if hi > 1e12:
            return math.inf
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def z_quantile(p: float) -> float:
    """The ``p`` quantile of the standard normal distribution (``z_quantile(0.975)`` is
    1.95996...)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    return NormalDist().inv_cdf(p)


def t_pvalue(t: float, df: float, alternative: str = "two-sided") -> float:
    """P-value of a t statistic: ``"two-sided"``, ``"greater"`` (H1: mean > null) or
    ``"less"``. ``df`` may be real; ``t = +-inf`` gives 0 or 1."""
    if alternative not in ("two-sided", "greater", "less"):
        raise ValueError(f"alternative must be two-sided, greater or less, got {alternative!r}")
    if math.isnan(t):
        return 1.0
    upper = (0.0 if t > 0 else 1.0) if math.isinf(t) else 1.0 - _t_cdf(t, df)
    if alternative == "greater":
        return upper
    if alternative == "less":
        return 1.0 - upper
    return min(1.0, 2.0 * min(upper, 1.0 - upper))


# --------------------------------------------------------------------------------------
# Intervals
# --------------------------------------------------------------------------------------


def _as_floats(samples: Iterable[float], what: str = "samples") -> list[float]:
    values = [float(s) for s in samples]
    if not values:
        raise ValueError(f"{what} is empty: pass at least one number (one per seed)")
    if any(math.isnan(v) for v in values):
        raise ValueError(f"{what} contains NaN: {values}; drop or fix the failed runs first")
    return values


def _mean_var(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return mean, math.nan
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, var


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def _sd_eff(var: float, resolution: float | None) -> float:
    """Sample variance plus the rounding variance ``resolution**2 / 12`` (Sheppard), as sd."""
    if resolution is not None:
        if not resolution > 0:
            raise ValueError(f"resolution must be > 0 (the measurement's step), got {resolution}")
        var = var + resolution * resolution / 12.0
    return math.sqrt(var)


def mean_ci(
    samples: Iterable[float],
    confidence: float = 0.95,
    *,
    resolution: float | None = None,
    bounds: tuple[float, float] | None = None,
) -> tuple[float, float, float]:
    """Mean and two-sided Student-t interval: ``(mean, lo, hi)``.

    ``samples`` holds one number per seed. The interval is never degenerate:

    * one sample: unbounded, ``(m, -inf, inf)`` (a single run says nothing about spread);
    * identical samples carry no information about the spread either: without
      ``resolution`` the interval is unbounded too (a verdict on it is then "mixed");
    * ``resolution``: the measurement's step (``1 / units`` for a fraction of units,
      ``1 / n_test`` for an accuracy). Its rounding variance ``resolution**2 / 12`` is added
      to the sample variance (Sheppard's correction): identical samples then give an
      interval whose width shrinks like ``1 / sqrt(n)``; spread-out samples barely change.

    ``bounds``: the range the quantity cannot leave (``(0, 1)`` for a proportion); the
    interval is clipped to it. For proportions of counts prefer :func:`proportion_ci` or
    :func:`pooled_proportion_ci`.
    """
    _check_confidence(confidence)
    values = _as_floats(samples)
    mean, var = _mean_var(values)
    n = len(values)
    if n < 2:
        return mean, -math.inf, math.inf
    sd = _sd_eff(var, resolution)
    if sd == 0.0:
        return mean, -math.inf, math.inf
    half = t_quantile(0.5 + confidence / 2.0, n - 1) * sd / math.sqrt(n)
    lo, hi = mean - half, mean + half
    if bounds is not None:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return mean, lo, hi


def paired_diff_ci(
    a: Iterable[float],
    b: Iterable[float],
    confidence: float = 0.95,
    *,
    resolution: float | None = None,
) -> tuple[float, float, float]:
    """``(d, lo, hi)`` for the mean of the per-seed differences ``a[i] - b[i]``: the paired
    t interval of :func:`mean_ci` (same ``resolution`` rule when every difference is equal).
    For differences of proportions of counts use :func:`paired_proportion_diff_ci`."""
    xa, xb = _as_floats(a, "a"), _as_floats(b, "b")
    if len(xa) != len(xb):
        raise ValueError(f"paired samples need equal lengths, got {len(xa)} and {len(xb)}")
    return mean_ci([x - y for x, y in zip(xa, xb, strict=True)], confidence, resolution=resolution)


def _wilson(k: float, n: float, z: float) -> tuple[float, float]:
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2.0 * n)) / denom
    half = z * math.sqrt(max(p * (1.0 - p) / n + z2 / (4.0 * n * n), 0.0)) / denom
    lo = 0.0 if k <= 0 else max(0.0, centre - half)
    hi = 1.0 if k >= n else min(1.0, centre + half)
    return lo, hi


def proportion_ci(k: float, n: float, confidence: float = 0.95) -> tuple[float, float, float]:
    """Wilson score interval for ``k`` successes in ``n`` trials: ``(k / n, lo, hi)``.

    Always inside [0, 1] and never of zero width: 0 of 20 gives ``(0, 0, 0.161)``, 20 of 20
    ``(1, 0.839, 1)``. ``k`` and ``n`` may be real (an effective sample size).
    """
    _check_confidence(confidence)
    if not n > 0:
        raise ValueError(f"n must be > 0, got {n}")
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, n] = [0, {n}], got {k}")
    lo, hi = _wilson(float(k), float(n), z_quantile(0.5 + confidence / 2.0))
    return k / n, lo, hi


def pooled_proportion_ci(
    k: Sequence[float], n: Sequence[float] | float, confidence: float = 0.95
) -> tuple[float, float, float]:
    """A proportion pooled over seeds: ``(sum k / sum n, lo, hi)``.

    ``k[i]`` of ``n[i]`` units (or trials) of seed ``i`` (``n`` a number: the same for every
    seed). Units of one seed share their network and are not independent, so the Wilson
    interval is computed on an effective sample size: ``N / deff``, where the design effect
    ``deff`` is the between-seed variance of the ratio estimator over the binomial one, and
    the ``t(seeds - 1)`` quantile replaces the normal one (Korn and Graubard 1998):
    ``n_eff = min(N, N / deff * (z / t)^2)``. When the seeds agree as well as independent
    units would, this is plain Wilson on the pooled counts.
    """
    _check_confidence(confidence)
    ks = [float(x) for x in k]
    ns = [float(n)] * len(ks) if isinstance(n, (int, float)) else [float(x) for x in n]
    if not ks or len(ks) != len(ns):
        raise ValueError(f"k and n need one entry per seed, got {len(ks)} and {len(ns)}")
    if any(not 0 <= ki <= ni for ki, ni in zip(ks, ns, strict=True)):
        raise ValueError(f"each k[i] must be in [0, n[i]]; got k={ks}, n={ns}")
    big_k, big_n = math.fsum(ks), math.fsum(ns)
    if not big_n > 0:
        raise ValueError("sum of n must be > 0")
    p = big_k / big_n
    z = z_quantile(0.5 + confidence / 2.0)
    n_eff = big_n
    m = len(ks)
    var_bin = p * (1.0 - p) / big_n
    if m >= 2 and var_bin > 0:
        resid = math.fsum((ki - p * ni) ** 2 for ki, ni in zip(ks, ns, strict=True))
        var_cl = m / (m - 1) * resid / (big_n * big_n)
        deff = var_cl / var_bin
        t = t_quantile(0.5 + confidence / 2.0, m - 1)
        n_eff = min(big_n, big_n / max(deff, 1e-12) * (z / t) ** 2)
    lo, hi = _wilson(p * n_eff, n_eff, z)
    return p, lo, hi


def paired_proportion_diff_ci(
    k_a: Sequence[float],
    k_b: Sequence[float],
    n: Sequence[float] | float,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """Difference of two proportions measured on the same seeds: ``(d, lo, hi)``,
    ``d = mean_i (k_a[i] - k_b[i]) / n[i]``.

    The paired t interval on the per-seed differences (clipped to [-1, 1]). When it would be
    degenerate (one seed, or every seed giving the same difference) the interval falls back
    to Newcombe's hybrid score interval (Newcombe 1998, method 10) on the pooled counts,
    which reflects the number of units: 0 of 200 vs 0 of 200 gives about [-0.019, 0.019].
    Newcombe's interval treats the arms as independent, so it is wider than a paired one
    when the arms correlate (the usual case): conservative.
    """
    _check_confidence(confidence)
    ka, kb = [float(x) for x in k_a], [float(x) for x in k_b]
    ns = [float(n)] * len(ka) if isinstance(n, (int, float)) else [float(x) for x in n]
    if not ka or not len(ka) == len(kb) == len(ns):
        raise ValueError(
            f"k_a, k_b and n need one entry per seed each, got {len(ka)}, {len(kb)}, {len(ns)}"
        )
    diffs = [(a - b) / m for a, b, m in zip(ka, kb, ns, strict=True)]
    d = math.fsum(diffs) / len(diffs)
    if len(diffs) >= 2 and max(diffs) > min(diffs):
        _, lo, hi = mean_ci(diffs, confidence, bounds=(-1.0, 1.0))
        return d, lo, hi
    big_n = math.fsum(ns)
    pa, pb = math.fsum(ka) / big_n, math.fsum(kb) / big_n
    z = z_quantile(0.5 + confidence / 2.0)
    la, ua = _wilson(pa * big_n, big_n, z)
    lb, ub = _wilson(pb * big_n, big_n, z)
    lo = pa - pb - math.sqrt((pa - la) ** 2 + (ub - pb) ** 2)
    hi = pa - pb + math.sqrt((ua - pa) ** 2 + (pb - lb) ** 2)
    return d, max(lo, -1.0), min(hi, 1.0)


def _diff_ci(
    a: Sequence[float],
    b: Sequence[float],
    paired: bool,
    confidence: float,
    resolution: float | None = None,
) -> tuple[float, float, float]:
    """Interval of mean(a) - mean(b): paired t or Welch's t (never degenerate)."""
    if paired:
        if len(a) != len(b):
            raise ValueError(
                f"paired comparison needs as many samples in a as in b, got {len(a)} and "
                f"{len(b)}; pass paired=False for independent groups"
            )
        return mean_ci(
            [x - y for x, y in zip(a, b, strict=True)], confidence, resolution=resolution
        )
    ma, va = _mean_var(a)
    mb, vb = _mean_var(b)
    d = ma - mb
    if len(a) < 2 or len(b) < 2:
        return d, -math.inf, math.inf
    sa = _sd_eff(va, resolution) ** 2 / len(a)
    sb = _sd_eff(vb, resolution) ** 2 / len(b)
    se2 = sa + sb
    if se2 == 0.0:
        return d, -math.inf, math.inf
    df = se2 * se2 / (sa * sa / (len(a) - 1) + sb * sb / (len(b) - 1))
    half = t_quantile(0.5 + confidence / 2.0, df) * math.sqrt(se2)
    return d, d - half, d + half


# --------------------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """What a rule saw and decided.

    ``effect`` is the point estimate in the claimed direction (positive = as claimed),
    ``lo``/``hi`` its interval, ``verdict`` the decision and ``rule`` the rule in words with
    the numbers filled in.
    """

    effect: float
    lo: float
    hi: float
    verdict: Verdict
    rule: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict; non-finite numbers become None."""
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, float) and not math.isfinite(v):
                d[k] = None
        return d


def _fmt(x: float) -> str:
    return f"{x:.4g}" if math.isfinite(x) else ("+inf" if x > 0 else "-inf")


def decide(d: float, lo: float, hi: float, min_effect: float) -> Verdict:
    """:func:`compare`'s rule on a given effect ``d`` and interval ``[lo, hi]``:
    supported if ``lo > 0`` and ``d >= min_effect``, not supported if ``hi < min_effect``,
    else mixed."""
    if lo > 0 and d >= min_effect:
        return "supported"
    if hi < min_effect:
        return "not supported"
    return "mixed"


def compare_detail(
    a_samples: Iterable[float],
    b_samples: Iterable[float],
    *,
    min_effect: float,
    higher_is_better: bool,
    paired: bool = False,
    confidence: float = 0.95,
    resolution: float | None = None,
) -> Comparison:
    """Claim "A is better than B by at least ``min_effect``", with the numbers.

    ``effect = mean(A) - mean(B)`` when higher is better, ``mean(B) - mean(A)`` when lower
    is better, with its ``confidence`` interval ``[lo, hi]`` (Welch, or paired t when
    ``paired``; ``resolution`` as in :func:`mean_ci`). Supported when ``lo > 0`` and
    ``effect >= min_effect``; not supported when ``hi < min_effect``; mixed otherwise.
    """
    if min_effect < 0:
        raise ValueError(f"min_effect must be >= 0, got {min_effect}")
    a = _as_floats(a_samples, "a_samples")
    b = _as_floats(b_samples, "b_samples")
    d, lo, hi = _diff_ci(a, b, paired, confidence, resolution)
    if not higher_is_better:
        d, lo, hi = -d, -hi, -lo
    verdict = decide(d, lo, hi, min_effect)
    direction = "higher" if higher_is_better else "lower"
    rule = (
        f"effect = A - B in the claimed direction ({direction} is better) = {_fmt(d)}, "
        f"{confidence:.0%} CI [{_fmt(lo)}, {_fmt(hi)}] "
        f"({'paired t' if paired else 'Welch t'}); supported if CI lo > 0 and effect >= "
        f"{min_effect:g}; not supported if CI hi < {min_effect:g}; else mixed"
    )
    return Comparison(d, lo, hi, verdict, rule)


def compare(
    a_samples: Iterable[float],
    b_samples: Iterable[float],
    *,
    min_effect: float,
    higher_is_better: bool,
    paired: bool = False,
    confidence: float = 0.95,
    resolution: float | None = None,
) -> Verdict:
    """Verdict of the claim "A is better than B by at least ``min_effect``".

    See :func:`compare_detail` for the rule; this returns only the verdict.
    """
    return compare_detail(
        a_samples,
        b_samples,
        min_effect=min_effect,
        higher_is_better=higher_is_better,
        paired=paired,
        confidence=confidence,
        resolution=resolution,
    ).verdict


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order (each in [0, 1]).

    Reject hypothesis ``i`` at family-wise level ``alpha`` when ``holm(p)[i] <= alpha``.
    """
    p = [float(x) for x in pvalues]
    if any(not 0.0 <= x <= 1.0 for x in p):
        raise ValueError(f"p-values must be in [0, 1], got {p}")
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted


@dataclass(frozen=True)
class ManyComparison(Comparison):
    """One arm of :func:`compare_to_many`: a :class:`Comparison` whose interval is
    simultaneous (Bonferroni over the arms), plus the one-sided p-value of "the reference
    is better" and its Holm-adjusted value."""

    p: float = 1.0
    p_holm: float = 1.0


def compare_to_many(
    reference: Sequence[float],
    others: Mapping[str, Sequence[float]],
    *,
    min_effect: float,
    higher_is_better: bool,
    paired: bool = True,
    confidence: float = 0.95,
    resolution: float | None = None,
) -> dict[str, ManyComparison]:
    """Claim "the reference setting is better than each of the others by ``min_effect``".

    For each arm: ``effect`` = reference - arm in the claimed direction (paired by seed by
    default), a one-sided t p-value for ``effect > 0``, Holm-adjusted over the arms, and a
    simultaneous interval at level ``1 - (1 - confidence) / len(others)``. Verdict per arm:
    supported when the Holm-adjusted p-value is below ``1 - confidence`` and ``effect >=
    min_effect``; not supported when the simultaneous interval's upper end is below
    ``min_effect``; mixed otherwise. Returns the arms in the order given.
    """
    if not others:
        raise ValueError("others is empty: pass at least one setting to compare against")
    ref = _as_floats(reference, "reference")
    m = len(others)
    level = 1.0 - (1.0 - confidence) / m
    rows: dict[str, tuple[float, float, float, float]] = {}
    for name, samples in others.items():
        arm = _as_floats(samples, f"others[{name!r}]")
        if paired and len(arm) != len(ref):
            raise ValueError(
                f"paired comparison needs as many samples in {name!r} as in the reference, "
                f"got {len(arm)} and {len(ref)}; pass paired=False for independent groups"
            )
        d, se, df = _diff_se_df(ref, arm, paired, resolution)
        if not higher_is_better:
            d = -d
        if math.isfinite(se) and se > 0:
            half = t_quantile(0.5 + level / 2.0, df) * se
            lo, hi = d - half, d + half
            pval = t_pvalue(d / se, df, "greater")
        else:
            lo, hi, pval = -math.inf, math.inf, 1.0
        rows[name] = (d, lo, hi, pval)
    adjusted = holm([r[3] for r in rows.values()])
    alpha = 1.0 - confidence
    out: dict[str, ManyComparison] = {}
    for (name, (d, lo, hi, pval)), p_adj in zip(rows.items(), adjusted, strict=True):
        verdict: Verdict
        if p_adj < alpha and d >= min_effect:
            verdict = "supported"
        elif hi < min_effect:
            verdict = "not supported"
        else:
            verdict = "mixed"
        rule = (
            f"reference - {name} in the claimed direction = {_fmt(d)}, simultaneous "
            f"{level:.1%} CI [{_fmt(lo)}, {_fmt(hi)}] (Bonferroni over {m}), one-sided "
            f"p = {pval:.3g}, Holm-adjusted {p_adj:.3g}; supported if adjusted p < {alpha:g} "
            f"and effect >= {min_effect:g}; not supported if CI hi < {min_effect:g}; else mixed"
        )
        out[name] = ManyComparison(d, lo, hi, verdict, rule, pval, p_adj)
    return out


def _diff_se_df(
    a: Sequence[float], b: Sequence[float], paired: bool, resolution: float | None
) -> tuple[float, float, float]:
    """``(mean(a) - mean(b), standard error, df)``; se is inf when it cannot be estimated."""
    if paired:
        diffs = [x - y for x, y in zip(a, b, strict=True)]
        d, var = _mean_var(diffs)
        if len(diffs) < 2:
            return d, math.inf, 1.0
        sd = _sd_eff(var, resolution)
        return d, (sd / math.sqrt(len(diffs)) if sd > 0 else math.inf), len(diffs) - 1.0
    ma, va = _mean_var(a)
    mb, vb = _mean_var(b)
    if len(a) < 2 or len(b) < 2:
        return ma - mb, math.inf, 1.0
    sa = _sd_eff(va, resolution) ** 2 / len(a)
    sb = _sd_eff(vb, resolution) ** 2 / len(b)
    if sa + sb == 0:
        return ma - mb, math.inf, 1.0
    df = (sa + sb) ** 2 / (sa * sa / (len(a) - 1) + sb * sb / (len(b) - 1))
    return ma - mb, math.sqrt(sa + sb), df


def threshold_detail(
    samples: Iterable[float],
    *,
    bound: float,
    above: bool,
    confidence: float = 0.95,
    resolution: float | None = None,
) -> Comparison:
    """Claim "the quantity is above ``bound``" (``above=True``) or below it.

    Supported when the whole ``confidence`` interval of the mean (:func:`mean_ci`, with
    ``resolution``) is strictly beyond the bound, not supported when it is entirely on the
    other side (touching counts as the other side), mixed when it straddles the bound.
    ``effect`` is the signed distance of the mean past the bound in the claimed direction.
    """
    values = _as_floats(samples)
    m, lo, hi = mean_ci(values, confidence, resolution=resolution)
    return _threshold_from(m, lo, hi, bound=bound, above=above, confidence=confidence)


def _threshold_from(
    m: float, lo: float, hi: float, *, bound: float, above: bool, confidence: float
) -> Comparison:
    if not above:
        m, lo, hi, b = -m, -hi, -lo, -bound
    else:
        b = bound
    verdict: Verdict
    if lo > b:
        verdict = "supported"
    elif hi <= b:
        verdict = "not supported"
    else:
        verdict = "mixed"
    word = "above" if above else "below"
    shown_lo, shown_hi = (lo, hi) if above else (-hi, -lo)
    rule = (
        f"mean {_fmt(m if above else -m)}, {confidence:.0%} CI [{_fmt(shown_lo)}, "
        f"{_fmt(shown_hi)}]; supported if the CI is entirely {word} {bound:g}, not "
        f"supported if entirely on the other side, else mixed"
    )
    return Comparison(m - b, lo - b, hi - b, verdict, rule)


def threshold(
    samples: Iterable[float],
    *,
    bound: float,
    above: bool,
    confidence: float = 0.95,
    resolution: float | None = None,
) -> Verdict:
    """Verdict of "the quantity is above (``above=True``) or below ``bound``"."""
    return threshold_detail(
        samples, bound=bound, above=above, confidence=confidence, resolution=resolution
    ).verdict


def within_detail(
    samples: Iterable[float],
    *,
    low: float,
    high: float,
    confidence: float = 0.95,
    resolution: float | None = None,
) -> Comparison:
    """Claim "the quantity lies in ``[low, high]``".

    Supported when the ``confidence`` interval of the mean lies inside ``[low, high]``, not
    supported when it lies entirely outside (above ``high`` or below ``low``), mixed
    otherwise. ``effect`` is the distance of the mean from the nearer edge, positive inside.
    """
    if low > high:
        raise ValueError(f"low ({low}) must be <= high ({high})")
    values = _as_floats(samples)
    m, lo, hi = mean_ci(values, confidence, resolution=resolution)
    verdict: Verdict
    if low <= lo and hi <= high:
        verdict = "supported"
    elif lo > high or hi < low:
        verdict = "not supported"
    else:
        verdict = "mixed"
    rule = (
        f"mean {_fmt(m)}, {confidence:.0%} CI [{_fmt(lo)}, {_fmt(hi)}]; supported if the CI "
        f"lies in [{low:g}, {high:g}], not supported if entirely outside, else mixed"
    )
    return Comparison(min(m - low, high - m), lo, hi, verdict, rule)


def within(
    samples: Iterable[float],
    *,
    low: float,
    high: float,
    confidence: float = 0.95,
    resolution: float | None = None,
) -> Verdict:
    """Verdict of "the quantity lies in ``[low, high]``"."""
    return within_detail(
        samples, low=low, high=high, confidence=confidence, resolution=resolution
    ).verdict


def combine(verdicts: Iterable[str]) -> Verdict:
    """One verdict from several sub-verdicts of a claim.

    "n/a" parts are ignored; all remaining supported -> supported, all not supported ->
    not supported, anything else (including a mix, or a "mixed" part) -> mixed. No parts
    (or only "n/a") -> "n/a".
    """
    parts = list(verdicts)
    for v in parts:
        if v not in _VERDICTS:
            raise ValueError(f"unknown verdict {v!r}; expected one of {list(_VERDICTS)}")
    real = [v for v in parts if v != "n/a"]
    if not real:
        return "n/a"
    if all(v == "supported" for v in real):
        return "supported"
    if all(v == "not supported" for v in real):
        return "not supported"
    return "mixed"


# --------------------------------------------------------------------------------------
# Stability of a verdict under resampling of the seeds
# --------------------------------------------------------------------------------------


def bootstrap_indices(n_seeds: int, resamples: int, seed: int = 0) -> list[list[int]]:
    """``resamples`` bootstrap resamples of ``range(n_seeds)`` (with repetition).

    NumPy's PCG64 generator with a fixed ``seed``: the same indices on every machine, so a
    verdict's stability in ``results.json`` is reproducible.
    """
    import numpy as np

    if n_seeds < 1 or resamples < 0:
        raise ValueError(f"need n_seeds >= 1 and resamples >= 0, got {n_seeds}, {resamples}")
    rng = np.random.Generator(np.random.PCG64(seed))
    idx = rng.integers(0, n_seeds, size=(resamples, n_seeds))
    return [[int(i) for i in row] for row in idx]


@dataclass(frozen=True)
class Stability:
    """How often resamples reproduce a verdict.

    ``share``: resamples giving ``verdict`` / ``resamples``; ``counts``: verdicts seen;
    ``fragile``: ``share < threshold``; ``why``: one sentence for the report.
    """

    verdict: str
    share: float
    resamples: int
    counts: dict[str, int] = field(default_factory=dict)
    fragile: bool = False
    why: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return asdict(self)


def stability(
    verdict: str, resampled: Sequence[str], threshold: float = FRAGILE_BELOW
) -> Stability:
    """The share of ``resampled`` verdicts equal to ``verdict``; fragile below ``threshold``.

    A resample whose judge failed may be given as ``"error"``: it counts as a different
    verdict. No resamples (a deterministic check) gives share 1, not fragile.
    """
    n = len(resampled)
    counts = dict(sorted(Counter(resampled).items(), key=lambda kv: (-kv[1], kv[0])))
    if n == 0:
        return Stability(verdict, 1.0, 0, {}, False, "deterministic: nothing to resample")
    share = counts.get(verdict, 0) / n
    fragile = share < threshold
    others = ", ".join(f"{v} {c / n:.0%}" for v, c in counts.items() if v != verdict)
    why = f"{verdict} in {share:.0%} of {n} bootstrap resamples of the seeds"
    if others:
        why += f" (others: {others})"
    if fragile:
        why += f"; below {threshold:.0%}: fragile, more seeds needed"
    return Stability(verdict, share, n, counts, fragile, why)


# --------------------------------------------------------------------------------------
# Planning: how many seeds
# --------------------------------------------------------------------------------------


def _check_planning(alpha: float, power: float) -> None:
    if not 0.0 < alpha < 1.0 or not 0.0 < power < 1.0:
        raise ValueError(f"alpha and power must be in (0, 1), got {alpha}, {power}")


def seeds_for_two_proportions(
    p1: float,
    p2: float,
    *,
    units_per_seed: int = 1,
    alpha: float = 0.05,
    power: float = 0.8,
    design_effect: float = 1.0,
) -> int:
    """Seeds per arm to detect proportions ``p1`` vs ``p2`` (two-sided test at ``alpha``,
    with probability ``power``).

    Units per arm from the normal approximation (Fleiss): ``n = (z_{1-alpha/2}
    sqrt(2 pbar qbar) + z_power sqrt(p1 q1 + p2 q2))^2 / (p1 - p2)^2``, times
    ``design_effect`` (units of one seed are not independent: 1 for independent units,
    measure it from a pilot run), divided by ``units_per_seed``, rounded up.
    Example: a dead fraction of 12 % vs 14 % with 200 units per seed needs
    ``seeds_for_two_proportions(0.12, 0.14, units_per_seed=200)`` = 23 seeds per arm.
    """
    _check_planning(alpha, power)
    if not (0.0 <= p1 <= 1.0 and 0.0 <= p2 <= 1.0) or p1 == p2:
        raise ValueError(f"need two different proportions in [0, 1], got {p1} and {p2}")
    if units_per_seed < 1 or design_effect <= 0:
        raise ValueError("units_per_seed must be >= 1 and design_effect > 0")
    pbar = (p1 + p2) / 2.0
    za, zb = z_quantile(1.0 - alpha / 2.0), z_quantile(power)
    root = za * math.sqrt(2.0 * pbar * (1.0 - pbar)) + zb * math.sqrt(
        p1 * (1.0 - p1) + p2 * (1.0 - p2)
    )
    units = (root / (p1 - p2)) ** 2 * design_effect
    return max(2, math.ceil(units / units_per_seed - 1e-9))


def power_two_proportions(
    p1: float,
    p2: float,
    seeds: int,
    *,
    units_per_seed: int = 1,
    alpha: float = 0.05,
    design_effect: float = 1.0,
) -> float:
    """Power of the two-sided test of ``p1`` vs ``p2`` with ``seeds`` seeds per arm (the
    inverse of :func:`seeds_for_two_proportions`, same approximation)."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    n = seeds * units_per_seed / design_effect
    pbar = (p1 + p2) / 2.0
    za = z_quantile(1.0 - alpha / 2.0)
    s1 = math.sqrt(p1 * (1.0 - p1) + p2 * (1.0 - p2))
    if s1 == 0:
        return 1.0 if p1 != p2 else 0.0
    zb = (abs(p1 - p2) * math.sqrt(n) - za * math.sqrt(2.0 * pbar * (1.0 - pbar))) / s1
    return NormalDist().cdf(zb)


def seeds_for_paired_difference(
    delta: float, sd: float, *, alpha: float = 0.05, power: float = 0.8
) -> int:
    """Seeds to detect a mean per-seed difference ``delta`` whose per-seed sd is ``sd``
    (paired t test, two-sided ``alpha``): the smallest ``n >= 2`` with
    ``n >= ((t_{n-1, 1-alpha/2} + t_{n-1, power}) sd / delta)^2``."""
    _check_planning(alpha, power)
    if delta == 0 or sd <= 0:
        raise ValueError(f"need delta != 0 and sd > 0, got {delta}, {sd}")
    n = 2
    while True:
        t = t_quantile(1.0 - alpha / 2.0, n - 1) + t_quantile(power, n - 1)
        if n >= (t * sd / abs(delta)) ** 2:
            return n
        n += 1
