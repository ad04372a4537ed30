"""E7 (C11): ELU against ReLU; alpha in {0.1, 0.3, 1.0}; differentiability at 0.

The notes: ELU is "continuous and differentiable everywhere, outputs close to zero-centred,
faster convergence, better generalisation, no dying", with alpha "in 0.1 to 0.3". We train
the same MLPs (same seeds) with ReLU and ELU at the three alphas and measure

* steps to reach a target test accuracy (convergence speed),
* final test accuracy (generalisation with the same budget),
* the mean activation per hidden layer (zero-centring),

and compute, from ``deadrelu.activations``, the one-sided derivatives of ELU at 0: the
left one is alpha, the right one 1, so ELU is differentiable at 0 only when alpha = 1.
"""

from __future__ import annotations

from typing import Any

import torch

from deadrelu.activations import get
from deadrelu.lab.core import ExperimentResult, LabConfig, experiment, new_figure, save_figure
from deadrelu.lab.data import load
from deadrelu.lab.trainer import Member, TrainConfig, TrainResult, train_batched
from deadrelu.lab.verdicts import Comparison, combine, compare_detail, mean_ci

ALPHAS: tuple[float, ...] = (0.1, 0.3, 1.0)
#: Target accuracy as a fraction of the lowest variant's mean final accuracy.
TARGET_FRACTION = 0.9
#: "better generalisation": at least this much test accuracy (absolute).
MIN_ACC_EFFECT = 0.01
#: "zero-centred": mean |mean activation| over layers lower by at least this much.
MIN_CENTRE_EFFECT = 0.05


def one_sided_derivatives(alpha: float) -> dict[str, float]:
    """ELU's derivative at 0 from the left and from the right, two ways (float64).

    ``formula_left`` / ``formula_right``: ``deadrelu.activations`` ELU derivative at
    z = -1e-12 and z = +1e-12; ``fd_left`` / ``fd_right``: one-sided finite differences of
    the forward with step 1e-7; ``at_zero``: the derivative's value at 0 (torch's
    convention, the left limit).
    """
    act = get(f"elu(alpha={alpha})")
    assert act is not None
    z = torch.tensor([-1e-12, 1e-12, 0.0], dtype=torch.float64)
    d = act.derivative(z)
    h = 1e-7
    f = act(torch.tensor([-h, 0.0, h], dtype=torch.float64))
    return {
        "alpha": alpha,
        "formula_left": float(d[0]),
        "formula_right": float(d[1]),
        "at_zero": float(d[2]),
        "fd_left": float((f[1] - f[0]) / h),
        "fd_right": float((f[2] - f[1]) / h),
    }


def _steps_to(acc: torch.Tensor, steps: list[int], target: float, censor: int) -> list[float]:
    """``acc``: ``(M, T)``; first evaluation step with accuracy >= target, per member."""
    out: list[float] = []
    for row in acc:
        hit = torch.nonzero(row >= target).flatten()
        out.append(float(steps[int(hit[0])]) if hit.numel() else float(censor))
    return out


