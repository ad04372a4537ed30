"""Verdict rules: from numbers measured over seeds to supported / not supported / mixed.

Every verdict the lab prints comes from one of the small rules below, applied to samples
(one number per seed). Each rule is a pure function of its inputs, so the same numbers
always give the same verdict, and each has a ``*_detail`` twin returning the effect size,
its 95 % interval and the rule in words, for the report.

The rules (``d`` is the effect in the claimed direction, ``[lo, hi]`` its interval):

* :func:`compare` -- the claim "A is better than B by at least ``min_effect``":
  **supported** when ``lo > 0`` and ``d >= min_effect`` (an effect in the claimed direction
  that the interval separates from zero and that is large enough to matter);
  **not supported** when ``hi < min_effect`` (the interval rules out an effect of the
  claimed size: no effect, or one the other way); **mixed** otherwise (inconclusive).
* :func:`threshold` -- the claim "the quantity is above (or below) ``bound``":
  **supported** when the whole interval is beyond the bound, **not supported** when the
  whole interval is on the other side, **mixed** when it straddles it.
* :func:`within` -- the claim "the quantity lies in ``[low, high]``": **supported** when
  the interval lies inside, **not supported** when it lies entirely outside, **mixed**
  otherwise.
* :func:`combine` -- several sub-verdicts of one claim: all supported -> supported, all
  not supported -> not supported, otherwise mixed ("n/a" parts are ignored).

Intervals are Student-t intervals (:func:`mean_ci`; Welch's for a difference of two
independent groups, the paired interval when ``paired=True``). The t quantile is computed
here in pure Python (regularised incomplete beta + bisection) so that no optional
dependency decides a verdict.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

__all__ = [
    "Comparison",
    "Verdict",
    "combine",
    "compare",
    "compare_detail",
    "mean_ci",
    "t_quantile",
    "threshold",
    "threshold_detail",
    "within",
    "within_detail",
]

#: Same literal as ``deadrelu.lab.core.Verdict`` (kept here so this module stands alone).
Verdict = Literal["supported", "not supported", "mixed", "n/a"]

_VERDICTS: tuple[str, ...] = ("supported", "not supported", "mixed", "n/a")


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


def mean_ci(samples: Iterable[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and two-sided Student-t interval: ``(mean, lo, hi)``.

    ``samples`` holds one number per seed. With one sample the interval is unbounded
    (``(m, -inf, inf)``): a single run says nothing about spread. Identical samples give
    ``(m, m, m)``.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    values = _as_floats(samples)
    mean, var = _mean_var(values)
    n = len(values)
    if n < 2:
        return mean, -math.inf, math.inf
    half = t_quantile(0.5 + confidence / 2.0, n - 1) * math.sqrt(var / n)
    return mean, mean - half, mean + half


def _diff_ci(
    a: Sequence[float], b: Sequence[float], paired: bool, confidence: float
) -> tuple[float, float, float]:
    """Interval of mean(a) - mean(b): paired t or Welch's t."""
    if paired:
        if len(a) != len(b):
            raise ValueError(
                f"paired comparison needs as many samples in a as in b, got {len(a)} and "
                f"{len(b)}; pass paired=False for independent groups"
            )
        return mean_ci([x - y for x, y in zip(a, b, strict=True)], confidence)
    ma, va = _mean_var(a)
    mb, vb = _mean_var(b)
    d = ma - mb
    if len(a) < 2 or len(b) < 2:
        return d, -math.inf, math.inf
    sa, sb = va / len(a), vb / len(b)
    se2 = sa + sb
    if se2 == 0.0:
        return d, d, d
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
        """JSON-able dict; non-finite bounds become None."""
        d = asdict(self)
        for k in ("effect", "lo", "hi"):
            if not math.isfinite(d[k]):
                d[k] = None
        return d


def _fmt(x: float) -> str:
    return f"{x:.4g}" if math.isfinite(x) else ("+inf" if x > 0 else "-inf")


def compare_detail(
    a_samples: Iterable[float],
    b_samples: Iterable[float],
    *,
    min_effect: float,
    higher_is_better: bool,
    paired: bool = False,
    confidence: float = 0.95,
) -> Comparison:
    """Claim "A is better than B by at least ``min_effect``", with the numbers.

    ``effect = mean(A) - mean(B)`` when higher is better, ``mean(B) - mean(A)`` when lower
    is better, with its ``confidence`` interval ``[lo, hi]`` (Welch, or paired t when
    ``paired``). Supported when ``lo > 0`` and ``effect >= min_effect``; not supported when
    ``hi < min_effect``; mixed otherwise.
    """
    if min_effect < 0:
        raise ValueError(f"min_effect must be >= 0, got {min_effect}")
    a = _as_floats(a_samples, "a_samples")
    b = _as_floats(b_samples, "b_samples")
    d, lo, hi = _diff_ci(a, b, paired, confidence)
    if not higher_is_better:
        d, lo, hi = -d, -hi, -lo
    verdict: Verdict
    if lo > 0 and d >= min_effect:
        verdict = "supported"
    elif hi < min_effect:
        verdict = "not supported"
    else:
        verdict = "mixed"
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
    ).verdict


def threshold_detail(
    samples: Iterable[float], *, bound: float, above: bool, confidence: float = 0.95
) -> Comparison:
    """Claim "the quantity is above ``bound``" (``above=True``) or below it.

    Supported when the whole ``confidence`` interval of the mean is strictly beyond the
    bound, not supported when it is entirely on the other side (touching counts as the
    other side), mixed when it straddles the bound. ``effect`` is the signed distance of
    the mean past the bound in the claimed direction.
    """
    values = _as_floats(samples)
    m, lo, hi = mean_ci(values, confidence)
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
    samples: Iterable[float], *, bound: float, above: bool, confidence: float = 0.95
) -> Verdict:
    """Verdict of "the quantity is above (``above=True``) or below ``bound``"."""
    return threshold_detail(samples, bound=bound, above=above, confidence=confidence).verdict


def within_detail(
    samples: Iterable[float], *, low: float, high: float, confidence: float = 0.95
) -> Comparison:
    """Claim "the quantity lies in ``[low, high]``".

    Supported when the ``confidence`` interval of the mean lies inside ``[low, high]``, not
    supported when it lies entirely outside (above ``high`` or below ``low``), mixed
    otherwise. ``effect`` is the distance of the mean from the nearer edge, positive inside.
    """
    if low > high:
        raise ValueError(f"low ({low}) must be <= high ({high})")
    values = _as_floats(samples)
    m, lo, hi = mean_ci(values, confidence)
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
    samples: Iterable[float], *, low: float, high: float, confidence: float = 0.95
) -> Verdict:
    """Verdict of "the quantity lies in ``[low, high]``"."""
    return within_detail(samples, low=low, high=high, confidence=confidence).verdict


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
