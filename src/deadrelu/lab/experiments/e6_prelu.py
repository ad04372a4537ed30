"""E6 (C10): PReLU against Leaky ReLU, same budget, several seeds; the learned slopes.

The notes: "Parametric ReLU ... as Leaky ReLU but more flexible, performs better". We train
the same MLPs (same seeds: same initial weights and minibatch order) with

* Leaky ReLU (slope 0.01, the notes' variant);
* **PReLU with one learned slope per hidden unit** (He et al. 2015's channel-wise form,
  initial value 0.25, no weight decay on the slopes): the PReLU the verdict speaks of;
* PReLU with one slope shared by the whole layer (the channel-shared form), a second row;
* as a control, Leaky ReLU at PReLU's *initial* slope 0.25: if PReLU beats Leaky(0.01)
  only as much as Leaky(0.25) does, the gain comes from the larger slope, not from
  learning it.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from deadrelu.lab.core import (
    Arm,
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
    sweep_from_arms,
)
from deadrelu.lab.data import Dataset, load
from deadrelu.lab.experiments._common import acc_ci, fmt_ci, frac_ci, pick
from deadrelu.lab.trainer import Member, TrainConfig, train_batched
from deadrelu.lab.verdicts import compare_detail

#: Minimum accuracy gain (absolute) for "performs better".
MIN_EFFECT = 0.01
#: Learning rate (plain SGD).
LR = 0.1
#: Arms: label -> (activation, PReLU slopes). The first PReLU arm is the verdict's.
ARMS: dict[str, tuple[str, str]] = {
    "leaky_relu(0.01)": ("leaky_relu(slope=0.01)", "per_unit"),
    "prelu, per unit (init 0.25)": ("prelu(init=0.25)", "per_unit"),
    "prelu, shared (init 0.25)": ("prelu(init=0.25)", "shared"),
    "leaky_relu(0.25)": ("leaky_relu(slope=0.25)", "per_unit"),
}
LEAKY, MAIN, SHARED, CONTROL = list(ARMS)


def _setup(cfg: LabConfig) -> tuple[Dataset, TrainConfig]:
    """The data (on the CPU) and the training configuration."""
    data = load(cfg.dataset, 0)  # an arm moves it to cfg.device
    hidden = cfg.size(tiny=16, quick=100, full=100)
    steps = cfg.size(tiny=30, quick=1000, full=3000)
    tc = TrainConfig(
        widths=(data.n_features, hidden, hidden, data.n_classes),
        steps=steps,
        batch_size=cfg.size(tiny=50, quick=100, full=100),
        eval_every=max(steps // 4, 1),
        probe_limit=cfg.size(tiny=200, quick=1000, full=None),
    )
    return data, tc


def _arm(cfg: LabConfig, label: str) -> dict[str, Any]:
    """One arm of :data:`ARMS` on every seed: per-seed accuracy (final and curve),
    divergence, never-active fractions and, for PReLU, the learned slopes."""
    data, tc = _setup(cfg)
    data = data.to(cfg.device)
    n = cfg.n_seeds
    n_layers = len(tc.widths) - 2
    act, slopes = ARMS[label]
    res = train_batched(
        [Member(seed=s, lr=LR, activation=act, slopes=slopes) for s in range(n)], tc, data
    )
    arm: dict[str, Any] = {
        "acc": [rounded(float(a)) for a in res.test_acc[:, -1]],
        "acc_curve": [[rounded(float(a)) for a in row] for row in res.test_acc],
        "diverged": [bool(d) for d in res.diverged],
        "never_active": [[rounded(v) for v in res.dead_frac[i, -1].tolist()] for i in range(n)],
    }
    if act.startswith("prelu"):
        # [seed][layer][unit] (one value per layer for the shared form)
        arm["learned_slopes"] = [
            [[rounded(v, 4) for v in res.slopes(li)[i].tolist()] for li in range(n_layers)]
            for i in range(n)
        ]
    return arm


def arms(cfg: LabConfig) -> list[Arm]:
    """The sweep's independent pieces: one trainer call per arm of :data:`ARMS`."""
    return [Arm(label, partial(_arm, cfg, label)) for label in ARMS]


