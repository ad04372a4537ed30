"""E6 (C10): PReLU against Leaky ReLU, same budget, several seeds; the learned slopes.

The notes: "Parametric ReLU ... as Leaky ReLU but more flexible, performs better". We train
the same MLPs (same seeds: same initial weights and minibatch order) with Leaky ReLU
(slope 0.01, the notes' variant), with PReLU (one learned slope per hidden layer, He et
al.'s initial value 0.25), and, as a control, with Leaky ReLU at PReLU's *initial* slope
0.25: if PReLU beats Leaky(0.01) only as much as Leaky(0.25) does, the gain comes from the
larger slope, not from learning it.
"""

from __future__ import annotations

from typing import Any

from deadrelu.lab.core import ExperimentResult, LabConfig, experiment, new_figure, save_figure
from deadrelu.lab.data import load
from deadrelu.lab.trainer import Member, TrainConfig, train_batched
from deadrelu.lab.verdicts import compare_detail, mean_ci

#: Minimum accuracy gain (absolute) for "performs better".
MIN_EFFECT = 0.01

_VARIANTS = {
    "leaky_relu(0.01)": "leaky_relu(slope=0.01)",
    "prelu (init 0.25)": "prelu(init=0.25)",
    "leaky_relu(0.25)": "leaky_relu(slope=0.25)",
}


def _ci(xs: list[float]) -> dict[str, float]:
    m, lo, hi = mean_ci(xs)
    return {"mean": m, "lo": lo, "hi": hi}


