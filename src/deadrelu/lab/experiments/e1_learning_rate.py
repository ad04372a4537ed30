"""E1 (C3, C6): learning-rate sweep -> dead fraction and test accuracy, ReLU vs variants.

The notes: a very high learning rate kills ReLU units (C3); use a low learning rate (C6).
Each activation is trained at every learning rate of the sweep on the same seeds (same
initial weights and minibatch order per seed), plain SGD, fixed step budget. We measure,
after training, the fraction of hidden units that are

* **dead**: never active (z > 0) on any training input (``deadrelu.classify.dead_mask``);
* **stuck**: pass no usable gradient on any training input: zero gradient everywhere
  (for ReLU: dead) or saturated (``deadrelu.classify.saturated_mask``, ELU).

Runs whose loss or weights become non-finite are counted as diverged and left out of the
dead-fraction statistics (a NaN unit is "never active" but not dead in the notes' sense).
"""

from __future__ import annotations

import math
from typing import Any

from deadrelu.lab.core import (
    ExperimentResult,
    LabConfig,
    Verdict,
    ci_dict,
    experiment,
    new_figure,
    rounded,
    save_figure,
)
from deadrelu.lab.data import load
from deadrelu.lab.trainer import Member, TrainConfig, TrainResult, train_batched
from deadrelu.lab.verdicts import combine, compare_detail, mean_ci

#: Activations compared (registry strings).
ACTIVATIONS = ("relu", "leaky_relu", "elu")
#: Minimum increase of the dead fraction (absolute) for "a high learning rate kills units".
MIN_DEAD_EFFECT = 0.02
#: "Keeps the dead fraction under 1 %" (CLAIMS.md, C6).
SAFE_DEAD = 0.01
#: Accuracy a remedy may cost (absolute) and still be called free.
MAX_ACC_COST = 0.02


def _stuck(res: TrainResult) -> list[float]:
    """Per member: fraction of hidden units that are frozen or saturated, pooled."""
    return [
        float(f + s)
        for f, s in zip(res.pooled("frozen_frac"), res.pooled("saturated_frac"), strict=True)
    ]


def sweep(cfg: LabConfig) -> dict[str, Any]:
    """Train every activation at every learning rate; return the per-seed numbers."""
    data = load(cfg.dataset, 0).to(cfg.device)
    hidden = cfg.size(tiny=16, quick=64, full=100)
    steps = cfg.size(tiny=30, quick=300, full=2000)
    lrs = cfg.size(
        tiny=[0.03, 3.0],
        quick=[0.01, 0.03, 0.1, 0.3, 1.0, 2.0],
        full=[0.003, 0.01, 0.03, 0.1, 0.3, 0.6, 1.0, 1.5, 2.0, 3.0],
    )
    tc = TrainConfig(
        widths=(data.n_features, hidden, hidden, data.n_classes),
        steps=steps,
        batch_size=cfg.size(tiny=50, quick=100, full=100),
        eval_every=steps,
        probe_limit=cfg.size(tiny=500, quick=None, full=None),
    )
    seeds = list(range(cfg.n_seeds))
    out: dict[str, Any] = {"lrs": lrs, "seeds": len(seeds), "steps": steps, "widths": tc.widths}
    per_act: dict[str, Any] = {}
    for act in ACTIVATIONS:
        members = [Member(seed=s, lr=lr, activation=act) for lr in lrs for s in seeds]
        res = train_batched(members, tc, data)
        dead, stuck, acc, div = (
            res.pooled("dead_frac"),
            _stuck(res),
            res.test_acc[:, -1],
            res.diverged,
        )
        rows = []
        for i, lr in enumerate(lrs):
            idx = [i * len(seeds) + k for k in range(len(seeds))]
            ok = [j for j in idx if not bool(div[j])]
            rows.append(
                {
                    "lr": lr,
                    "diverged": len(idx) - len(ok),
                    "dead": [rounded(float(dead[j])) for j in ok],
                    "stuck": [rounded(stuck[j]) for j in ok],
                    "acc": [rounded(float(acc[j])) for j in idx],
                    "dead_per_layer": [
                        [rounded(v) for v in res.dead_frac[j, -1].tolist()] for j in ok
                    ],
                }
            )
        per_act[act] = rows
    out["results"] = per_act
    return out


def _mean(xs: list[Any]) -> float:
    vals = [float(x) for x in xs if x is not None]
    return math.fsum(vals) / len(vals) if vals else math.nan


