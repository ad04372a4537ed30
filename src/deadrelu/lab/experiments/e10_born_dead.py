"""E10 (C15): born dead. How often is a deep, narrow ReLU net dead at initialisation?

Lu, Shin, Su and Karniadakis ("Dying ReLU and Initialization: Theory and Numerical
Examples", 2019/2020) prove that a ReLU network initialised from symmetric distributions
dies in probability as its depth grows, the sooner the narrower it is, and propose the
randomized asymmetric initialization (RAI) against it.

Two independent computations of the same probability:

* **Monte Carlo** through :func:`deadrelu.born_dead.born_dead_rate`: for each width ``N``
  many networks with ``L = max depth`` hidden ReLU layers, input dimension 1, evaluated on
  a grid of inputs of ``[-sqrt 3, sqrt 3]``; a network of depth ``L`` is *born dead* when
  one of its first ``L`` hidden layers is 0 on every input (then its output is constant).
  One deep draw gives the rate at every depth. Three initialisations: ``he`` (N(0,
  2/fan_in) weights, zero biases), ``he_bias`` (symmetric biases too) and ``rai``.
* **Theory** for ``he``: :func:`deadrelu.born_dead.born_dead_probability`, a deterministic
  integral over the angle between the images of x = +1 and x = -1 (zero biases make every
  layer positively homogeneous, so those two rays decide).

The draws are split into one batch per seed (the bootstrap's unit); proportions are pooled
over the seeds and get Wilson intervals (never of zero width), differences of independent
proportions Newcombe's interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from deadrelu.born_dead import born_dead_probability, born_dead_rate
from deadrelu.lab.core import (
    ClaimVerdict,
    Experiment,
    Judgement,
    LabConfig,
    SeedIndex,
    Sweep,
    new_figure,
    register,
    rounded,
    save_figure,
)
from deadrelu.lab.experiments._common import seed_axis
from deadrelu.lab.verdicts import (
    Verdict,
    combine,
    decide,
    paired_proportion_diff_ci,
    proportion_ci,
)

#: Input dimension of the Monte Carlo networks (1: the grid decides exactly for "he").
INPUT_DIM = 1
#: Initialisations compared ("he" is the symmetric reference of the verdicts).
INITS: tuple[str, ...] = ("he", "he_bias", "rai")
#: "Deep narrow nets can be born dead": the rate at depth :data:`DEEP`, narrowest width,
#: above this (Wilson lower bound).
BORN_DEAD_BOUND = 0.05
#: "It grows with depth": rate(depth DEEP) - rate(depth 1) at least this, narrowest width.
MIN_DEPTH_EFFECT = 0.05
#: "RAI lowers it": rate(he) - rate(RAI) at least this, depth DEEP, narrowest width.
MIN_RAI_EFFECT = 0.05
#: The depth of the verdicts: deep enough for narrow He nets to die often, shallow enough
#: that the rate is not saturated at 1 for both He and RAI (at depth 100 and width 2 both
#: are ~1); the issue's reference values are at this depth too.
DEEP = 10
#: Depths at which Monte Carlo and theory are compared (those <= the max depth).
CHECK_DEPTHS: tuple[int, ...] = (2, 5, 10, 20, 50, 100)
#: "Monte Carlo and theory agree": every simultaneous interval lies within theory +- this
#: (an equivalence test: "the theory lies inside the interval" alone would flip on
#: resampled seeds at about one point in 25 even when the theory is exact).
AGREE_TOL = 0.04
#: Reference values at depth 10 from an independent computation (issue 10), by width.
REFERENCE_DEPTH10: dict[int, float] = {3: 0.628, 5: 0.153, 8: 0.010}
CONFIDENCE = 0.95


# --------------------------------------------------------------------------------------
# Sweep
# --------------------------------------------------------------------------------------


def born_dead_by_depth(
    width: int, depth: int, nets: int, inputs: int, init: str, seed: int
) -> list[int]:
    """Number of ``nets`` random nets born dead at each depth ``1..depth``.

    One call of :func:`deadrelu.born_dead.born_dead_rate` at the full ``depth``; entry
    ``L - 1`` counts the nets whose first all-zero hidden layer is ``<= L``.
    """
    res = born_dead_rate(
        depth, width, init=init, trials=nets, seed=seed, d_in=INPUT_DIM, n_inputs=inputs
    )
    first = res.first_dead_layer
    dead = first > 0
    return [int((dead & (first <= d)).sum()) for d in range(1, depth + 1)]


def sweep(cfg: LabConfig) -> Sweep:
    """Monte Carlo counts per init, width, seed and depth; the theory curve per width."""
    widths = cfg.size(tiny=(2, 4), quick=(2, 3, 4, 5, 8), full=(2, 3, 4, 5, 8, 16))
    depth = cfg.size(tiny=12, quick=50, full=100)
    nets = cfg.size(tiny=100, quick=400, full=1000)
    # He is the curve compared with the theory: more nets (cheap: 1 s in quick)
    he_nets = cfg.size(tiny=300, quick=2000, full=4000)
    inputs = cfg.size(tiny=16, quick=32, full=32)
    seeds = list(range(cfg.n_seeds))
    counts: dict[str, dict[str, list[list[int]]]] = {init: {} for init in INITS}
    for init in INITS:
        for w in widths:
            counts[init][str(w)] = [
                born_dead_by_depth(
                    w, depth, he_nets if init == "he" else nets, inputs, init, 7919 * (s + 1) + w
                )
                for s in seeds
            ]
    theory = {str(w): [rounded(p, 8) for p in born_dead_probability(w, depth)] for w in widths}
    numbers: dict[str, Any] = {
        "setting": {
            "widths": list(widths),
            "max_depth": depth,
            "nets_per_seed": {init: he_nets if init == "he" else nets for init in INITS},
            "inputs": inputs,
            "input_dim": INPUT_DIM,
            "seeds": seeds,
            "inits": {
                "he": "N(0, 2/fan_in) weights, zero biases",
                "he_bias": "N(0, 2/fan_in) weights and biases",
                "rai": "deadrelu.init.rai_sample (Beta(2, 1) asymmetric entry)",
            },
            "monte_carlo": "deadrelu.born_dead.born_dead_rate",
            "theory": "deadrelu.born_dead.born_dead_probability (grid 64, 2^14 Sobol points)",
        },
        # [init][width][seed][depth - 1]: nets (of nets_per_seed) born dead by that depth
        "born_dead_counts": counts,
        # [width][depth - 1]: the probability by the deterministic integral (He, bias 0)
        "theory_he": theory,
        "reference_depth10": {str(k): v for k, v in REFERENCE_DEPTH10.items()},
    }
    return Sweep(numbers=numbers, n_seeds=len(seeds))


# --------------------------------------------------------------------------------------
# Judge
# --------------------------------------------------------------------------------------


def _pooled(per_seed: Sequence[Sequence[int]], idx: Sequence[int], d: int) -> int:
    return sum(int(per_seed[s][d - 1]) for s in idx)


def judge(sw: Sweep, seeds: SeedIndex = None) -> Judgement:
    """C15 from the pooled counts of the chosen seeds (see the rule in the verdict)."""
    num = sw.numbers
    st = num["setting"]
    idx = seed_axis(sw.n_seeds, seeds)
    n = len(idx) * int(st["nets_per_seed"]["he"])
    n_other = len(idx) * int(st["nets_per_seed"]["rai"])
    depth = int(st["max_depth"])
    widths = [str(w) for w in st["widths"]]
    counts = num["born_dead_counts"]
    narrow = widths[0]
    deep = min(DEEP, depth)

    # (1) Monte Carlo agrees with the theory: simultaneous Wilson intervals (Bonferroni).
    checks = [d for d in CHECK_DEPTHS if d <= depth]
    n_checks = len(checks) * len(widths)
    conf_each = 1 - (1 - CONFIDENCE) / n_checks
    agree_rows: list[dict[str, Any]] = []
    for w in widths:
        for d in checks:
            k = _pooled(counts["he"][w], idx, d)
            p, lo, hi = proportion_ci(k, n, conf_each)
            exact = float(num["theory_he"][w][d - 1])
            agree_rows.append(
                {
                    "width": int(w),
                    "depth": d,
                    "theory": rounded(exact),
                    "monte_carlo": rounded(p),
                    "lo": rounded(lo),
                    "hi": rounded(hi),
                    "inside": lo <= exact <= hi,
                    "within_tol": exact - AGREE_TOL <= lo and hi <= exact + AGREE_TOL,
                    "beyond_tol": hi < exact - AGREE_TOL or lo > exact + AGREE_TOL,
                }
            )
    outside = [r for r in agree_rows if not r["inside"]]
    agree: Verdict = (
        "supported"
        if all(r["within_tol"] for r in agree_rows)
        else "not supported"
        if any(r["beyond_tol"] for r in agree_rows)
        else "mixed"
    )

    # (2) exists: P(born dead) at depth DEEP, narrowest width, above the bound.
    k_deep = _pooled(counts["he"][narrow], idx, deep)
    p_deep, lo_deep, hi_deep = proportion_ci(k_deep, n)
    exists: Verdict = (
        "supported"
        if lo_deep > BORN_DEAD_BOUND
        else "not supported"
        if hi_deep <= BORN_DEAD_BOUND
        else "mixed"
    )
    # (3) grows with depth: dead by DEEP but alive at depth 1, a proportion of the same
    # nets (being dead is monotone in depth), so its Wilson interval is the paired one.
    k_one = _pooled(counts["he"][narrow], idx, 1)
    g, g_lo, g_hi = proportion_ci(k_deep - k_one, n)
    grows = decide(g, g_lo, g_hi, MIN_DEPTH_EFFECT)
    # (4) RAI lowers it: He - RAI at depth DEEP: per-seed differences of the rates (paired
    # t over seeds; Newcombe when every seed gives the same difference).
    k_rai = _pooled(counts["rai"][narrow], idx, deep)
    # He's counts are rescaled to RAI's (smaller) number of nets: conservative.
    n_he, n_rai = int(st["nets_per_seed"]["he"]), int(st["nets_per_seed"]["rai"])
    per_he = [counts["he"][narrow][s][deep - 1] * n_rai / n_he for s in idx]
    per_rai = [counts["rai"][narrow][s][deep - 1] for s in idx]
    r, r_lo, r_hi = paired_proportion_diff_ci(per_he, per_rai, n_rai)
    rai = decide(r, r_lo, r_hi, MIN_RAI_EFFECT)
    verdict = combine([agree, exists, grows, rai])

    per_width = {
        init: {
            w: {
                f"L={d}": dict(
                    zip(
                        ("p", "lo", "hi"),
                        map(
                            rounded,
                            proportion_ci(_pooled(c, idx, d), n if init == "he" else n_other),
                        ),
                        strict=True,
                    )
                )
                for d in (1, 2, 5, 10, 20, 50, 100)
                if d <= depth
            }
            for w, c in counts[init].items()
        }
        for init in counts
    }
    worst = max(agree_rows, key=lambda row: abs(row["monte_carlo"] - row["theory"]))
    summary = (
        f"width {narrow}, depth {deep}: P(born dead) {p_deep:.2f} [{lo_deep:.2f}, "
        f"{hi_deep:.2f}] He (theory {float(num['theory_he'][narrow][deep - 1]):.3f}) vs "
        f"{k_rai / n_other:.2f} RAI; theory inside the Monte Carlo interval at "
        f"{len(agree_rows) - len(outside)}/{len(agree_rows)} (width, depth) points, largest "
        f"gap {abs(worst['monte_carlo'] - worst['theory']):.3f}"
    )
    rule = (
        f"(1) agreement: at widths {widths} and depths {checks}, the Monte Carlo's Wilson "
        f"interval pooled over seeds, simultaneous {CONFIDENCE:.0%} (Bonferroni over "
        f"{n_checks} points, {conf_each:.4f} each), lies within theory +- {AGREE_TOL} "
        f"(deterministic integral, He, bias 0) at every point -> supported; entirely beyond "
        f"it at some point -> not supported; else mixed: {agree} (the theory lies inside "
        f"the interval at {len(agree_rows) - len(outside)}/{len(agree_rows)}); at width "
        f"{narrow}, depth {deep}: (2) P(born dead) "
        f"{p_deep:.3f}, Wilson {CONFIDENCE:.0%} [{lo_deep:.3f}, {hi_deep:.3f}], supported if "
        f"lo > {BORN_DEAD_BOUND} -> {exists}; (3) depth {deep} minus depth 1 (paired: nets "
        f"dead by depth {deep} and alive at 1) {g:.3f} [{g_lo:.3f}, {g_hi:.3f}], supported "
        f"if lo > 0 and effect >= {MIN_DEPTH_EFFECT} -> {grows}; (4) He minus RAI {r:.3f} "
        f"[{r_lo:.3f}, {r_hi:.3f}] (paired over seeds), supported if lo > 0 and effect >= "
        f"{MIN_RAI_EFFECT}, not supported if hi < {MIN_RAI_EFFECT} -> {rai}. combine(): "
        "supported if all four are."
    )
    evidence = {
        "agreement": {
            "verdict": agree,
            "points": agree_rows,
            "confidence_each": rounded(conf_each),
            "largest_gap": worst,
        },
        "exists": {
            "verdict": exists,
            "p": rounded(p_deep),
            "lo": rounded(lo_deep),
            "hi": rounded(hi_deep),
            "depth": deep,
            "width": int(narrow),
        },
        "grows_with_depth": {
            "verdict": grows,
            "effect": rounded(g),
            "lo": rounded(g_lo),
            "hi": rounded(g_hi),
        },
        "rai_lowers_it": {
            "verdict": rai,
            "effect": rounded(r),
            "lo": rounded(r_lo),
            "hi": rounded(r_hi),
        },
        "nets_pooled": {"he": n, "other": n_other},
    }
    return Judgement(
        claims={"C15": ClaimVerdict(verdict, rule, summary, evidence)},
        derived={"born_dead_rate_pooled": per_width, "agreement": agree_rows},
    )


# --------------------------------------------------------------------------------------
# Figure
# --------------------------------------------------------------------------------------


def figure(cfg: LabConfig, sw: Sweep, jd: Judgement) -> list[str]:
    """Theory lines, Monte Carlo points with Wilson bars (He), RAI and He-with-bias."""
    num = sw.numbers
    st = num["setting"]
    depth = int(st["max_depth"])
    n = sw.n_seeds * int(st["nets_per_seed"]["he"])
    n_other = sw.n_seeds * int(st["nets_per_seed"]["rai"])
    idx = list(range(sw.n_seeds))
    fig, axes = new_figure(ncols=1, width=8.5, height=4.2)
    ax = axes[0][0]
    depths = list(range(1, depth + 1))
    marks = sorted({d for d in (1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100) if d <= depth})
    for i, w in enumerate(st["widths"]):
        color = f"C{i}"
        c = num["born_dead_counts"]
        ax.plot(
            depths,
            num["theory_he"][str(w)],
            color=color,
            lw=1.2,
            label=f"N={w} theory (He, bias 0)",
        )
        ps = [proportion_ci(_pooled(c["he"][str(w)], idx, d), n) for d in marks]
        ax.errorbar(
            marks,
            [p[0] for p in ps],
            yerr=[[p[0] - p[1] for p in ps], [p[2] - p[0] for p in ps]],
            fmt="o",
            ms=3,
            color=color,
            capsize=2,
            lw=0.8,
        )
        for init, ls in (("he_bias", ":"), ("rai", "--")):
            curve = [_pooled(c[init][str(w)], idx, d) / n_other for d in depths]
            ax.plot(
                depths,
                curve,
                color=color,
                ls=ls,
                lw=0.9,
                label=f"N={w} RAI" if init == "rai" else None,
            )
    for w, v in REFERENCE_DEPTH10.items():
        if w in st["widths"] and depth >= DEEP:
            ax.plot([DEEP], [v], marker="x", color="k", ms=6, ls="none")
    ax.plot([], [], marker="x", color="k", ls="none", label="reference (issue 10), depth 10")
    ax.set_xscale("log")
    ax.set_xlabel("depth L (hidden layers, log scale)")
    ax.set_ylabel("P(born dead)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(
        f"lines: theory; dots: Monte Carlo ({n} nets), Wilson 95 %\n"
        f"dashed: RAI, dotted: He with symmetric biases ({n_other} nets)",
        fontsize=9,
    )
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return [save_figure(fig, cfg, "e10_born_dead.png")]


EXPERIMENT = register(
    Experiment(
        id="E10",
        claims=("C15",),
        title="Born dead at initialisation",
        question=(
            "How likely is a deep, narrow ReLU network to be dead (constant) at "
            "initialisation, by depth and width; does a Monte Carlo estimate agree with the "
            "exact theory; and does RAI lower it?"
        ),
        method=(
            "Monte Carlo: {setting[nets_per_seed][he]} He nets ({setting[nets_per_seed][rai]} "
            "for the other inits) per seed, seeds {setting[seeds]}, widths {setting[widths]}, "
            "{setting[max_depth]} hidden ReLU layers, input dim 1, a grid of inputs; a net of "
            "depth L is born dead when one of its first L hidden layers is 0 on every input "
            "(deadrelu.born_dead.born_dead_rate), {setting[inputs]} grid inputs. He init with "
            "zero biases (the verdicts' "
            "symmetric reference), He with symmetric biases, and RAI. Theory for He with zero "
            "biases: deadrelu.born_dead.born_dead_probability, a Markov chain on the angle "
            "between the images of x = +1 and x = -1 whose one non-closed-form step is a "
            "deterministic (Sobol) integral. Proportions pooled over seeds, Wilson intervals."
        ),
        sweep=sweep,
        judge=judge,
        figure=figure,
        caveats=(
            "'Born dead' is judged on a grid of inputs of [-sqrt 3, sqrt 3]: exact for zero "
            "biases (the network is positively homogeneous and the grid holds both signs), "
            "otherwise an upper bound of the rate a certificate over the interval would give.",
            "Input dimension 1, as in Lu et al.'s function-approximation examples; wide inputs "
            "and wide layers make born-dead nets rare.",
            "The theory holds for i.i.d. Gaussian weights (any variance) and zero biases; other "
            "symmetric weight laws give other numbers. Its numerical error (grid, Sobol points) "
            "is about 1e-4, far below the Monte Carlo intervals.",
            "Lu et al.'s own figure values are not available offline, so the figure overlays "
            "the issue's independent reference values at depth 10 (width 3: 0.628, 5: 0.153, "
            "8: 0.010); the theory gives 0.631, 0.152, 0.010 (0.628 is 0.003 below, within the "
            "error of a Monte Carlo of about 10^4 nets).",
            "RAI from deadrelu.init.rai_sample; its sigma and asymmetric distribution "
            "(Beta(2, 1)) follow that implementation.",
        ),
    )
)