def assemble(cfg: LabConfig, values: list[Any]) -> Sweep:
    """The sweep from the values of :func:`arms` (in its order)."""
    data, tc = _setup(cfg)
    return Sweep(
        numbers={
            "widths": list(tc.widths),
            "steps": tc.steps,
            "lr": LR,
            "batch_size": tc.batch_size,
            "n_seeds": cfg.n_seeds,
            "n_test": int(data.y_test.shape[0]),
            "eval_steps": tc.eval_steps(),
            "arms": dict(zip(ARMS, values, strict=True)),
        },
        n_seeds=cfg.n_seeds,
    )


def sweep(cfg: LabConfig) -> Sweep:
    """Train every arm on the same seeds; per-seed accuracy, dead fractions and slopes
    (every arm here, in order: :func:`arms`, :func:`assemble`)."""
    return sweep_from_arms(cfg, arms, assemble)


def slope_summary(slopes: list[list[list[float]]]) -> list[dict[str, Any]]:
    """Per layer, over the seeds and units of ``slopes[seed][layer][unit]``: mean, min, max,
    share of negative slopes and the number of slopes."""
    out = []
    for li in range(len(slopes[0])):
        vals = [float(v) for seed in slopes for v in seed[li]]
        out.append(
            {
                "layer": li + 1,
                "mean": rounded(sum(vals) / len(vals)),
                "min": rounded(min(vals)),
                "max": rounded(max(vals)),
                "negative": rounded(sum(v < 0 for v in vals) / len(vals)),
                "count": len(vals),
            }
        )
    return out


def judge(sw: Sweep, seeds: SeedIndex) -> Judgement:
    """C10 on the seeds ``seeds`` (None: all): accuracy(PReLU per unit) - accuracy(Leaky
    0.01), paired t with the test set's resolution (``verdicts.compare_detail``), min
    effect MIN_EFFECT. The shared-slope PReLU and the Leaky(0.25) control are compared the
    same way and reported."""
    nb = sw.numbers
    arms = nb["arms"]
    n_test = nb["n_test"]
    res = 1.0 / n_test

    def acc(label: str) -> list[float]:
        return [float(a) for a in pick(arms[label]["acc"], seeds)]

    def cmp(a: str, b: str) -> Any:
        return compare_detail(
            acc(a),
            acc(b),
            min_effect=MIN_EFFECT,
            higher_is_better=True,
            paired=True,
            resolution=res,
        )

    main, shared, control = cmp(MAIN, LEAKY), cmp(SHARED, LEAKY), cmp(MAIN, CONTROL)
    units = nb["widths"][1:-1]
    derived: dict[str, Any] = {
        label: {
            "acc": acc_ci(pick(a["acc"], seeds), n_test),
            "diverged": sum(pick(a["diverged"], seeds)),
            "never_active": [
                frac_ci([x[li] for x in pick(a["never_active"], seeds)], h)
                for li, h in enumerate(units)
            ],
            **(
                {"learned_slopes": slope_summary(pick(a["learned_slopes"], seeds))}
                if "learned_slopes" in a
                else {}
            ),
        }
        for label, a in arms.items()
    }

    def diff(c: Any) -> str:
        return fmt_ci({"mean": c.effect, "lo": c.lo, "hi": c.hi}, pct=False, signed=True)

    def slopes(label: str) -> str:
        return ", ".join(
            f"L{s['layer']} mean {s['mean']:.3g} (range {s['min']:.3g} to {s['max']:.3g})"
            for s in derived[label]["learned_slopes"]
        )

    summary = (
        f"PReLU (one slope per unit) - Leaky(0.01) = {diff(main)} accuracy; shared-slope "
        f"PReLU - Leaky(0.01) = {diff(shared)}; per-unit PReLU - Leaky(0.25) = {diff(control)}; "
        f"learned per-unit slopes {slopes(MAIN)}; shared {slopes(SHARED)}"
    )
    claims = {
        "C10": ClaimVerdict(
            verdict=main.verdict,
            rule=(
                "'PReLU performs better' is tested for PReLU with one learned slope per "
                "hidden unit (He et al. 2015, init 0.25, no weight decay): accuracy(PReLU per "
                f"unit) - accuracy(Leaky 0.01) >= {MIN_EFFECT}; {main.rule} (resolution "
                "1/n_test). The shared-slope PReLU is a second row, not part of the verdict."
            ),
            summary=summary,
            evidence={
                "prelu_per_unit_minus_leaky001": main.to_dict(),
                "prelu_shared_minus_leaky001": shared.to_dict(),
                "prelu_per_unit_minus_leaky025": control.to_dict(),
                "shared_verdict": shared.verdict,
            },
        )
    }
    return Judgement(claims=claims, derived=derived)


