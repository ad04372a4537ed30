"""E2 (C4, C7): initial bias and one large negative update -> dead ReLU units.

The notes: a large negative bias, e.g. after one large update that drives b far below 0,
kills units (C4); initialising biases to a small positive value such as 0.01 prevents it
(C7). Three sweeps of ReLU MLPs, same seeds (same weights and minibatch order) in every
arm:

* **bias at init**: every hidden bias set to a value from large negative to positive,
  trained at a moderate learning rate; dead fraction at init and after training;
* **one large update**: at one step, every hidden bias moved by a negative amount (the
  effect of one large gradient step on the biases), then training goes on; dead fraction
  just after the update and at the end;
* **small positive bias under a high learning rate**: bias 0 vs 0.01 vs larger, at the
  learning rate that kills units in E1: does 0.01 prevent dying where dying happens?

Dead = never active on any training input (``deadrelu.classify.dead_mask``), pooled over
the hidden units.
"""

from __future__ import annotations

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
from deadrelu.lab.verdicts import combine, compare_detail

#: Moderate learning rate (does not kill units by itself in E1).
BASE_LR = 0.1
#: High learning rate (kills units in E1).
HIGH_LR = 2.0
#: Minimum increase of the dead fraction (absolute) for "kills units".
MIN_KILL_EFFECT = 0.05
#: Minimum decrease of the dead fraction (absolute) for "0.01 prevents dying".
MIN_PREVENT_EFFECT = 0.01


def _per_seed(res: TrainResult, values: list[float], n_seeds: int, t: int) -> list[list[Any]]:
    """Split ``res.pooled`` at eval ``t`` into one list per setting (non-diverged only)."""
    dead = res.pooled("dead_frac", t).tolist()
    div = res.diverged.tolist()
    return [
        [rounded(float(dead[i * n_seeds + k])) for k in range(n_seeds) if not div[i * n_seeds + k]]
        for i in range(len(values))
    ]


def sweep(cfg: LabConfig) -> dict[str, Any]:
    """Run the three sweeps; return per-seed dead fractions and accuracies."""
    data = load(cfg.dataset, 0).to(cfg.device)
    hidden = cfg.size(tiny=16, quick=64, full=100)
    steps = cfg.size(tiny=30, quick=300, full=1500)
    kick_step = steps // 3
    n = cfg.n_seeds
    seeds = list(range(n))
    widths = (data.n_features, hidden, hidden, data.n_classes)
    biases = cfg.size(
        tiny=[-3.0, 0.0, 0.01],
        quick=[-3.0, -2.0, -1.0, -0.5, -0.1, 0.0, 0.01, 0.1, 0.5],
        full=[-5.0, -3.0, -2.0, -1.0, -0.5, -0.25, -0.1, 0.0, 0.01, 0.05, 0.1, 0.5, 1.0],
    )
    kicks = cfg.size(
        tiny=[0.0, -5.0],
        quick=[0.0, -0.5, -1.0, -2.0, -4.0],
        full=[0.0, -0.25, -0.5, -1.0, -2.0, -4.0, -8.0],
    )
    high_biases = cfg.size(tiny=[0.0, 0.01], quick=[0.0, 0.01, 0.1], full=[0.0, 0.01, 0.1, 0.5])
    probe = cfg.size(tiny=500, quick=None, full=None)
    batch = cfg.size(tiny=50, quick=100, full=100)
    tc = TrainConfig(widths, steps, batch, eval_every=kick_step, probe_limit=probe)
    # kick_step is an evaluation step: evaluations are at 0, kick_step, 2 kick_step, ...
    kick_eval = tc.eval_steps().index(kick_step)

    res_b = train_batched(
        [Member(seed=s, lr=BASE_LR, bias_init=b) for b in biases for s in seeds], tc, data
    )
    res_k = train_batched(
        [
            Member(seed=s, lr=BASE_LR, bias_kick=k, kick_step=kick_step)
            for k in kicks
            for s in seeds
        ],
        tc,
        data,
    )
    res_h = train_batched(
        [Member(seed=s, lr=HIGH_LR, bias_init=b) for b in high_biases for s in seeds], tc, data
    )

    def acc(res: TrainResult, i: int) -> list[Any]:
        return [rounded(float(a)) for a in res.test_acc[i * n : (i + 1) * n, -1]]

    return {
        "widths": widths,
        "steps": steps,
        "kick_step": kick_step,
        "seeds": n,
        "base_lr": BASE_LR,
        "high_lr": HIGH_LR,
        "bias_init": {
            "values": biases,
            "dead_at_init": _per_seed(res_b, biases, n, 0),
            "dead_after": _per_seed(res_b, biases, n, -1),
            "acc": [acc(res_b, i) for i in range(len(biases))],
        },
        "bias_kick": {
            "values": kicks,
            "dead_before": _per_seed(res_k, kicks, n, kick_eval - 1),
            "dead_after_kick": _per_seed(res_k, kicks, n, kick_eval),
            "dead_end": _per_seed(res_k, kicks, n, -1),
            "acc": [acc(res_k, i) for i in range(len(kicks))],
        },
        "high_lr_bias": {
            "values": high_biases,
            "dead_at_init": _per_seed(res_h, high_biases, n, 0),
            "dead_after": _per_seed(res_h, high_biases, n, -1),
            "diverged": [
                int(res_h.diverged[i * n : (i + 1) * n].sum()) for i in range(len(high_biases))
            ],
            "acc": [acc(res_h, i) for i in range(len(high_biases))],
        },
    }


