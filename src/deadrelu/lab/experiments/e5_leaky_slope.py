"""E5 (C9): the Leaky ReLU slope sweep, "why 0.01?".

The notes: Leaky ReLU, f(z) = max(0.01 z, z), does not die, is cheap and close to
zero-centred; they ask why the slope is 0.01. We train Leaky ReLU MLPs with slopes
0 (= ReLU), 0.001, 0.01, 0.1, 0.2, 0.3 at a moderate learning rate and at the one that
kills ReLU units in E1, in one batched call (same seeds, so the same initial weights and
minibatches for every slope), and measure

* the **never-active** fraction per layer at the end (``deadrelu.classify.dead_mask``: the
  same definition for every slope, so no slope wins by construction) and, of the units
  never active at some evaluation, the fraction **active again later** (gradient reaching
  formerly dead units through the slope brings them back);
* **divergence** and the test **accuracy** (a diverged run keeps the accuracy it measured:
  a slope that diverges is worse for it);
* the **mean activation** per layer (zero-centring).

"Why 0.01" is answered without picking the best slope after the fact: 0.01 is compared with
every other slope, with Holm-adjusted p-values and simultaneous intervals.
"""

from __future__ import annotations

import math
from typing import Any

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
from deadrelu.lab.data import load
from deadrelu.lab.experiments._common import acc_ci, fmt_ci, frac_ci, interval, pick
from deadrelu.lab.experiments.e3_irreversibility import revival
from deadrelu.lab.trainer import Member, TrainConfig, train_batched
from deadrelu.lab.verdicts import (
    Verdict,
    combine,
    decide,
    holm,
    mean_ci,
    paired_proportion_diff_ci,
    pooled_proportion_ci,
    t_pvalue,
)

SLOPES = (0.0, 0.001, 0.01, 0.1, 0.2, 0.3)
#: Learning rates: a moderate one, and the one that kills ReLU units in E1.
LRS = (0.3, 2.0)
#: Minimum reduction of the never-active fraction for "does not die".
MIN_DEAD_EFFECT = 0.02
#: Accuracy (absolute) by which another slope must beat 0.01 to make 0.01 a poor choice.
ACC_TOLERANCE = 0.01
#: The slope the notes use.
REFERENCE = 0.01


def sweep(cfg: LabConfig) -> Sweep:
    """Train every slope at every rate on the same seeds in one call; per-seed numbers."""
    data = load(cfg.dataset, 0).to(cfg.device)
    hidden = cfg.size(tiny=16, quick=64, full=100)
    steps = cfg.size(tiny=30, quick=300, full=600)
    every = cfg.size(tiny=10, quick=30, full=40)
    tc = TrainConfig(
        widths=(data.n_features, hidden, hidden, data.n_classes),
        steps=steps,
        batch_size=cfg.size(tiny=50, quick=100, full=100),
        eval_every=every,
        record_masks=True,
        probe_limit=cfg.size(tiny=500, quick=None, full=None),
    )
    n = cfg.n_seeds
    settings = [(lr, a) for lr in LRS for a in SLOPES]
    members = [
        Member(seed=s, lr=lr, activation=f"leaky_relu(slope={a!r})")
        for lr, a in settings
        for s in range(n)
    ]
    res = train_batched(members, tc, data)
    div = res.diverged.tolist()
    rows: dict[str, Any] = {}
    for k, (lr, slope) in enumerate(settings):
        idx = list(range(k * n, (k + 1) * n))
        rev: list[Any] = []
        for i in idx:
            ever = revived = 0
            for masks in res.dead_masks:
                e, r = revival(masks[:, i, :])
                ever, revived = ever + e, revived + r
            rev.append(None if div[i] else [ever, revived])
        rows[f"{lr}/{slope}"] = {
            "lr": lr,
            "slope": slope,
            "diverged": [bool(div[i]) for i in idx],
            "never_active": [
                None if div[i] else [rounded(v) for v in res.dead_frac[i, -1].tolist()] for i in idx
            ],
            "revived": rev,
            "acc": [rounded(float(res.test_acc[i, -1])) for i in idx],
            "mean_act": [
                None if div[i] else [rounded(v) for v in res.mean_act[i, -1].tolist()] for i in idx
            ],
        }
    return Sweep(
        numbers={
            "widths": list(tc.widths),
            "steps": steps,
            "lrs": list(LRS),
            "n_seeds": n,
            "n_test": int(data.y_test.shape[0]),
            "eval_every": every,
            "slopes": list(SLOPES),
            "rows": rows,
        },
        n_seeds=n,
    )


