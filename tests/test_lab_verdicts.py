"""Verdict rules on constructed numbers: clear effect -> supported, no effect -> not supported."""

from __future__ import annotations

import math

import numpy as np
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
    # identical samples say nothing about the spread: unbounded without a resolution
    assert V.mean_ci([0.5, 0.5, 0.5]) == (0.5, -math.inf, math.inf)
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
    paired = V.compare(
        a, base, min_effect=0.01, higher_is_better=True, paired=True, resolution=0.001
    )
    assert welch == "mixed"
    assert paired == "supported"
    # every seed's difference is the same: no spread information without a resolution
    assert V.compare(a, base, min_effect=0.01, higher_is_better=True, paired=True) == "mixed"
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
    assert V.within([0.0, 0.0, 0.0], low=0.9, high=1.1) == "mixed"  # no spread information
    assert V.within([0.0, 0.0, 0.0], low=0.9, high=1.1, resolution=0.01) == "not supported"
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


# --------------------------------------------------------------------------------------
# Honest intervals: never degenerate, proportions inside [0, 1]
# --------------------------------------------------------------------------------------


def test_mean_ci_with_resolution_is_never_degenerate_and_shrinks_with_n() -> None:
    # identical samples: sd = resolution / sqrt(12) (rounding variance), by hand
    for n in (3, 12):
        m, lo, hi = V.mean_ci([0.0] * n, resolution=0.01)
        half = V.t_quantile(0.975, n - 1) * 0.01 / math.sqrt(12) / math.sqrt(n)
        assert m == 0.0 and lo == pytest.approx(-half) and hi == pytest.approx(half)
    # spread-out samples are barely changed (variance 1 vs 1e-4 / 12)
    _, lo0, hi0 = V.mean_ci([1.0, 2.0, 3.0])
    _, lo1, hi1 = V.mean_ci([1.0, 2.0, 3.0], resolution=0.01)
    assert hi1 - lo1 == pytest.approx(hi0 - lo0, rel=1e-4)
    assert V.mean_ci([0.0, 0.01, 0.5], bounds=(0.0, 1.0))[1] == 0.0
    with pytest.raises(ValueError, match="resolution"):
        V.mean_ci([1.0, 1.0], resolution=0.0)


def test_wilson_interval_known_values() -> None:
    # 0 of 20: upper end z^2 / (n + z^2) by the closed form of Wilson at k = 0
    z = 1.959963984540054
    assert V.proportion_ci(0, 20) == (0.0, 0.0, pytest.approx(z * z / (20 + z * z)))
    assert V.proportion_ci(0, 20)[2] == pytest.approx(0.1611, abs=1e-4)
    p, lo, hi = V.proportion_ci(20, 20)
    assert p == 1.0 and hi == 1.0 and lo == pytest.approx(1 - z * z / (20 + z * z))
    # 5 of 10: symmetric around 0.5, the textbook [0.2366, 0.7634]
    _, lo, hi = V.proportion_ci(5, 10)
    assert lo == pytest.approx(0.23659, abs=1e-4) and hi == pytest.approx(0.76341, abs=1e-4)
    for k in range(0, 31):
        _, lo, hi = V.proportion_ci(k, 30)
        assert 0.0 <= lo < hi <= 1.0
    with pytest.raises(ValueError, match="k must be"):
        V.proportion_ci(3, 2)


def test_pooled_proportion_is_wilson_when_seeds_agree_and_wider_when_they_do_not() -> None:
    agree = V.pooled_proportion_ci([10, 10, 10, 10], 100)
    assert agree == pytest.approx(V.proportion_ci(40, 400))
    spread = V.pooled_proportion_ci([0, 0, 20, 20], 100)
    assert spread[0] == pytest.approx(0.1)
    assert spread[2] - spread[1] > 2 * (agree[2] - agree[1])
    assert V.pooled_proportion_ci([0, 0, 0], [20, 20, 20])[1:] == (
        0.0,
        pytest.approx(0.0601, abs=1e-3),
    )


