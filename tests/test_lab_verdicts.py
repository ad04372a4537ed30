"""Verdict rules on constructed numbers: clear effect -> supported, no effect -> not supported."""

from __future__ import annotations

import math

import pytest

from deadrelu.lab import verdicts as V


@pytest.mark.parametrize(
    ("p", "df", "expected"),
    [
        (0.975, 1, 12.706204736174707),
        (0.975, 2, 4.302652729749464),
        (0.975, 4, 2.7764451051977934),
        (0.975, 9, 2.2621571628540993),
        (0.975, 29, 2.045229642132703),
        (0.975, 7.5, 2.333039626865684),  # real df, as Welch gives
        (0.995, 10, 3.169272667175838),
        (0.5, 3, 0.0),
        (0.025, 4, -2.7764451051977934),
    ],
)
def test_t_quantile_known_values(p: float, df: float, expected: float) -> None:
    tol = 1e-8
    assert V.t_quantile(p, df) == pytest.approx(expected, abs=tol)


def test_t_quantile_matches_scipy_on_a_grid() -> None:
    stats = pytest.importorskip("scipy.stats")
    for df in (1.0, 1.7, 3.0, 5.5, 12.0, 60.0, 1000.0):
        for p in (0.6, 0.9, 0.975, 0.999):
            assert V.t_quantile(p, df) == pytest.approx(float(stats.t.ppf(p, df)), rel=1e-8)


def test_t_quantile_large_df_tends_to_normal() -> None:
    assert V.t_quantile(0.975, 1e7) == pytest.approx(1.959963984540054, abs=1e-5)


def test_t_quantile_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="p must be in"):
        V.t_quantile(1.0, 3)
    with pytest.raises(ValueError, match="df must be"):
        V.t_quantile(0.9, 0)


def test_mean_ci_by_hand() -> None:
    # mean 2, sample sd 1 (values 1, 2, 3), n = 3: half width = t(0.975, 2) / sqrt(3)
    m, lo, hi = V.mean_ci([1.0, 2.0, 3.0])
    half = 4.302652729749464 / math.sqrt(3)
    assert m == pytest.approx(2.0)
    assert lo == pytest.approx(2.0 - half)
    assert hi == pytest.approx(2.0 + half)


def test_mean_ci_degenerate_cases() -> None:
    assert V.mean_ci([0.5, 0.5, 0.5]) == (0.5, 0.5, 0.5)
    m, lo, hi = V.mean_ci([3.0])
    assert m == 3.0 and lo == -math.inf and hi == math.inf
    with pytest.raises(ValueError, match="empty"):
        V.mean_ci([])
    with pytest.raises(ValueError, match="NaN"):
        V.mean_ci([1.0, float("nan")])


def test_compare_clear_effect_is_supported() -> None:
    a = [0.90, 0.91, 0.92, 0.905, 0.915]
    b = [0.80, 0.81, 0.79, 0.805, 0.795]
    assert V.compare(a, b, min_effect=0.02, higher_is_better=True) == "supported"
    # the same numbers read as "lower is better" are a clear effect the other way
    assert V.compare(a, b, min_effect=0.02, higher_is_better=False) == "not supported"
    assert V.compare(b, a, min_effect=0.02, higher_is_better=False) == "supported"


def test_compare_no_effect_is_not_supported() -> None:
    a = [0.800, 0.801, 0.799, 0.800, 0.8005]
    b = [0.8005, 0.800, 0.801, 0.7995, 0.800]
    detail = V.compare_detail(a, b, min_effect=0.02, higher_is_better=True)
    assert detail.verdict == "not supported"
    assert detail.lo < 0 < detail.hi < 0.02


def test_compare_small_but_certain_effect_below_min_effect_is_not_supported() -> None:
    a = [0.805, 0.806, 0.805, 0.806]
    b = [0.800, 0.801, 0.800, 0.801]
    assert V.compare(a, b, min_effect=0.02, higher_is_better=True) == "not supported"
    assert V.compare(a, b, min_effect=0.001, higher_is_better=True) == "supported"


def test_compare_noisy_is_mixed() -> None:
    a = [0.70, 0.95, 0.75, 0.92]
    b = [0.80, 0.82, 0.78, 0.81]
    assert V.compare(a, b, min_effect=0.02, higher_is_better=True) == "mixed"


def test_compare_single_seed_is_mixed_not_a_false_positive() -> None:
    assert V.compare([0.99], [0.10], min_effect=0.01, higher_is_better=True) == "mixed"


def test_compare_paired_removes_seed_noise() -> None:
    base = [0.6, 0.7, 0.8, 0.9, 0.65]
    a = [x + 0.03 for x in base]
    welch = V.compare(a, base, min_effect=0.01, higher_is_better=True)
    paired = V.compare(a, base, min_effect=0.01, higher_is_better=True, paired=True)
    assert welch == "mixed"
    assert paired == "supported"
    with pytest.raises(ValueError, match="paired"):
        V.compare([1.0, 2.0], [1.0], min_effect=0, higher_is_better=True, paired=True)


def test_compare_detail_rule_text_and_dict() -> None:
    d = V.compare_detail([1.0, 1.1], [0.0, 0.1], min_effect=0.5, higher_is_better=True)
    assert "Welch" in d.rule and "0.5" in d.rule
    assert d.effect == pytest.approx(1.0)
    assert set(d.to_dict()) == {"effect", "lo", "hi", "verdict", "rule"}
    single = V.compare_detail([1.0], [0.0], min_effect=0.5, higher_is_better=True).to_dict()
    assert single["lo"] is None and single["hi"] is None


def test_threshold() -> None:
    assert V.threshold([0.1, 0.11, 0.09], bound=0.05, above=True) == "supported"
    assert V.threshold([0.01, 0.011, 0.009], bound=0.05, above=True) == "not supported"
    assert V.threshold([0.01, 0.011, 0.009], bound=0.05, above=False) == "supported"
    assert V.threshold([0.0, 0.1, 0.05], bound=0.05, above=True) == "mixed"


def test_within() -> None:
    assert V.within([0.98, 1.0, 1.02], low=0.9, high=1.1) == "supported"
    assert V.within([5.0, 5.1, 4.9], low=0.9, high=1.1) == "not supported"
    assert V.within([0.0, 0.0, 0.0], low=0.9, high=1.1) == "not supported"
    assert V.within([0.5, 1.5, 1.0], low=0.9, high=1.1) == "mixed"
    with pytest.raises(ValueError, match="low"):
        V.within([1.0], low=2.0, high=1.0)


def test_combine() -> None:
    assert V.combine(["supported", "supported", "n/a"]) == "supported"
    assert V.combine(["not supported", "not supported"]) == "not supported"
    assert V.combine(["supported", "not supported"]) == "mixed"
    assert V.combine(["supported", "mixed"]) == "mixed"
    assert V.combine(["n/a"]) == "n/a"
    assert V.combine([]) == "n/a"
    with pytest.raises(ValueError, match="unknown verdict"):
        V.combine(["maybe"])


def test_rules_are_deterministic() -> None:
    a, b = [0.3, 0.5, 0.4], [0.2, 0.25, 0.3]
    first = V.compare_detail(a, b, min_effect=0.05, higher_is_better=True)
    assert all(
        V.compare_detail(a, b, min_effect=0.05, higher_is_better=True) == first for _ in range(3)
    )