def why_001(acc: dict[float, list[float]], n_test: int, confidence: float = 0.95) -> dict[str, Any]:
    """Is 0.01 a good slope? ``acc``: slope -> per-seed accuracies (same seeds).

    For every other slope ``s``: ``d_s`` = accuracy(s) - accuracy(0.01), paired over seeds;
    one-sided paired t p-value of ``d_s > 0`` (resolution ``1 / n_test`` added to the
    variance, so identical seeds do not give a zero-width interval), Holm-adjusted over the
    slopes, and a simultaneous (Bonferroni) interval. ``s`` beats 0.01 when its adjusted p
    < 1 - confidence and ``d_s >= ACC_TOLERANCE``; ``s`` does not beat it when the
    simultaneous interval lies below ACC_TOLERANCE. Verdict "0.01 is a good choice":
    supported when no slope beats it and every slope's interval lies below
    ACC_TOLERANCE; not supported when some slope beats it; mixed otherwise.
    """
    ref = acc[REFERENCE]
    others = [s for s in acc if s != REFERENCE]
    level = 1.0 - (1.0 - confidence) / len(others)
    res = 1.0 / n_test
    rows: dict[str, Any] = {}
    pvals: list[float] = []
    for s in others:
        diffs = [a - b for a, b in zip(acc[s], ref, strict=True)]
        n = len(diffs)
        d = math.fsum(diffs) / n
        if n < 2:
            lo, hi, p = -math.inf, math.inf, 1.0
        else:
            _, lo, hi = mean_ci(diffs, level, resolution=res)
            var = math.fsum((x - d) ** 2 for x in diffs) / (n - 1) + res * res / 12.0
            p = t_pvalue(d / math.sqrt(var / n), n - 1, "greater")
        pvals.append(p)
        rows[str(s)] = {"diff": interval(d, lo, hi), "p": rounded(p)}
    adjusted = holm(pvals)
    beats, clear = [], []
    for s, p_adj in zip(others, adjusted, strict=True):
        r = rows[str(s)]
        r["p_holm"] = rounded(p_adj)
        d, hi = r["diff"]["mean"], r["diff"]["hi"]
        r["beats_0.01"] = bool(p_adj < 1.0 - confidence and d >= ACC_TOLERANCE)
        r["below_tolerance"] = bool(hi is not None and hi < ACC_TOLERANCE)
        if r["beats_0.01"]:
            beats.append(s)
        if r["below_tolerance"]:
            clear.append(s)
    verdict: Verdict = (
        "not supported" if beats else "supported" if len(clear) == len(others) else "mixed"
    )
    return {
        "confidence": rounded(level),
        "slopes": rows,
        "beat_0.01": beats,
        "verdict": verdict,
    }