def figure(cfg: LabConfig, sw: Sweep, jd: Judgement) -> list[str]:
    """Accuracy per seed with its interval per arm; learned slopes per layer."""
    nb = sw.numbers
    fig, axes = new_figure(ncols=2, width=5.4, height=3.8)
    ax = axes[0][0]
    labels = list(nb["arms"])
    for j, label in enumerate(labels):
        xs = [float(a) for a in nb["arms"][label]["acc"]]
        c = jd.derived[label]["acc"]
        ax.scatter([j] * len(xs), xs, s=14, alpha=0.6)
        if c["lo"] is not None and c["hi"] is not None:
            ax.errorbar(
                [j + 0.15],
                [c["mean"]],
                yerr=[[c["mean"] - c["lo"]], [c["hi"] - c["mean"]]],
                fmt="o",
                color="k",
                capsize=4,
            )
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels([lb.replace(" (init 0.25)", "") for lb in labels], rotation=15, fontsize=7)
    ax.set_ylabel("final test accuracy")
    ax.set_title("accuracy per seed, mean and 95 % CI", fontsize=9)
    ax = axes[0][1]
    n_layers = len(nb["widths"]) - 2
    for label, marker in ((MAIN, "o"), (SHARED, "s")):
        per_seed = nb["arms"][label]["learned_slopes"]
        for li in range(n_layers):
            vals = [v for seed in per_seed for v in seed[li]]
            jitter = [li + 1 + (0.12 if label == SHARED else -0.12)] * len(vals)
            ax.scatter(
                jitter,
                vals,
                s=6 if label == MAIN else 20,
                alpha=0.4,
                marker=marker,
                label=(label.replace(" (init 0.25)", "") if li == 0 else None),
            )
    ax.axhline(0.25, ls="--", color="gray", lw=1)
    ax.axhline(0.01, ls=":", color="gray", lw=1)
    ax.set_xticks(range(1, n_layers + 1))
    ax.set_xlabel("hidden layer")
    ax.set_ylabel("learned PReLU slope a")
    ax.set_title("learned slopes (dashed: init 0.25, dotted: 0.01)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return [save_figure(fig, cfg, "e6_prelu_vs_leaky")]


EXPERIMENT = register(
    Experiment(
        id="E6",
        claims=("C10",),
        title="PReLU vs Leaky ReLU",
        question=(
            "Does PReLU with one learned slope per unit (He et al. 2015) reach a higher test "
            "accuracy than Leaky ReLU (slope 0.01) with the same budget, and what slopes does "
            "it learn? (The shared-slope form as a second row.)"
        ),
        method=(
            "MLP {widths} on MNIST-1D, SGD lr {lr}, {steps} steps of batch {batch_size}, "
            "{n_seeds} seeds; each seed gives the same initial weights and batches to Leaky "
            "ReLU (0.01), PReLU with one slope per hidden unit (init 0.25, slopes never "
            "weight-decayed), PReLU with one slope per layer, and Leaky ReLU (0.25). Final "
            "test accuracy, paired differences with 95 % t intervals (resolution 1/n_test); "
            "the learned slopes per layer."
        ),
        sweep=sweep,
        judge=judge,
        arms=arms,
        assemble=assemble,
        figure=figure,
        caveats=(
            "Small MLPs on a small dataset with plain SGD and a fixed budget; PReLU was "
            "proposed for deep CNNs on ImageNet (He et al. 2015), where the gain was about 1 "
            "point top-1.",
            "There is no weight decay at all in this setting; PReLU's slopes are excluded "
            "from it by the trainer, as He et al. did.",
            "Control: PReLU vs Leaky ReLU at PReLU's initial slope 0.25 separates 'learning "
            "the slope' from 'a larger slope'.",
        ),
    )
)
