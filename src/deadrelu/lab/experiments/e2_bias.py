"""E2 (C4): a large negative bias, at init or after one large update -> dead ReLU units.

The notes: a large negative bias, e.g. after one large update that drives b far below 0,
kills units (C4). Two sweeps of ReLU MLPs, same seeds (same weights and minibatch order)
in every arm:

* **bias at init**: every hidden bias set to a value from large negative to positive,
  trained at a moderate learning rate; dead fraction per layer at init and after training;
* **one large update**: at one step, every hidden bias moved by a negative amount (the
  effect of one large gradient step on the biases), then training goes on; dead fraction
  per layer one step **before** the update (the evaluation at ``kick_step - 1``), just
  after it, and at the end.

Each unit dead at the end is attributed to its bias, its weights or both by
``deadrelu.explain.explain`` (the code users get), run on the member's trained module
(``TrainResult.module``) with a scan of the training set: ``"bias"`` = the weights alone
would activate it on some input, the negative bias keeps it off; ``"weights"`` = w . x <= 0
on every input with b >= 0; ``"both"``.

Dead = never active on any training input (``deadrelu.classify.dead_mask``). C7 (bias 0.01)
is tested by E12 in deep narrow nets, where it can matter.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from deadrelu.explain import explain
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
from deadrelu.lab.data import Dataset, load
from deadrelu.lab.experiments._common import acc_ci, fmt_ci, frac_ci, interval, pick
from deadrelu.lab.trainer import Member, TrainConfig, TrainResult, train_batched
from deadrelu.lab.verdicts import (
    Verdict,
    combine,
    decide,
    paired_proportion_diff_ci,
    pooled_proportion_ci,
)
from deadrelu.scan import scan

#: Moderate learning rate (does not kill units by itself in E1).
BASE_LR = 0.1
#: Minimum increase of the dead fraction (absolute) for "kills units".
MIN_KILL_EFFECT = 0.05
#: Causes of death from ``deadrelu.explain`` that the bias alone suffices for.
BIAS_CAUSES = ("bias", "both")
#: Cause labels counted per layer.
CAUSES = ("bias", "weights", "both", "unknown", "active_in_eval")


def _dead_layers(res: TrainResult, i: int, t: int) -> list[Any] | None:
    if bool(res.diverged[i]):
        return None
    return [rounded(v) for v in res.dead_frac[i, t].tolist()]


def _causes(res: TrainResult, i: int, data: Dataset, probe: int | None) -> list[dict[str, int]]:
    """Per hidden layer, how many dead units ``deadrelu.explain`` attributes to each cause
    (member ``i``'s trained module, a scan of the probe set)."""
    n_layers = len(res.widths) - 2
    out = [dict.fromkeys(CAUSES, 0) for _ in range(n_layers)]
    if bool(res.diverged[i]) or float(res.dead_frac[i, -1].sum()) == 0.0:
        return out
    x = data.x_train if probe is None else data.x_train[:probe]
    model = res.module(i)
    report = scan(model, x)
    expl = explain(model, report, data=x)
    counts = Counter((u.site, u.cause) for u in expl.units)
    for li in range(n_layers):
        for c in CAUSES:
            out[li][c] = int(counts.get((f"acts.{li}", c), 0))
    return out


def sweep(cfg: LabConfig) -> Sweep:
    """Run the two sweeps; per-seed dead fractions per layer, accuracies, causes."""
    data = load(cfg.dataset, 0).to(cfg.device)
    hidden = cfg.size(tiny=16, quick=64, full=100)
    steps = cfg.size(tiny=30, quick=300, full=600)
    kick_step = steps // 3
    n = cfg.n_seeds
    widths = (data.n_features, hidden, hidden, data.n_classes)
    biases = cfg.size(
        tiny=[-3.0, 0.0],
        quick=[-3.0, -2.0, -1.0, -0.5, -0.1, 0.0, 0.1, 0.5],
        full=[-5.0, -3.0, -2.0, -1.0, -0.5, -0.25, -0.1, 0.0, 0.05, 0.1, 0.5, 1.0],
    )
    kicks = cfg.size(
        tiny=[0.0, -5.0],
        quick=[0.0, -0.5, -1.0, -2.0, -4.0],
        full=[0.0, -0.25, -0.5, -1.0, -2.0, -4.0, -8.0],
    )
    probe = cfg.size(tiny=500, quick=None, full=None)
    batch = cfg.size(tiny=50, quick=100, full=100)
    tc = TrainConfig(
        widths, steps, batch, eval_every=kick_step, probe_limit=probe, eval_at=(kick_step - 1,)
    )
    t_before, t_after = tc.eval_steps().index(kick_step - 1), tc.eval_steps().index(kick_step)

    res_b = train_batched(
        [Member(seed=s, lr=BASE_LR, bias_init=b) for b in biases for s in range(n)], tc, data
    )
    res_k = train_batched(
        [
            Member(seed=s, lr=BASE_LR, bias_kick=k, kick_step=kick_step)
            for k in kicks
            for s in range(n)
        ],
        tc,
        data,
    )

    def rows(res: TrainResult, i: int) -> list[int]:
        return list(range(i * n, (i + 1) * n))

    bias_init = {
        str(b): {
            "dead_init": [_dead_layers(res_b, j, 0) for j in rows(res_b, i)],
            "dead_end": [_dead_layers(res_b, j, -1) for j in rows(res_b, i)],
            "acc": [rounded(float(res_b.test_acc[j, -1])) for j in rows(res_b, i)],
            "diverged": [bool(res_b.diverged[j]) for j in rows(res_b, i)],
            "causes": [_causes(res_b, j, data, probe) for j in rows(res_b, i)] if b < 0 else None,
        }
        for i, b in enumerate(biases)
    }
    bias_kick = {
        str(k): {
            "dead_before": [_dead_layers(res_k, j, t_before) for j in rows(res_k, i)],
            "dead_after_kick": [_dead_layers(res_k, j, t_after) for j in rows(res_k, i)],
            "dead_end": [_dead_layers(res_k, j, -1) for j in rows(res_k, i)],
            "acc": [rounded(float(res_k.test_acc[j, -1])) for j in rows(res_k, i)],
            "diverged": [bool(res_k.diverged[j]) for j in rows(res_k, i)],
            "causes": [_causes(res_k, j, data, probe) for j in rows(res_k, i)] if k < 0 else None,
        }
        for i, k in enumerate(kicks)
    }
    return Sweep(
        numbers={
            "widths": list(widths),
            "steps": steps,
            "kick_step": kick_step,
            "n_seeds": n,
            "n_test": int(data.y_test.shape[0]),
            "base_lr": BASE_LR,
            "biases": biases,
            "kicks": kicks,
            "bias_init": bias_init,
            "bias_kick": bias_kick,
        },
        n_seeds=n,
    )


def _kill_part(
    dead_a: list[Any], dead_b: list[Any], units: list[int], seeds: SeedIndex
) -> dict[str, Any]:
    """Per layer, paired increase of the dead fraction from ``dead_b`` to ``dead_a``
    (per-seed per-layer lists); Bonferroni over layers; supported if some layer's
    interval is above 0 with increase >= MIN_KILL_EFFECT, not supported if every layer's
    lies below MIN_KILL_EFFECT."""
    a, b = pick(dead_a, seeds), pick(dead_b, seeds)
    pairs = [(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    if not pairs:
        return {"verdict": "n/a", "reason": "every run diverged"}
    level = 1.0 - 0.05 / len(units)
    layers = []
    verdicts: list[Verdict] = []
    for li, h in enumerate(units):
        eff, lo, hi = paired_proportion_diff_ci(
            [round(x[li] * h) for x, _ in pairs],
            [round(y[li] * h) for _, y in pairs],
            h,
            confidence=level,
        )
        v = decide(eff, lo, hi, MIN_KILL_EFFECT)
        verdicts.append(v)
        layers.append(
            {
                "layer": li + 1,
                "dead": frac_ci([x[li] for x, _ in pairs], h),
                "dead_reference": frac_ci([y[li] for _, y in pairs], h),
                "increase": interval(eff, lo, hi),
                "verdict": v,
            }
        )
    verdict: Verdict = (
        "supported"
        if "supported" in verdicts
        else "not supported"
        if all(v == "not supported" for v in verdicts)
        else "mixed"
    )
    return {"confidence": rounded(level), "layers": layers, "verdict": verdict}


def _cause_split(causes: list[Any], seeds: SeedIndex, n_layers: int) -> dict[str, Any]:
    """Per layer and over all layers: dead units per cause, and the pooled share of dead
    units the bias alone kills (bias or both) with its interval."""
    chosen = [c for c in pick(causes, seeds) if c is not None]
    out: dict[str, Any] = {"layers": []}
    for li in [*range(n_layers), None]:
        per_seed = [
            {c: sum(lay[c] for lay in seed) if li is None else seed[li][c] for c in CAUSES}
            for seed in chosen
        ]
        totals = {c: sum(s[c] for s in per_seed) for c in CAUSES}
        k = [sum(s[c] for c in BIAS_CAUSES) for s in per_seed]
        n = [sum(s.values()) for s in per_seed]
        kept = [(ki, ni) for ki, ni in zip(k, n, strict=True) if ni > 0]
        entry: dict[str, Any] = {"counts": totals}
        if kept:
            p, lo, hi = pooled_proportion_ci([x for x, _ in kept], [y for _, y in kept])
            entry["bias_share"] = interval(p, lo, hi)
        else:
            entry["bias_share"] = {"mean": None, "lo": None, "hi": None}
        if li is None:
            out["all"] = entry
        else:
            out["layers"].append({"layer": li + 1, **entry})
    return out


def judge(sw: Sweep, seeds: SeedIndex) -> Judgement:
    """C4 on the seeds ``seeds`` (None: all). Three parts, each per layer:

    * (a) dead fraction after training with the most negative initial bias vs bias 0;
    * (b) dead fraction at the end with the largest negative update vs none;
      for (a) and (b) :func:`_kill_part` (paired, Bonferroni over layers);
    * (c) attribution: of the units dead at the end of (b)'s largest update, the pooled
      share ``deadrelu.explain`` attributes to the bias alone (cause bias or both):
      supported if its interval lies above 1/2, not supported if below, else mixed.

    C4 = combine(a, b, c).
    """
    nb = sw.numbers
    units = nb["widths"][1:-1]
    bi, bk = nb["bias_init"], nb["bias_kick"]
    neg, big = str(min(nb["biases"])), str(min(nb["kicks"]))
    part_a = _kill_part(bi[neg]["dead_end"], bi["0.0"]["dead_end"], units, seeds)
    part_b = _kill_part(bk[big]["dead_end"], bk["0.0"]["dead_end"], units, seeds)
    split = _cause_split(bk[big]["causes"], seeds, len(units))
    share = split["all"]["bias_share"]
    part_c: Verdict = (
        "n/a"
        if share["mean"] is None
        else "supported"
        if share["lo"] > 0.5
        else "not supported"
        if share["hi"] < 0.5
        else "mixed"
    )
    derived: dict[str, Any] = {"bias_init": {}, "bias_kick": {}, "causes": {}}
    n_test = nb["n_test"]
    for name, table, keys in (
        ("bias_init", bi, ("dead_init", "dead_end")),
        ("bias_kick", bk, ("dead_before", "dead_after_kick", "dead_end")),
    ):
        for v, row in table.items():
            entry: dict[str, Any] = {
                "diverged": sum(pick(row["diverged"], seeds)),
                "acc": acc_ci(pick(row["acc"], seeds), n_test),
            }
            for key in keys:
                vals = pick(row[key], seeds)
                entry[key] = [
                    frac_ci([x[li] if x else None for x in vals], h) for li, h in enumerate(units)
                ]
            derived[name][v] = entry
            if row["causes"] is not None:
                derived["causes"][f"{name} {v}"] = _cause_split(row["causes"], seeds, len(units))

    def layers_text(part: dict[str, Any]) -> str:
        if "layers" not in part:
            return "n/a"
        return ", ".join(f"layer {L['layer']} {fmt_ci(L['dead'])}" for L in part["layers"])

    def split_text(s: dict[str, Any]) -> str:
        c = s["all"]["counts"]
        return (
            f"{c['bias']} bias / {c['weights']} weights / {c['both']} both"
            + (f" / {c['unknown']} unknown" if c["unknown"] else "")
            + f" (bias alone suffices: {fmt_ci(s['all']['bias_share'])})"
        )

    zero_end = derived["bias_init"]["0.0"]["dead_end"]
    summary = (
        f"dead after training: bias {neg}: {layers_text(part_a)}; one update of {big} at step "
        f"{nb['kick_step']}: {layers_text(part_b)} (bias 0, no update: "
        + ", ".join(f"layer {i + 1} {fmt_ci(c)}" for i, c in enumerate(zero_end))
        + f"); dead units after the update by cause (deadrelu.explain): {split_text(split)}"
    )
    claims = {
        "C4": ClaimVerdict(
            verdict=combine([part_a["verdict"], part_b["verdict"], part_c]),
            rule=(
                "(a) most negative initial bias vs 0 and (b) largest negative update vs none: "
                "per hidden layer, paired increase of the dead fraction after training "
                "(paired t on per-seed differences, Newcombe when they are all equal), CI at "
                "95 % / layers; a part is supported if some layer's CI lo > 0 with increase "
                f">= {MIN_KILL_EFFECT}, not supported if every layer's CI hi < "
                f"{MIN_KILL_EFFECT}, else mixed. (c) of the units dead after (b)'s update, "
                "the share deadrelu.explain attributes to the bias alone (bias or both; "
                "pooled Wilson with design effect): supported if CI lo > 0.5, not supported "
                "if CI hi < 0.5. C4 = combine(a, b, c)."
            ),
            summary=summary,
            evidence={
                "init": part_a,
                "update": part_b,
                "attribution": split,
                "attribution_verdict": part_c,
            },
        )
    }
    return Judgement(claims=claims, derived=derived)


def figure(cfg: LabConfig, sw: Sweep, jd: Judgement) -> list[str]:
    """Dead fraction per layer against the initial bias and the update size; causes."""
    nb = sw.numbers
    n_layers = len(nb["widths"]) - 2
    fig, axes = new_figure(ncols=3, width=4.4)

    def curve(ax: Any, table: dict[str, Any], values: list[float], key: str, label: str) -> None:
        xs = list(range(len(values)))
        for li in range(n_layers):
            cis = [table[str(v)][key][li] for v in values]
            ms = [c["mean"] for c in cis]
            lo = [c["mean"] - c["lo"] if c["mean"] is not None else 0 for c in cis]
            hi = [c["hi"] - c["mean"] if c["mean"] is not None else 0 for c in cis]
            ax.errorbar(
                xs, ms, yerr=[lo, hi], marker="o", capsize=2, label=f"{label}, layer {li + 1}"
            )
        ax.set_xticks(xs, [f"{v:g}" for v in values], fontsize=8)

    ax = axes[0, 0]
    curve(ax, jd.derived["bias_init"], nb["biases"], "dead_init", "at init")
    curve(ax, jd.derived["bias_init"], nb["biases"], "dead_end", "after training")
    ax.set_xlabel("initial hidden bias (not to scale)")
    ax.set_ylabel("dead fraction (95 % CI)")
    ax.set_title(f"bias at init, lr {nb['base_lr']}", fontsize=9)
    ax = axes[0, 1]
    curve(ax, jd.derived["bias_kick"], nb["kicks"], "dead_before", "step before")
    curve(ax, jd.derived["bias_kick"], nb["kicks"], "dead_end", "end")
    ax.set_xlabel("one update of every hidden bias")
    ax.set_title(f"one large update at step {nb['kick_step']}", fontsize=9)
    ax = axes[0, 2]
    labels, bottoms = [], None
    rows = [(k, v) for k, v in jd.derived["causes"].items()]
    for j, cause in enumerate(("bias", "both", "weights", "unknown")):
        vals = [sum(L["counts"][cause] for L in v["layers"]) for _, v in rows]
        ax.bar(range(len(rows)), vals, bottom=bottoms, label=cause)
        bottoms = vals if bottoms is None else [a + b for a, b in zip(bottoms, vals, strict=True)]
        del j
    labels = [k.replace("bias_init", "init").replace("bias_kick", "update") for k, _ in rows]
    ax.set_xticks(range(len(rows)), labels, rotation=60, fontsize=7)
    ax.set_ylabel("dead units (all seeds)")
    ax.set_title("cause of death (deadrelu.explain)", fontsize=9)
    for a in axes[0]:
        a.grid(alpha=0.3)
        a.legend(fontsize=6)
    fig.tight_layout()
    return [save_figure(fig, cfg, "e2_bias")]


EXPERIMENT = register(
    Experiment(
        id="E2",
        claims=("C4",),
        title="Negative bias and one large update",
        question=(
            "Does a large negative bias, at init or after one large update, kill ReLU units "
            "(C4), in which layer, and is the bias or are the weights what keeps them dead?"
        ),
        method=(
            "ReLU MLP {widths} on MNIST-1D, plain SGD lr {base_lr}, {steps} steps, He init, "
            "{n_seeds} seeds (paired: the same weights and minibatches in every arm). (a) "
            "every hidden bias set to {biases} at init; (b) at step {kick_step} every hidden "
            "bias moved by {kicks}; dead fraction per layer at init / one step before the "
            "update / just after / at the end. Each unit dead at the end of a negative arm is "
            "attributed by deadrelu.explain.explain on the member's trained module (scan of "
            "the training set): bias, weights or both. Dead = never active on any training "
            "input (classify.dead_mask)."
        ),
        sweep=sweep,
        judge=judge,
        figure=figure,
        caveats=(
            "The 'large update' is applied directly to every hidden bias (a controlled "
            "stand-in for one large gradient step); a real large step also moves the "
            "weights.",
            "'Bias' means the weights alone would activate the unit on some training input; "
            "'both' means either alone keeps it off (explain's definitions).",
            "C7 (bias 0.01) is no longer tested here: no unit is dead at init in this "
            "setting, so 0.01 has nothing to prevent; E12 tests it where it can matter.",
        ),
    )
)