@experiment("E6", ("C10",), "PReLU vs Leaky ReLU")
def run(cfg: LabConfig) -> ExperimentResult:
    """Train the three variants on the same seeds; compare final test accuracy."""
    data = load(cfg.dataset, 0).to(cfg.device)
    hidden = cfg.size(tiny=16, quick=100, full=100)
    steps = cfg.size(tiny=30, quick=1000, full=3000)
    lr = 0.1
    tc = TrainConfig(
        widths=(data.n_features, hidden, hidden, data.n_classes),
        steps=steps,
        batch_size=cfg.size(tiny=50, quick=100, full=100),
        eval_every=max(steps // 4, 1),
        probe_limit=cfg.size(tiny=200, quick=1000, full=None),
    )
    seeds = list(range(cfg.n_seeds))
    acc: dict[str, list[float]] = {}
    curves: dict[str, list[list[float]]] = {}
    slopes: list[list[float]] = []  # (seeds, layers) learned PReLU slopes
    dead: dict[str, list[float]] = {}
    for label, act in _VARIANTS.items():
        res = train_batched([Member(seed=s, lr=lr, activation=act) for s in seeds], tc, data)
        acc[label] = [float(a) for a in res.test_acc[:, -1]]
        curves[label] = res.test_acc.mean(dim=0).tolist()
        dead[label] = [float(d) for d in res.dead_frac[:, -1, :].mean(dim=1)]
        if label.startswith("prelu"):
            n_layers = len(tc.widths) - 2
            slopes = [
                [float(res.state[f"acts.{li}.weight"][i].mean()) for li in range(n_layers)]
                for i in range(len(seeds))
            ]

    main = compare_detail(
        acc["prelu (init 0.25)"],
        acc["leaky_relu(0.01)"],
        min_effect=MIN_EFFECT,
        higher_is_better=True,
        paired=True,
    )
    control = compare_detail(
        acc["prelu (init 0.25)"],
        acc["leaky_relu(0.25)"],
        min_effect=MIN_EFFECT,
        higher_is_better=True,
        paired=True,
    )
    n_layers = len(tc.widths) - 2
    slope_ci = [_ci([s[li] for s in slopes]) for li in range(n_layers)]

    # Figure: accuracy per seed and mean CI; learned slopes per layer.
    fig, axes = new_figure(ncols=2, width=5.2, height=3.8)
    ax = axes[0][0]
    for j, xs in enumerate(acc.values()):
        m, lo, hi = mean_ci(xs)
        ax.scatter([j] * len(xs), xs, s=14, alpha=0.6)
        if len(xs) > 1:
            ax.errorbar([j + 0.15], [m], yerr=[[m - lo], [hi - m]], fmt="o", color="k", capsize=4)
    ax.set_xticks(range(len(acc)))
    ax.set_xticklabels(list(acc), rotation=12, fontsize=8)
    ax.set_ylabel("final test accuracy")
    ax.set_title("accuracy per seed, mean and 95 % CI", fontsize=9)
    ax = axes[0][1]
    for i, s in enumerate(slopes):
        ax.plot(range(1, n_layers + 1), s, "o-", alpha=0.6, label=f"seed {i}" if i < 5 else None)
    ax.axhline(0.25, ls="--", color="gray", lw=1)
    ax.axhline(0.01, ls=":", color="gray", lw=1)
    ax.set_xticks(range(1, n_layers + 1))
    ax.set_xlabel("hidden layer")
    ax.set_ylabel("learned PReLU slope a")
    ax.set_title("learned slopes (dashed: init 0.25, dotted: 0.01)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    figure = save_figure(fig, cfg, "e6_prelu_vs_leaky.png")

    d = main.effect
    numbers: dict[str, Any] = {
        "setting": {
            "dataset": cfg.dataset,
            "widths": list(tc.widths),
            "steps": steps,
            "lr": lr,
            "batch_size": tc.batch_size,
            "seeds": seeds,
            "optimizer": "SGD",
        },
        "final_test_acc": acc,
        "final_test_acc_ci": {k: _ci(v) for k, v in acc.items()},
        "mean_test_acc_curve": {"steps": tc.eval_steps(), **curves},
        "dead_fraction_final": dead,
        "learned_slopes": {"per_seed": slopes, "per_layer_ci": slope_ci},
        "prelu_minus_leaky001": main.to_dict(),
        "prelu_minus_leaky025": control.to_dict(),
    }
    slope_text = ", ".join(f"L{li + 1} {c['mean']:.3g}" for li, c in enumerate(slope_ci))
    caveats = [
        "Small MLPs on a small dataset with plain SGD and a fixed budget; PReLU was proposed "
        "for deep CNNs on ImageNet (He et al. 2015), where the gain was about 1 point top-1.",
        "PReLU's slopes are trained without weight decay (He et al. also excluded them).",
        f"Control: PReLU vs Leaky ReLU at PReLU's initial slope 0.25: effect "
        f"{control.effect:+.4f} ({control.verdict}); separates 'learning the slope' from "
        "'a larger slope'.",
        "Pairing by seed: both variants start from identical weights and see the same batches.",
    ]
    return ExperimentResult(
        id="E6",
        claims=("C10",),
        title="PReLU vs Leaky ReLU",
        question=(
            "Does PReLU (learned negative slope) reach a higher test accuracy than Leaky ReLU "
            "(slope 0.01) with the same budget, and what slopes does it learn?"
        ),
        method=(
            f"MLP {list(tc.widths)} on {cfg.dataset}, SGD lr {lr}, {steps} steps of batch "
            f"{tc.batch_size}, {len(seeds)} seeds; each seed gives the same initial weights and "
            "batches to Leaky ReLU (0.01), PReLU (one slope per layer, init 0.25) and Leaky "
            "ReLU (0.25). Final test accuracy, paired differences with 95 % t-intervals; the "
            "learned slopes per layer."
        ),
        numbers=numbers,
        verdict=main.verdict,
        verdict_rule=f"'PReLU performs better' means accuracy(PReLU) - accuracy(Leaky 0.01) "
        f">= {MIN_EFFECT}: {main.rule}",
        summary=(
            f"PReLU - Leaky(0.01) = {d:+.4f} acc [{main.lo:+.4f}, {main.hi:+.4f}]; learned "
            f"slopes {slope_text}"
        ),
        figures=[figure],
        caveats=caveats,
    )