def verdicts(numbers: dict[str, Any]) -> tuple[dict[str, Verdict], dict[str, Any]]:
    """C4 and C7 from :func:`sweep`'s numbers.

    * C4 = combine of two ``verdicts.compare`` (paired over seeds, higher is "as
      claimed", min effect MIN_KILL_EFFECT): dead fraction after training with the most
      negative initial bias vs bias 0; dead fraction at the end with the largest negative
      update vs none.
    * C7: at the high learning rate, dead fraction after training with bias 0 minus with
      bias 0.01 (paired); supported if its CI is above 0 and it is >= MIN_PREVENT_EFFECT,
      not supported if the CI lies below MIN_PREVENT_EFFECT (e.g. no effect), else mixed.
    """
    detail: dict[str, Any] = {}
    b = numbers["bias_init"]
    zero = b["values"].index(0.0)
    neg = b["values"].index(min(b["values"]))
    c4a = compare_detail(
        b["dead_after"][neg],
        b["dead_after"][zero],
        min_effect=MIN_KILL_EFFECT,
        higher_is_better=True,
        paired=len(b["dead_after"][neg]) == len(b["dead_after"][zero]),
    )
    detail["C4_bias_init"] = {"bias": b["values"][neg], **c4a.to_dict()}
    k = numbers["bias_kick"]
    none = k["values"].index(0.0)
    big = k["values"].index(min(k["values"]))
    c4b = compare_detail(
        k["dead_end"][big],
        k["dead_end"][none],
        min_effect=MIN_KILL_EFFECT,
        higher_is_better=True,
        paired=len(k["dead_end"][big]) == len(k["dead_end"][none]),
    )
    detail["C4_update"] = {"kick": k["values"][big], **c4b.to_dict()}
    h = numbers["high_lr_bias"]
    z, p = h["values"].index(0.0), h["values"].index(0.01)
    a, bb = h["dead_after"][z], h["dead_after"][p]
    c7: Verdict
    if not a or not bb:
        c7 = "n/a"
        detail["C7"] = {"reason": "every run diverged"}
    else:
        cmp = compare_detail(
            a,
            bb,
            min_effect=MIN_PREVENT_EFFECT,
            higher_is_better=True,
            paired=len(a) == len(bb),
        )
        c7 = cmp.verdict
        detail["C7"] = {"lr": numbers["high_lr"], **cmp.to_dict()}
    return {"C4": combine([c4a.verdict, c4b.verdict]), "C7": c7}, detail


def _figure(cfg: LabConfig, numbers: dict[str, Any]) -> str:
    fig, axes = new_figure(ncols=3, width=4.0)
    b = numbers["bias_init"]
    ax = axes[0, 0]
    xs = list(range(len(b["values"])))
    for key, label in (("dead_at_init", "at init"), ("dead_after", "after training")):
        means = [ci_dict(v)["mean"] if v else None for v in b[key]]
        ax.plot(xs, means, marker="o", label=label)
    ax.set_xticks(xs, [f"{v:g}" for v in b["values"]], fontsize=8)
    ax.set_xlabel("initial hidden bias (not to scale)")
    ax.set_ylabel("dead fraction (ReLU)")
    ax.set_title(f"bias at init, lr {numbers['base_lr']}")
    ax.legend()
    k = numbers["bias_kick"]
    ax = axes[0, 1]
    xs = [-v for v in k["values"]]
    for key, label in (
        ("dead_before", "before the update"),
        ("dead_after_kick", "just after"),
        ("dead_end", "end of training"),
    ):
        means = [ci_dict(v)["mean"] if v else None for v in k[key]]
        ax.plot(xs, means, marker="o", label=label)
    ax.set_xlabel("size of one negative bias update")
    ax.set_title(f"one large update at step {numbers['kick_step']}")
    ax.legend()
    h = numbers["high_lr_bias"]
    ax = axes[0, 2]
    cis = [ci_dict(v) if v else None for v in h["dead_after"]]
    labels = [str(v) for v in h["values"]]
    means = [c["mean"] if c and c["mean"] is not None else 0.0 for c in cis]
    ax.bar(labels, means, color="tab:red", alpha=0.7)
    for i, c in enumerate(cis):
        if c and c["lo"] is not None and c["hi"] is not None:
            ax.plot([i, i], [c["lo"], c["hi"]], color="black")
    ax.set_xlabel("initial hidden bias")
    ax.set_title(f"dead after training, lr {numbers['high_lr']}")
    for a in axes[0]:
        a.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, cfg, "e2_bias")