def test_paired_proportion_difference_falls_back_to_newcombe() -> None:
    # every seed: 0 of 200 dead in both arms; the interval reflects 1000 units per arm
    d, lo, hi = V.paired_proportion_diff_ci([0] * 5, [0] * 5, 200)
    wilson_hi = V.proportion_ci(0, 1000)[2]
    assert d == 0.0 and lo == pytest.approx(-wilson_hi) and hi == pytest.approx(wilson_hi)
    # equal non-zero differences: still a real interval, containing the difference
    d, lo, hi = V.paired_proportion_diff_ci([30] * 4, [10] * 4, 100)
    assert d == pytest.approx(0.2) and lo < 0.2 < hi and lo >= -1.0 and hi <= 1.0
    # differing differences: the paired t interval of the per-seed differences
    d, lo, hi = V.paired_proportion_diff_ci([30, 35, 20], [10, 10, 10], 100)
    assert (d, lo, hi) == pytest.approx(V.mean_ci([0.2, 0.25, 0.1]))


def test_intervals_cover_a_known_effect_95_percent_of_the_time() -> None:
    # 1000 simulated experiments per case, fixed seed; a 95 % interval must cover the true
    # value in 93-97 % of them (the binomial sd of the coverage is 0.7 points).
    sims = 1000

    def rng(case: int) -> np.random.Generator:  # one independent stream per case
        return np.random.default_rng([20261129, case])

    def coverage(intervals: list[tuple[float, float, float]], truth: float) -> float:
        return sum(lo <= truth <= hi for _, lo, hi in intervals) / sims

    # a proportion: 12 % of 200 units dead
    ks = rng(0).binomial(200, 0.12, sims)
    assert 0.93 <= coverage([V.proportion_ci(int(k), 200) for k in ks], 0.12) <= 0.97
    # a proportion pooled over 10 seeds whose true rates differ (Beta around 0.15)
    r1 = rng(1)
    ks2 = r1.binomial(100, r1.beta(3.0, 17.0, (sims, 10)))
    pooled = [V.pooled_proportion_ci(row.tolist(), 100) for row in ks2]
    assert 0.93 <= coverage(pooled, 0.15) <= 0.97
    # a paired difference: 8 seeds, per-seed differences N(0.02, 0.03)
    diffs = rng(2).normal(0.02, 0.03, (sims, 8))
    assert 0.93 <= coverage([V.mean_ci(row.tolist()) for row in diffs], 0.02) <= 0.97
    # a paired difference of proportions: 10 seeds, arm B dies 3 points more often
    r3 = rng(3)
    base = r3.beta(3.0, 17.0, (sims, 10))
    ka, kb = r3.binomial(200, base), r3.binomial(200, base + 0.03)
    paired = [
        V.paired_proportion_diff_ci(a.tolist(), b.tolist(), 200)
        for a, b in zip(ka, kb, strict=True)
    ]
    assert 0.93 <= coverage(paired, -0.03) <= 0.97


# --------------------------------------------------------------------------------------
# Holm, many comparisons, power
# --------------------------------------------------------------------------------------


def test_holm_by_hand() -> None:
    # sorted 0.01, 0.03, 0.04 -> 3 * 0.01, max(0.03, 2 * 0.03), max(0.06, 1 * 0.04)
    assert V.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert V.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert V.holm([]) == []


def test_compare_to_many_verdicts() -> None:
    ref = [0.90, 0.91, 0.92, 0.90, 0.91]
    others = {
        "much worse": [0.80, 0.81, 0.80, 0.82, 0.80],
        "same": [0.90, 0.915, 0.91, 0.905, 0.91],
        "noisy": [0.60, 0.99, 0.70, 0.98, 0.95],
    }
    out = V.compare_to_many(ref, others, min_effect=0.02, higher_is_better=True)
    assert list(out) == list(others)
    assert out["much worse"].verdict == "supported"
    assert out["same"].verdict == "not supported"
    assert out["noisy"].verdict == "mixed"
    assert out["much worse"].p_holm == pytest.approx(3 * out["much worse"].p)
    # the simultaneous interval is wider than the single 95 % one
    single = V.compare_detail(
        ref, others["same"], min_effect=0.02, higher_is_better=True, paired=True
    )
    assert out["same"].hi - out["same"].lo > single.hi - single.lo