def verdicts(numbers: dict[str, Any]) -> tuple[dict[str, Verdict], dict[str, Any]]:
    """The rules for C3 and C6, applied to the ReLU rows of :func:`sweep`'s numbers.

    * C3: ``hi`` = the largest learning rate at which no ReLU run diverged, ``lo`` = the
      smallest. Supported when the pooled dead fraction at ``hi`` exceeds the one at
      ``lo`` by >= MIN_DEAD_EFFECT with a 95 % interval above 0
      (``verdicts.compare``, Welch); not supported when the interval rules that out.
    * C6: ``safe`` = the largest learning rate whose mean ReLU dead fraction is below 1 %;
      ``cost`` = best mean accuracy over all non-diverged learning rates minus the
      accuracy at ``safe``. Not supported when no rate is safe or C3 is not supported
      (lowering the rate would not matter); supported when the accuracy cost's 95 %
      interval lies below MAX_ACC_COST (a low rate is free); mixed otherwise (it prevents
      dying but costs accuracy at this step budget).
    """
    rows = numbers["results"]["relu"]
    finite = [r for r in rows if r["diverged"] == 0 and r["dead"]]
    detail: dict[str, Any] = {}
    if len(finite) < 2:
        return {"C3": "n/a", "C6": "n/a"}, {"reason": "fewer than two non-diverged rates"}
    low, high = finite[0], finite[-1]
    c3 = compare_detail(
        high["dead"], low["dead"], min_effect=MIN_DEAD_EFFECT, higher_is_better=True
    )
    detail["C3"] = {"lr_low": low["lr"], "lr_high": high["lr"], **c3.to_dict()}
    safe = [r for r in rows if r["dead"] and _mean(r["dead"]) < SAFE_DEAD]
    c6: Verdict
    if not safe or c3.verdict == "not supported":
        c6 = "not supported"
        detail["C6"] = {"lr_safe": None, "rule": "no rate keeps dead < 1 % or C3 fails"}
    else:
        s = max(safe, key=lambda r: r["lr"])
        best = max(finite, key=lambda r: _mean(r["acc"]))
        cost = [float(b) - float(a) for a, b in zip(s["acc"], best["acc"], strict=True)]
        m, lo, hi = mean_ci(cost)
        c6 = "supported" if hi < MAX_ACC_COST else "mixed"
        detail["C6"] = {
            "lr_safe": s["lr"],
            "lr_best_acc": best["lr"],
            "acc_cost": rounded(m),
            "acc_cost_lo": rounded(lo),
            "acc_cost_hi": rounded(hi),
            "verdict": c6,
        }
    return {"C3": c3.verdict, "C6": c6}, detail


def _figure(cfg: LabConfig, numbers: dict[str, Any]) -> str:
    fig, axes = new_figure(ncols=2, width=4.6)
    ax_dead, ax_acc = axes[0, 0], axes[0, 1]
    for act, rows in numbers["results"].items():
        lrs = [r["lr"] for r in rows]
        for ax, key in ((ax_dead, "stuck"), (ax_acc, "acc")):
            cis = [ci_dict(r[key]) if r[key] else None for r in rows]
            xs = [lr for lr, c in zip(lrs, cis, strict=True) if c and c["mean"] is not None]
            ms = [c["mean"] for c in cis if c and c["mean"] is not None]
            err = [
                [c["mean"] - (c["lo"] if c["lo"] is not None else c["mean"]) for c in cis if c],
                [(c["hi"] if c["hi"] is not None else c["mean"]) - c["mean"] for c in cis if c],
            ]
            if len(err[0]) == len(xs):
                ax.errorbar(xs, ms, yerr=err, marker="o", capsize=3, label=act)
            else:
                ax.plot(xs, ms, marker="o", label=act)
        for r in rows:
            if r["diverged"]:
                ax_acc.annotate(
                    f"{act}: {r['diverged']}/{numbers['seeds']} diverged",
                    (r["lr"], 0.1),
                    fontsize=7,
                    rotation=90,
                    va="bottom",
                )
    ax_dead.axhline(SAFE_DEAD, color="grey", ls=":", lw=1)
    for ax in (ax_dead, ax_acc):
        ax.set_xscale("log")
        ax.set_xlabel("learning rate (SGD)")
        ax.grid(alpha=0.3)
    ax_dead.set_ylabel("stuck fraction of hidden units")
    ax_dead.set_title("dead (ReLU) / saturated (ELU) after training")
    ax_acc.set_ylabel("test accuracy")
    ax_acc.set_title("final test accuracy")
    ax_acc.legend()
    fig.tight_layout()
    return save_figure(fig, cfg, "e1_learning_rate")