@experiment("E7", ("C11",), "ELU vs ReLU")
def run(cfg: LabConfig) -> ExperimentResult:
    """Train ReLU and ELU(0.1, 0.3, 1.0) on the same seeds; derivatives at 0."""
    data = load(cfg.dataset, 0).to(cfg.device)
    hidden = cfg.size(tiny=16, quick=100, full=100)
    steps = cfg.size(tiny=30, quick=800, full=3000)
    lr = 0.1
    tc = TrainConfig(
        widths=(data.n_features, hidden, hidden, data.n_classes),
        steps=steps,
        batch_size=cfg.size(tiny=50, quick=100, full=100),
        eval_every=max(steps // cfg.size(tiny=3, quick=20, full=30), 1),
        probe_limit=cfg.size(tiny=200, quick=1000, full=None),
    )
    eval_steps = tc.eval_steps()
    seeds = list(range(cfg.n_seeds))
    variants = {"relu": "relu", **{f"elu({a:g})": f"elu(alpha={a})" for a in ALPHAS}}
    runs: dict[str, TrainResult] = {}
    for label, act in variants.items():
        runs[label] = train_batched(
            [Member(seed=s, lr=lr, activation=act) for s in seeds], tc, data
        )

    final = {k: [float(a) for a in r.test_acc[:, -1]] for k, r in runs.items()}
    lowest = min(sum(v) / len(v) for v in final.values())
    target = TARGET_FRACTION * lowest
    censor = steps + tc.eval_every
    to_target = {k: _steps_to(r.test_acc, eval_steps, target, censor) for k, r in runs.items()}
    mean_act = {k: r.mean_act[:, -1, :].tolist() for k, r in runs.items()}  # (M, L)
    centre = {k: [sum(abs(x) for x in row) / len(row) for row in v] for k, v in mean_act.items()}
    dead = {k: [float(d) for d in r.dead_frac[:, -1, :].mean(dim=1)] for k, r in runs.items()}

    per_alpha: dict[str, dict[str, Any]] = {}
    parts: list[str] = []
    key_cmp: dict[str, Comparison] = {}
    for a in ALPHAS:
        k = f"elu({a:g})"
        faster = compare_detail(
            to_target[k],
            to_target["relu"],
            min_effect=float(tc.eval_every),
            higher_is_better=False,
            paired=True,
        )
        better = compare_detail(
            final[k], final["relu"], min_effect=MIN_ACC_EFFECT, higher_is_better=True, paired=True
        )
        centred = compare_detail(
            centre[k],
            centre["relu"],
            min_effect=MIN_CENTRE_EFFECT,
            higher_is_better=False,
            paired=True,
        )
        per_alpha[k] = {
            "faster_convergence": faster.to_dict(),
            "better_generalisation": better.to_dict(),
            "closer_to_zero_centred": centred.to_dict(),
        }
        parts += [faster.verdict, better.verdict, centred.verdict]
        if a == 1.0:
            key_cmp = {"faster": faster, "better": better, "centred": centred}

    derivs = [one_sided_derivatives(a) for a in ALPHAS]
    diff_at_0 = {
        f"elu({d['alpha']:g})": abs(d["formula_left"] - d["formula_right"]) < 1e-9 for d in derivs
    }
    # The notes claim differentiability everywhere for alpha in 0.1..0.3: one sub-verdict.
    notes_range = [d for d in derivs if d["alpha"] < 1.0]
    diff_verdict = (
        "supported"
        if all(diff_at_0[f"elu({d['alpha']:g})"] for d in notes_range)
        else "not supported"
    )
    parts.append(diff_verdict)
    verdict = combine(parts)

    # Figure: accuracy curves, mean activation per layer, one-sided derivatives.
    fig, axes = new_figure(ncols=3, width=4.4, height=3.6)
    ax = axes[0][0]
    for k, r in runs.items():
        ax.plot(eval_steps, r.test_acc.mean(dim=0).tolist(), label=k)
    ax.axhline(target, ls="--", color="gray", lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("test accuracy (mean over seeds)")
    ax.set_title(f"dashed: target {target:.3f}", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[0][1]
    n_layers = len(tc.widths) - 2
    width = 0.8 / len(runs)
    for j, (k, v) in enumerate(mean_act.items()):
        means = [sum(row[li] for row in v) / len(v) for li in range(n_layers)]
        ax.bar([li + j * width for li in range(n_layers)], means, width=width, label=k)
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xticks([li + 0.4 - width / 2 for li in range(n_layers)])
    ax.set_xticklabels([f"layer {li + 1}" for li in range(n_layers)])
    ax.set_ylabel("mean activation (final)")
    ax.set_title("zero-centring", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[0][2]
    xs = range(len(derivs))
    ax.bar([x - 0.2 for x in xs], [d["formula_left"] for d in derivs], 0.4, label="f'(0-)")
    ax.bar([x + 0.2 for x in xs], [d["formula_right"] for d in derivs], 0.4, label="f'(0+)")
    ax.set_xticks(list(xs))
    ax.set_xticklabels([f"alpha={d['alpha']:g}" for d in derivs])
    ax.set_title("ELU one-sided derivatives at 0", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    figure = save_figure(fig, cfg, "e7_elu_vs_relu.png")

    numbers: dict[str, Any] = {
        "setting": {
            "dataset": cfg.dataset,
            "widths": list(tc.widths),
            "steps": steps,
            "eval_every": tc.eval_every,
            "lr": lr,
            "seeds": seeds,
            "init": "he",
            "optimizer": "SGD",
        },
        "target_accuracy": target,
        "final_test_acc": final,
        "final_test_acc_ci": {k: list(mean_ci(v)) for k, v in final.items()},
        "steps_to_target": to_target,
        "mean_activation_per_layer": mean_act,
        "mean_abs_mean_activation": centre,
        "dead_fraction_final": dead,
        "per_alpha_vs_relu": per_alpha,
        "one_sided_derivatives_at_0": derivs,
        "differentiable_at_0": diff_at_0,
    }
    f, b, c = key_cmp["faster"], key_cmp["better"], key_cmp["centred"]
    summary = (
        f"ELU(1) vs ReLU: steps to {target:.2f} acc {f.effect:+.0f} fewer "
        f"[{f.lo:+.0f}, {f.hi:+.0f}], final acc {b.effect:+.4f}, |mean act| "
        f"{c.effect:+.3f} lower; differentiable at 0 only for alpha=1"
    )
    rule = (
        "sub-verdicts, for each alpha in (0.1, 0.3, 1.0), ELU vs ReLU paired by seed: faster = "
        f"fewer steps to the target (min effect one evaluation interval, {tc.eval_every} "
        f"steps); better = final test accuracy higher by >= {MIN_ACC_EFFECT}; zero-centred = "
        f"mean over layers of |mean activation| lower by >= {MIN_CENTRE_EFFECT}; each by "
        "compare(): supported if the 95 % CI lo > 0 and effect >= min effect, not supported if "
        "CI hi < min effect, else mixed. Plus 'differentiable everywhere' for the notes' "
        "alphas (0.1, 0.3): supported only if f'(0-) = f'(0+). Overall: combine() = "
        "supported if all sub-verdicts are, not supported if none is, else mixed. Sub-verdicts: "
        f"{parts}"
    )
    caveats = [
        "Small MLPs on a small dataset, plain SGD, one learning rate for all variants; Clevert "
        "et al. (2016) reported the speed-up for deep CNNs, where the bias shift matters more.",
        "Steps to target are read at evaluation points (resolution one evaluation interval); "
        f"a seed that never reaches the target counts as {censor} steps (censored).",
        "Zero-centring is measured on the training inputs at the end of training.",
        "The notes say differentiable everywhere AND give alpha in 0.1-0.3: for those alphas "
        "the left derivative at 0 is alpha and the right one 1, so ELU is continuous but not "
        "differentiable at 0; only alpha = 1 (Clevert et al.'s default) is.",
        "The cost of the exp is measured in E9.",
    ]
    return ExperimentResult(
        id="E7",
        claims=("C11",),
        title="ELU vs ReLU",
        question=(
            "Does ELU converge faster, generalise better and give more zero-centred activations "
            "than ReLU, for alpha in {0.1, 0.3, 1.0}; and is it differentiable at 0?"
        ),
        method=(
            f"MLP {list(tc.widths)} on {cfg.dataset}, He init, SGD lr {lr}, {steps} steps, "
            f"{len(seeds)} seeds, the same initial weights and batches for ReLU and each ELU. "
            f"Target accuracy = {TARGET_FRACTION} x the lowest variant's mean final accuracy. "
            "One-sided derivatives at 0 from deadrelu.activations (formula at +-1e-12) and "
            "finite differences of the forward."
        ),
        numbers=numbers,
        verdict=verdict,
        verdict_rule=rule,
        summary=summary,
        figures=[figure],
        caveats=caveats,
    )