@experiment("E2", ("C4", "C7"), "Negative bias, one large update, bias 0.01")
def run(cfg: LabConfig) -> ExperimentResult:
    """Bias sweeps; apply the C4/C7 rules."""
    numbers = sweep(cfg)
    claim_verdicts, detail = verdicts(numbers)
    numbers["claim_verdicts"] = claim_verdicts
    numbers["verdict_detail"] = detail
    b, k, h = numbers["bias_init"], numbers["bias_kick"], numbers["high_lr_bias"]

    def pct(v: list[Any]) -> str:
        m = ci_dict(v)["mean"] if v else None
        return f"{100 * m:.1f} %" if m is not None else "n/a"

    neg = b["values"].index(min(b["values"]))
    big = k["values"].index(min(k["values"]))
    numbers["claim_summaries"] = {
        "C4": (
            f"dead after training: bias {b['values'][neg]} -> {pct(b['dead_after'][neg])}, "
            f"one update of {k['values'][big]} -> {pct(k['dead_end'][big])} (bias 0, no "
            f"update: {pct(b['dead_after'][b['values'].index(0.0)])})"
        ),
        "C7": (
            f"at lr {numbers['high_lr']}: dead with bias 0 "
            f"{pct(h['dead_after'][h['values'].index(0.0)])}, with 0.01 "
            f"{pct(h['dead_after'][h['values'].index(0.01)])}"
        ),
    }
    summary = (
        f"{numbers['claim_summaries']['C4']} (C4 {claim_verdicts['C4']}); "
        f"{numbers['claim_summaries']['C7']} (C7 {claim_verdicts['C7']})"
    )
    return ExperimentResult(
        id="E2",
        claims=("C4", "C7"),
        title="Negative bias, one large update, bias 0.01",
        question=(
            "Does a large negative bias, at init or after one large update, kill ReLU units "
            "(C4)? Does initialising biases to 0.01 prevent dying (C7)?"
        ),
        method=(
            f"ReLU MLP {numbers['widths']} on {cfg.dataset}, plain SGD, "
            f"{numbers['steps']} steps, He init, {numbers['seeds']} seeds (paired: the "
            f"same weights and minibatches in every arm). (a) every hidden bias set to "
            f"{b['values']} at init, lr {numbers['base_lr']}; (b) at step "
            f"{numbers['kick_step']} every hidden bias moved by {k['values']}, lr "
            f"{numbers['base_lr']}; (c) bias {h['values']} at lr {numbers['high_lr']}. Dead = "
            "never active on any training input (deadrelu.classify.dead_mask)."
        ),
        numbers=numbers,
        verdict=combine(claim_verdicts.values()),
        verdict_rule=(
            "C4: paired difference of the dead fraction after training (most negative bias "
            "vs 0; largest negative update vs none), 95 % t CI; each part supported if CI lo "
            f"> 0 and effect >= {MIN_KILL_EFFECT}, not supported if CI hi < "
            f"{MIN_KILL_EFFECT}, else mixed; C4 = all parts supported -> supported, all not "
            "-> not supported, else mixed. C7: at the high lr, dead fraction with bias 0 "
            "minus with bias 0.01, paired 95 % CI; supported if CI lo > 0 and effect >= "
            f"{MIN_PREVENT_EFFECT}, not supported if CI hi < {MIN_PREVENT_EFFECT}, else "
            "mixed. Overall: combine(C4, C7)."
        ),
        summary=summary,
        figures=[_figure(cfg, numbers)],
        caveats=[
            "The 'large update' is applied directly to every hidden bias (a controlled "
            "stand-in for one large gradient step); a real large step also moves the "
            "weights.",
            "Attribution of each dead unit to its bias or its weights is not done here "
            "(see deadrelu.explain for single models).",
            "With He init and standardised inputs almost no unit is dead at init with bias "
            "0, so 0.01 has little to prevent at init; part (c) tests it where units die.",
        ],
    )