def judge(sw: Sweep, seeds: SeedIndex) -> Judgement:
    """C9 on the seeds ``seeds`` (None: all) = combine of

    * **no dying** at the largest rate: never-active fraction (all hidden units) at slope 0
      minus at 0.01, paired (``paired_proportion_diff_ci``), seeds where both converged;
      supported if CI lo > 0 and >= MIN_DEAD_EFFECT, not supported if CI hi <
      MIN_DEAD_EFFECT, else mixed;
    * **why 0.01** at each rate: :func:`why_001` (0.01 against every other slope, Holm).
    """
    nb = sw.numbers
    units = nb["widths"][1:-1]
    total = sum(units)
    n_test = nb["n_test"]
    rows = nb["rows"]
    high = max(nb["lrs"])

    def pooled(x: list[Any] | None) -> float | None:
        return None if x is None else sum(f * h for f, h in zip(x, units, strict=True)) / total

    a = [pooled(x) for x in pick(rows[f"{high}/0.0"]["never_active"], seeds)]
    b = [pooled(x) for x in pick(rows[f"{high}/{REFERENCE}"]["never_active"], seeds)]
    pairs = [(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    die: dict[str, Any]
    if pairs:
        eff, lo, hi = paired_proportion_diff_ci(
            [round(x * total) for x, _ in pairs], [round(y * total) for _, y in pairs], total
        )
        v = decide(eff, lo, hi, MIN_DEAD_EFFECT)
        die = {"lr": high, "reduction": interval(eff, lo, hi), "verdict": v}
    else:
        die = {"lr": high, "verdict": "n/a", "reason": "every run diverged"}
    why = {
        str(lr): why_001(
            {s: [float(x) for x in pick(rows[f"{lr}/{s}"]["acc"], seeds)] for s in nb["slopes"]},
            n_test,
        )
        for lr in nb["lrs"]
    }
    derived: dict[str, Any] = {}
    for key, r in rows.items():
        na = pick(r["never_active"], seeds)
        rev = [x for x in pick(r["revived"], seeds) if x is not None]
        ever, back = sum(x[0] for x in rev), sum(x[1] for x in rev)
        ma = [x for x in pick(r["mean_act"], seeds) if x is not None]
        derived[key] = {
            "diverged": sum(pick(r["diverged"], seeds)),
            "acc": acc_ci(pick(r["acc"], seeds), n_test),
            "never_active": [
                frac_ci([x[li] if x else None for x in na], h) for li, h in enumerate(units)
            ],
            "revived": (
                _revived_ci([x[0] for x in rev], [x[1] for x in rev])
                if ever
                else {"mean": None, "lo": None, "hi": None, "ever_dead": 0}
            ),
            "revived_counts": [ever, back],
            "mean_act": [
                interval(*mean_ci([m[li] for m in ma])) if len(ma) > 1 else None
                for li in range(len(units))
            ],
        }

    def acc_text(lr: float) -> str:
        return " / ".join(
            f"{s}: {derived[f'{lr}/{s}']['acc']['mean']:.3f}"
            + (
                f" ({derived[f'{lr}/{s}']['diverged']} diverged)"
                if derived[f"{lr}/{s}"]["diverged"]
                else ""
            )
            for s in nb["slopes"]
        )

    summary = (
        f"never active at lr {high}: slope 0 vs 0.01 reduction "
        + (fmt_ci(die["reduction"], signed=True) if "reduction" in die else "n/a")
        + "; accuracy per slope "
        + "; ".join(f"lr {lr}: {acc_text(lr)}" for lr in nb["lrs"])
        + "; slopes that beat 0.01 (Holm): "
        + "; ".join(
            f"lr {lr}: {', '.join(map(str, w['beat_0.01'])) or 'none'}" for lr, w in why.items()
        )
    )
    verdict = combine([die["verdict"], *(w["verdict"] for w in why.values())])
    claims = {
        "C9": ClaimVerdict(
            verdict=verdict,
            rule=(
                f"No dying (lr {high}): never-active fraction, slope 0 minus 0.01, paired "
                f"interval; supported if CI lo > 0 and >= {MIN_DEAD_EFFECT}, not supported if "
                f"CI hi < {MIN_DEAD_EFFECT}. Why 0.01 (each lr): for every other slope s, "
                "accuracy(s) - accuracy(0.01), paired t, one-sided p Holm-adjusted over the "
                "5 slopes, simultaneous Bonferroni interval; supported if no slope beats 0.01 "
                f"(adjusted p < 0.05 and gain >= {ACC_TOLERANCE}) and every interval lies "
                f"below {ACC_TOLERANCE}; not supported if some slope beats it; else mixed. "
                "Diverged runs keep their measured accuracy. C9 = combine of the parts."
            ),
            summary=summary,
            evidence={"no_dying": die, "why_0.01": why},
        )
    }
    return Judgement(claims=claims, derived=derived)


def _revived_ci(ever: list[int], back: list[int]) -> dict[str, Any]:
    """Pooled share of ever-dead units that came back, Wilson with design effect."""
    kept = [(e, b) for e, b in zip(ever, back, strict=True) if e > 0]
    p, lo, hi = pooled_proportion_ci([b for _, b in kept], [e for e, _ in kept])
    return {**interval(p, lo, hi), "ever_dead": sum(e for e, _ in kept)}


def figure(cfg: LabConfig, sw: Sweep, jd: Judgement) -> list[str]:
    """Accuracy, never-active fraction (last layer) and revival against the slope."""
    nb = sw.numbers
    fig, axes = new_figure(ncols=3, width=3.9)
    last = len(nb["widths"]) - 3
    for lr in nb["lrs"]:
        xs = list(range(len(nb["slopes"])))
        for ax, get, title in (
            (axes[0, 0], lambda d: d["acc"], "test accuracy (95 % CI)"),
            (axes[0, 1], lambda d: d["never_active"][last], "never active, last hidden layer"),
            (axes[0, 2], lambda d: d["revived"], "never-active units that came back"),
        ):
            cis = [get(jd.derived[f"{lr}/{s}"]) for s in nb["slopes"]]
            ms = [c["mean"] if c["mean"] is not None else float("nan") for c in cis]
            lo = [c["mean"] - c["lo"] if c["lo"] is not None else 0.0 for c in cis]
            hi = [c["hi"] - c["mean"] if c["hi"] is not None else 0.0 for c in cis]
            ax.errorbar(xs, ms, yerr=[lo, hi], marker="o", capsize=3, label=f"lr {lr}")
            ax.set_xticks(xs, [str(s) for s in nb["slopes"]])
            ax.set_xlabel("negative slope")
            ax.set_title(title, fontsize=9)
            ax.grid(alpha=0.3)
    axes[0, 0].legend()
    fig.suptitle("Leaky ReLU slope sweep (SGD)", fontsize=10)
    fig.tight_layout()
    return [save_figure(fig, cfg, "e5_leaky_slope")]


EXPERIMENT = register(
    Experiment(
        id="E5",
        claims=("C9",),
        title="Leaky ReLU slope: why 0.01?",
        question=(
            "Does the negative slope stop units dying, and is 0.01 a good value against "
            "0, 0.001, 0.1, 0.2, 0.3: accuracy, gradient reaching never-active units, mean "
            "activation?"
        ),
        method=(
            "MLP {widths} on MNIST-1D, SGD at lr {lrs} (the largest kills ReLU units in E1), "
            "{steps} steps, He init, {n_seeds} seeds shared by all slopes and rates (one "
            "batched call). Every {eval_every} steps every unit is classified on the "
            "training set; never active = never z > 0 (the same definition for every slope); "
            "revived = never active at some evaluation, active at a later one. 0.01 is "
            "compared with every other slope (paired by seed, Holm-adjusted)."
        ),
        sweep=sweep,
        judge=judge,
        figure=figure,
        caveats=(
            "Two learning rates and one small MLP: the best slope depends on the setting "
            "(Maas et al. 2013 chose 0.01 without a sweep; later work often uses 0.1-0.3).",
            "A diverged run keeps its measured (chance-level) accuracy: divergence counts "
            "against a slope; the number of diverged runs is shown beside each accuracy.",
            "Cost ('cheap') is measured in E9, not here.",
        ),
    )
)