def test_compare_to_many_does_not_reward_the_best_of_many_by_chance() -> None:
    # 20 arms equal to the reference up to noise: a single comparison at 5 % would often
    # call one of them worse; Holm keeps the family-wise error at 5 %.
    rng = np.random.default_rng(7)
    false_positive = 0
    for _ in range(100):
        ref = rng.normal(0.8, 0.02, 6).tolist()
        others = {f"s{i}": rng.normal(0.8, 0.02, 6).tolist() for i in range(20)}
        out = V.compare_to_many(ref, others, min_effect=0.0, higher_is_better=True, paired=False)
        false_positive += any(c.verdict == "supported" for c in out.values())
    assert false_positive <= 10


def test_seeds_for_two_proportions_by_hand_and_power_inverse() -> None:
    # Fleiss: p1 = 0.12, p2 = 0.14, pbar = 0.13
    za, zb = 1.959963984540054, 0.8416212335729143
    units = (za * math.sqrt(2 * 0.13 * 0.87) + zb * math.sqrt(0.12 * 0.88 + 0.14 * 0.86)) ** 2
    units /= 0.02**2
    seeds = V.seeds_for_two_proportions(0.12, 0.14, units_per_seed=200)
    assert seeds == math.ceil(units / 200)
    assert V.power_two_proportions(0.12, 0.14, seeds, units_per_seed=200) >= 0.8
    assert V.power_two_proportions(0.12, 0.14, seeds - 1, units_per_seed=200) < 0.8
    assert V.seeds_for_two_proportions(0.12, 0.14, units_per_seed=200, design_effect=2.0) > seeds


def test_seeds_for_paired_difference_matches_simulated_power() -> None:
    n = V.seeds_for_paired_difference(0.02, 0.03)
    rng = np.random.default_rng(3)
    hits = sum(V.mean_ci(rng.normal(0.02, 0.03, n).tolist())[1] > 0 for _ in range(400))
    assert 0.72 <= hits / 400 <= 0.9  # about 80 % power by construction
    assert V.seeds_for_paired_difference(0.02, 0.03, power=0.9) > n


# --------------------------------------------------------------------------------------
# Verdicts on constructed numbers, including "fragile"
# --------------------------------------------------------------------------------------


def test_bootstrap_indices_are_reproducible() -> None:
    a = V.bootstrap_indices(5, 50, seed=0)
    assert a == V.bootstrap_indices(5, 50, seed=0)
    assert a != V.bootstrap_indices(5, 50, seed=1)
    assert len(a) == 50 and all(len(r) == 5 and all(0 <= i < 5 for i in r) for r in a)


def _stability_of(a: list[float], b: list[float], resamples: int = 300) -> V.Stability:
    def judge(idx: list[int]) -> str:
        return V.compare(
            [a[i] for i in idx],
            [b[i] for i in idx],
            min_effect=0.01,
            higher_is_better=True,
            paired=True,
            resolution=0.001,
        )

    full = judge(list(range(len(a))))
    return V.stability(full, [judge(i) for i in V.bootstrap_indices(len(a), resamples)])


def test_stability_supported_not_supported_mixed_and_fragile() -> None:
    base = [0.60, 0.70, 0.80, 0.65, 0.75, 0.72, 0.68, 0.77, 0.63, 0.71]
    clear = _stability_of([x + 0.05 for x in base], base)
    assert clear.verdict == "supported" and not clear.fragile and clear.share >= 0.9
    none = _stability_of([x + 0.0001 * (i % 2) for i, x in enumerate(base)], base)
    assert none.verdict == "not supported" and not none.fragile
    noisy = [0.5, 0.9, 0.6, 0.9, 0.55, 0.95, 0.6, 0.85, 0.5, 0.9]
    mixed = _stability_of(noisy, [0.7] * 10)
    assert mixed.verdict == "mixed" and not mixed.fragile
    # one seed carries the effect: supported on all seeds, not on most resamples
    edge = [x + (0.0 if i else 0.5) for i, x in enumerate(base)]
    shifted = [x + 0.02 for x in base]
    lucky = _stability_of([e + 0.02 for e in edge], shifted)
    assert lucky.fragile and lucky.share < 0.9
    assert "fragile" in lucky.why and str(lucky.resamples) in lucky.why


def test_stability_counts_errors_and_deterministic_checks() -> None:
    s = V.stability("supported", ["supported"] * 95 + ["error"] * 5)
    assert s.share == 0.95 and not s.fragile and s.counts == {"supported": 95, "error": 5}
    s = V.stability("supported", ["supported"] * 89 + ["mixed"] * 11)
    assert s.fragile
    assert V.stability("supported", []).share == 1.0