@experiment("E1", ("C3", "C6"), "Learning rate vs dead units")
def run(cfg: LabConfig) -> ExperimentResult:
    """Sweep the learning rate for ReLU, Leaky ReLU and ELU; apply the C3/C6 rules."""
    numbers = sweep(cfg)
    claim_verdicts, detail = verdicts(numbers)
    numbers["claim_verdicts"] = claim_verdicts
    numbers["verdict_detail"] = detail
    summary_rows = {}
    for act, rows in numbers["results"].items():
        summary_rows[act] = {
            str(r["lr"]): {
                "dead": ci_dict(r["dead"]) if r["dead"] else None,
                "stuck": ci_dict(r["stuck"]) if r["stuck"] else None,
                "acc": ci_dict(r["acc"]),
                "diverged": r["diverged"],
            }
            for r in rows
        }
    numbers["summary"] = summary_rows
    c3 = detail.get("C3", {})
    c6 = detail.get("C6", {})
    relu = numbers["summary"]["relu"]
    hi_lr = c3.get("lr_high")
    lo_lr = c3.get("lr_low")

    def dead_at(lr: Any) -> str:
        d = relu.get(str(lr), {}).get("dead") if lr is not None else None
        return f"{100 * d['mean']:.1f} %" if d and d["mean"] is not None else "n/a"

    numbers["claim_summaries"] = {
        "C3": f"ReLU dead {dead_at(lo_lr)} at lr {lo_lr} vs {dead_at(hi_lr)} at lr {hi_lr}",
        "C6": (
            f"largest lr with < 1 % dead: {c6.get('lr_safe')}; accuracy cost vs the best lr "
            f"{c6.get('acc_cost')}"
        ),
    }
    summary = (
        f"{numbers['claim_summaries']['C3']} (C3 {claim_verdicts['C3']}); "
        f"{numbers['claim_summaries']['C6']} (C6 {claim_verdicts['C6']})"
    )
    return ExperimentResult(
        id="E1",
        claims=("C3", "C6"),
        title="Learning rate vs dead units",
        question=(
            "Does a high learning rate kill ReLU units (C3), and does a low one prevent it, "
            "at what cost in accuracy (C6)? Do the variants die too?"
        ),
        method=(
            f"MLP {numbers['widths']} on {cfg.dataset}, plain SGD, batch "
            f"{cfg.size(tiny=50, quick=100, full=100)}, {numbers['steps']} steps, He init, "
            f"learning rates {numbers['lrs']}, {numbers['seeds']} seeds (same seeds for every "
            f"rate and activation), all runs trained at once by the batched trainer. Dead = "
            "never z > 0 on any training input (deadrelu.classify.dead_mask); stuck = zero "
            "gradient on every training input or saturated (classify.saturated_mask). "
            "Diverged runs (non-finite loss) are left out of the dead statistics and counted."
        ),
        numbers=numbers,
        verdict=combine(claim_verdicts.values()),
        verdict_rule=(
            "C3: dead fraction at the largest non-diverging lr minus at the smallest, Welch "
            f"95 % CI; supported if CI lo > 0 and effect >= {MIN_DEAD_EFFECT}, not supported "
            f"if CI hi < {MIN_DEAD_EFFECT}, else mixed. C6: lr_safe = largest lr with mean "
            f"dead < {SAFE_DEAD:.0%}; cost = best accuracy - accuracy at lr_safe (paired "
            f"over seeds); supported if cost CI hi < {MAX_ACC_COST}, mixed otherwise, not "
            "supported if no rate is safe or C3 is not supported. Overall: all supported -> "
            "supported, all not supported -> not supported, else mixed."
        ),
        summary=summary,
        figures=[_figure(cfg, numbers)],
        caveats=[
            "A fixed step budget favours larger learning rates: the accuracy cost of a low "
            "rate partly measures slower convergence, not a worse optimum.",
            "Plain SGD without momentum, one small MLP on MNIST-1D: deep or convolutional "
            "networks, Adam or schedules may die at other rates.",
            "Leaky ReLU units can be never active (counted as dead) yet still learn through "
            "the negative slope: for them only 'stuck' means no gradient, and it is 0 by "
            "construction.",
        ],
    )
