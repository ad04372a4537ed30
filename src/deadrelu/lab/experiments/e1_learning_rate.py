"""E1 (C3, C6): learning-rate sweep -> dead fraction per layer and test accuracy.

The notes: a very high learning rate kills ReLU units (C3); use a low learning rate (C6).
Each activation (ReLU, Leaky ReLU, ELU) is trained at every learning rate of the sweep on
the same seeds (same initial weights and minibatch order per seed), plain SGD, a fixed
step budget; a second arm repeats the ReLU sweep on a small conv net (conv-BN-ReLU blocks
on MNIST-1D read as a 1-D signal). We measure, after training, **per hidden layer**, the
fraction of units (channels) that are

* **dead**: never active (z > 0) on any training input (``deadrelu.classify.dead_mask``);
* **stuck**: pass no usable gradient on any training input: zero gradient everywhere
  (for ReLU: dead) or saturated (``deadrelu.classify.saturated_mask``, ELU).

Runs whose loss or weights become non-finite are counted as diverged and left out of the
dead-fraction statistics (a NaN unit is "never active" but not dead in the notes' sense).
Every per-seed number is a list indexed by seed (None for a diverged run), so the verdicts
can be recomputed on any resample of the seeds.
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
from deadrelu.lab.experiments._common import (
    acc_ci,
    fmt_ci,
    frac_ci,
    paired_ci,
    pick,
)
from deadrelu.lab.trainer import Member, TrainConfig, TrainResult, train_batched
from deadrelu.lab.verdicts import Verdict, decide, paired_proportion_diff_ci

#: Activations compared (registry strings).
ACTIVATIONS = ("relu", "leaky_relu", "elu")
#: Minimum increase of the dead fraction (absolute) for "a high learning rate kills units".
MIN_DEAD_EFFECT = 0.02
#: "Keeps the dead fraction under 1 %" (CLAIMS.md, C6), in every layer.
SAFE_DEAD = 0.01
#: Accuracy a remedy may cost (absolute) and still be called free.
MAX_ACC_COST = 0.02


def _record(res: TrainResult, idx: list[int]) -> dict[str, Any]:
    """Per-seed numbers of the members ``idx`` (one per seed, in seed order)."""
    div = res.diverged
    frozen, sat = res.frozen_frac[:, -1, :], res.saturated_frac[:, -1, :]
    return {
        "diverged": [bool(div[j]) for j in idx],
        "dead": [
            None if div[j] else [rounded(v) for v in res.dead_frac[j, -1].tolist()] for j in idx
        ],
        "stuck": [
            None
            if div[j]
            else [rounded(float(f + s)) for f, s in zip(frozen[j], sat[j], strict=True)]
            for j in idx
        ],
        "acc": [rounded(float(res.test_acc[j, -1])) for j in idx],
    }


def _setup(cfg: LabConfig) -> tuple[Dataset, dict[str, tuple[TrainConfig, list[float]]]]:
    """The data (on the CPU) and, per architecture (``"mlp"``, ``"cnn"``), its training
    configuration and learning rates."""
    data = load(cfg.dataset, 0)  # an arm moves it to cfg.device
    hidden = cfg.size(tiny=16, quick=64, full=100)
    steps = cfg.size(tiny=30, quick=300, full=1000)
    lrs = cfg.size(
        tiny=[0.03, 3.0],
        quick=[0.01, 0.03, 0.1, 0.3, 1.0, 2.0],
        full=[0.003, 0.01, 0.03, 0.1, 0.3, 0.6, 1.0, 1.5, 2.0, 3.0],
    )
    probe = cfg.size(tiny=500, quick=None, full=None)
    tc = TrainConfig(
        widths=(data.n_features, hidden, hidden, data.n_classes),
        steps=steps,
        batch_size=cfg.size(tiny=50, quick=100, full=100),
        eval_every=steps,
        probe_limit=probe,
    )
    channels = cfg.size(tiny=4, quick=8, full=8)
    cnn_steps = cfg.size(tiny=20, quick=200, full=500)
    cnn_lrs = cfg.size(
        tiny=[0.1, 10.0], quick=[0.1, 0.3, 1.0, 3.0, 10.0], full=[0.1, 0.3, 1.0, 3.0, 6.0, 10.0]
    )
    cnn_tc = TrainConfig(
        widths=(data.n_features, channels, channels, data.n_classes),
        steps=cnn_steps,
        batch_size=tc.batch_size,
        eval_every=cnn_steps,
        probe_limit=probe,
        arch="cnn",
    )
    return data, {"mlp": (tc, lrs), "cnn": (cnn_tc, cnn_lrs)}


#: The sweep's arms, one trainer call each: (architecture, activation).
ARMS: tuple[tuple[str, str], ...] = (*(("mlp", a) for a in ACTIVATIONS), ("cnn", "relu"))


def _lr_arm(cfg: LabConfig, arch: str, act: str) -> dict[str, Any]:
    """One activation of one architecture at every learning rate: ``{str(lr): record}``."""
    data, archs = _setup(cfg)
    data = data.to(cfg.device)
    tc, lrs = archs[arch]
    n = cfg.n_seeds
    members = [Member(seed=s, lr=lr, activation=act) for lr in lrs for s in range(n)]
    res = train_batched(members, tc, data)
    return {str(lr): _record(res, list(range(i * n, (i + 1) * n))) for i, lr in enumerate(lrs)}


def arms(cfg: LabConfig) -> list[Arm]:
    """The sweep's independent pieces: each activation of :data:`ARMS` at every rate."""
    return [Arm(f"{arch}: {act}", partial(_lr_arm, cfg, arch, act)) for arch, act in ARMS]


def assemble(cfg: LabConfig, values: list[Any]) -> Sweep:
    """The sweep from the values of :func:`arms` (in its order)."""
    data, archs = _setup(cfg)
    (tc, lrs), (cnn_tc, cnn_lrs) = archs["mlp"], archs["cnn"]
    got: dict[str, dict[str, Any]] = {"mlp": {}, "cnn": {}}
    for (arch, act), value in zip(ARMS, values, strict=True):
        got[arch][act] = value
    return Sweep(
        numbers={
            "lrs": lrs,
            "n_seeds": cfg.n_seeds,
            "steps": tc.steps,
            "widths": list(tc.widths),
            "n_test": int(data.y_test.shape[0]),
            "mlp": got["mlp"],
            "cnn_lrs": cnn_lrs,
            "cnn_steps": cnn_tc.steps,
            "cnn_widths": list(cnn_tc.widths),
            "cnn": got["cnn"],
        },
        n_seeds=cfg.n_seeds,
    )


def sweep(cfg: LabConfig) -> Sweep:
    """Train every activation at every learning rate (MLP), and ReLU at every rate (CNN)
    (every arm here, in order: :func:`arms`, :func:`assemble`)."""
    return sweep_from_arms(cfg, arms, assemble)


def _c3_part(
    rows: dict[str, Any], lrs: list[float], units: list[int], seeds: SeedIndex
) -> dict[str, Any]:
    """C3 on one architecture's ReLU rows: per layer, dead fraction at the largest learning
    rate where no selected seed diverged minus at the smallest (paired by seed)."""
    ok = [lr for lr in lrs if not any(pick(rows[str(lr)]["diverged"], seeds))]
    if len(ok) < 2:
        return {"verdict": "n/a", "reason": "fewer than two non-diverged learning rates"}
    low, high = ok[0], ok[-1]
    d_low, d_high = pick(rows[str(low)]["dead"], seeds), pick(rows[str(high)]["dead"], seeds)
    layers: list[dict[str, Any]] = []
    verdicts: list[Verdict] = []
    level = 1.0 - 0.05 / len(units)  # Bonferroni: "some layer" looks at every layer
    for li, h in enumerate(units):
        k_hi = [round(d[li] * h) for d in d_high]
        k_lo = [round(d[li] * h) for d in d_low]
        eff, lo, hi = paired_proportion_diff_ci(k_hi, k_lo, h, confidence=level)
        v = decide(eff, lo, hi, MIN_DEAD_EFFECT)
        verdicts.append(v)
        layers.append(
            {
                "layer": li + 1,
                "dead_low": frac_ci([d[li] for d in d_low], h),
                "dead_high": frac_ci([d[li] for d in d_high], h),
                "increase": {"mean": rounded(eff), "lo": rounded(lo), "hi": rounded(hi)},
                "verdict": v,
            }
        )
    # a high rate kills units if it does so in some layer; not supported if in none
    verdict: Verdict = (
        "supported"
        if "supported" in verdicts
        else "not supported"
        if all(v == "not supported" for v in verdicts)
        else "mixed"
    )
    return {
        "lr_low": low,
        "lr_high": high,
        "confidence": rounded(level),
        "layers": layers,
        "verdict": verdict,
    }


def judge(sw: Sweep, seeds: SeedIndex) -> Judgement:
    """C3 and C6 from the sweep, on the seeds ``seeds`` (None: all).

    * C3, per architecture (MLP; CNN): per layer, the paired increase of the dead fraction
      from the smallest learning rate to the largest one at which no selected ReLU run
      diverged (``paired_proportion_diff_ci``); a layer supports the claim when the
      interval is above 0 and the increase >= MIN_DEAD_EFFECT, rejects it when the interval
      lies below MIN_DEAD_EFFECT. An architecture supports C3 when some layer does, rejects
      it when every layer does, else mixed. C3 = the MLP's verdict (the notes' setting);
      the CNN's is reported beside it.
    * C6 (MLP): ``lr_safe`` = the largest rate at which every layer's pooled dead fraction
      is below SAFE_DEAD and no selected run diverged; cost = accuracy at the best rate
      (highest mean over the non-diverged rates) minus at ``lr_safe``, paired t interval
      with the test set's resolution. Not supported when no rate is safe or C3 is not
      supported; supported when the cost's interval lies below MAX_ACC_COST; else mixed.
    """
    nb = sw.numbers
    relu = nb["mlp"]["relu"]
    units = nb["widths"][1:-1]
    c3 = _c3_part(relu, nb["lrs"], units, seeds)
    c3_cnn = _c3_part(nb["cnn"]["relu"], nb["cnn_lrs"], nb["cnn_widths"][1:-1], seeds)
    n_test = nb["n_test"]

    per_layer: dict[str, Any] = {}
    for arch, table, lrs, widths in (
        ("mlp", nb["mlp"], nb["lrs"], nb["widths"]),
        ("cnn", nb["cnn"], nb["cnn_lrs"], nb["cnn_widths"]),
    ):
        per_layer[arch] = {
            act: {
                str(lr): {
                    "diverged": sum(pick(rows[str(lr)]["diverged"], seeds)),
                    "acc": acc_ci(pick(rows[str(lr)]["acc"], seeds), n_test),
                    "dead": [
                        frac_ci(
                            [d[li] if d else None for d in pick(rows[str(lr)]["dead"], seeds)], h
                        )
                        for li, h in enumerate(widths[1:-1])
                    ],
                    "stuck": [
                        frac_ci(
                            [d[li] if d else None for d in pick(rows[str(lr)]["stuck"], seeds)], h
                        )
                        for li, h in enumerate(widths[1:-1])
                    ],
                }
                for lr in lrs
            }
            for act, rows in table.items()
        }

    relu_pl = per_layer["mlp"]["relu"]
    safe = [
        lr
        for lr in nb["lrs"]
        if relu_pl[str(lr)]["diverged"] == 0
        and all(c["mean"] is not None and c["mean"] < SAFE_DEAD for c in relu_pl[str(lr)]["dead"])
    ]
    finite_lrs = [lr for lr in nb["lrs"] if relu_pl[str(lr)]["diverged"] == 0]
    c6_ev: dict[str, Any] = {"lr_safe": None}
    c6: Verdict
    if not safe or c3["verdict"] in ("not supported", "n/a"):
        c6 = "not supported" if not safe or c3["verdict"] == "not supported" else "n/a"
        c6_ev["reason"] = "no rate keeps every layer under 1 % dead, or C3 fails"
    else:
        lr_safe = max(safe)
        best = max(finite_lrs, key=lambda lr: relu_pl[str(lr)]["acc"]["mean"] or 0.0)
        cost = paired_ci(
            pick(relu[str(best)]["acc"], seeds),
            pick(relu[str(lr_safe)]["acc"], seeds),
            resolution=1.0 / n_test,
        )
        c6 = "supported" if cost["hi"] is not None and cost["hi"] < MAX_ACC_COST else "mixed"
        c6_ev = {"lr_safe": lr_safe, "lr_best_acc": best, "acc_cost": cost}

    def layer_text(part: dict[str, Any]) -> str:
        if "layers" not in part:
            return "n/a"
        return "; ".join(
            f"layer {L['layer']}: {fmt_ci(L['dead_low'])} -> {fmt_ci(L['dead_high'])}"
            for L in part["layers"]
        )

    c3_summary = (
        f"ReLU MLP dead per layer, lr {c3.get('lr_low')} -> {c3.get('lr_high')}: "
        f"{layer_text(c3)}; CNN (conv-BN-ReLU) lr {c3_cnn.get('lr_low')} -> "
        f"{c3_cnn.get('lr_high')}: {layer_text(c3_cnn)} (CNN {c3_cnn['verdict']})"
    )
    if c6_ev.get("lr_safe") is None:
        c6_summary = "no learning rate keeps every layer under 1 % dead (or C3 fails)"
    else:
        c6_summary = (
            f"largest lr with every layer < 1 % dead: {c6_ev['lr_safe']}; accuracy cost vs the "
            f"best lr {c6_ev['lr_best_acc']}: "
            f"{fmt_ci(c6_ev['acc_cost'], pct=False, signed=True, digits=4)}"
        )
    claims = {
        "C3": ClaimVerdict(
            verdict=c3["verdict"],
            rule=(
                "ReLU MLP, per hidden layer: dead fraction at the largest lr where no run "
                "diverged minus at the smallest lr, paired over seeds (paired t on the "
                "per-seed differences; Newcombe's score interval when every seed gives the "
                f"same difference); a layer supports if CI lo > 0 and increase >= "
                f"{MIN_DEAD_EFFECT}, rejects if CI hi < {MIN_DEAD_EFFECT}. Supported if some "
                "layer supports, not supported if every layer rejects, else mixed. The CNN "
                "arm's verdict (same rule) is reported, not combined."
            ),
            summary=c3_summary,
            evidence={"mlp": c3, "cnn": c3_cnn},
        ),
        "C6": ClaimVerdict(
            verdict=c6,
            rule=(
                f"lr_safe = largest lr with every layer's dead fraction < {SAFE_DEAD:.0%} and "
                "no diverged run; cost = accuracy(best lr) - accuracy(lr_safe), paired t "
                "interval over seeds (resolution 1/n_test, so identical seeds do not give "
                f"[0, 0]); supported if CI hi < {MAX_ACC_COST}, mixed otherwise, not "
                "supported if no rate is safe or C3 is not supported."
            ),
            summary=c6_summary,
            evidence=c6_ev,
        ),
    }
    return Judgement(claims=claims, derived={"per_layer": per_layer})


def figure(cfg: LabConfig, sw: Sweep, jd: Judgement) -> list[str]:
    """Dead fraction per layer (ReLU MLP and CNN) and accuracy against the learning rate."""
    nb = sw.numbers
    per_layer = jd.derived["per_layer"]
    fig, axes = new_figure(ncols=3, width=4.4)
    ax_dead, ax_cnn, ax_acc = axes[0, 0], axes[0, 1], axes[0, 2]

    def plot(
        ax: Any, rows: dict[str, Any], lrs: list[float], key: str, li: int, label: str
    ) -> None:
        xs, ms, lo, hi = [], [], [], []
        for lr in lrs:
            c = rows[str(lr)][key][li] if key != "acc" else rows[str(lr)]["acc"]
            if c["mean"] is None:
                continue
            xs.append(lr)
            ms.append(c["mean"])
            lo.append(c["mean"] - (c["lo"] if c["lo"] is not None else c["mean"]))
            hi.append((c["hi"] if c["hi"] is not None else c["mean"]) - c["mean"])
        ax.errorbar(xs, ms, yerr=[lo, hi], marker="o", capsize=3, label=label)

    for act, rows in per_layer["mlp"].items():
        for li in range(len(nb["widths"]) - 2):
            if act == "relu" or li == len(nb["widths"]) - 3:
                key = "dead" if act == "relu" else "stuck"
                plot(ax_dead, rows, nb["lrs"], key, li, f"{act} layer {li + 1} ({key})")
        plot(ax_acc, rows, nb["lrs"], "acc", 0, f"MLP {act}")
        for lr in nb["lrs"]:
            k = rows[str(lr)]["diverged"]
            if k:
                ax_acc.annotate(
                    f"{act}: {k}/{nb['n_seeds']} diverged",
                    (lr, 0.12),
                    fontsize=8,
                    rotation=90,
                    va="bottom",
                )
    cnn = per_layer["cnn"]["relu"]
    for li in range(len(nb["cnn_widths"]) - 2):
        plot(ax_cnn, cnn, nb["cnn_lrs"], "dead", li, f"block {li + 1}")
    plot(ax_acc, cnn, nb["cnn_lrs"], "acc", 0, "CNN relu")
    for ax in (ax_dead, ax_cnn):
        ax.axhline(SAFE_DEAD, color="grey", ls=":", lw=1)
        ax.set_ylabel("fraction of units (95 % CI)")
        ax.set_ylim(-0.03, 1.03)
    for ax in (ax_dead, ax_cnn, ax_acc):
        ax.set_xscale("log")
        ax.set_xlabel("learning rate (SGD)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax_dead.set_title("MLP: dead (ReLU) / stuck (variants) per layer", fontsize=9)
    ax_cnn.set_title("CNN conv-BN-ReLU: dead channels per block", fontsize=9)
    ax_acc.set_ylabel("test accuracy (95 % CI)")
    ax_acc.set_title("final test accuracy", fontsize=9)
    fig.tight_layout()
    return [save_figure(fig, cfg, "e1_learning_rate")]


EXPERIMENT = register(
    Experiment(
        id="E1",
        claims=("C3", "C6"),
        title="Learning rate vs dead units",
        question=(
            "Does a high learning rate kill ReLU units (C3), in which layer, and does a low "
            "one prevent it, at what cost in accuracy (C6)? Do the variants and a conv net "
            "die too?"
        ),
        method=(
            "MLP {widths} on MNIST-1D, plain SGD, batch 100, {steps} steps, He init, "
            "learning rates {lrs}, {n_seeds} seeds (the same seeds for every rate and "
            "activation: ReLU, Leaky ReLU 0.01, ELU). CNN arm: conv-BN-ReLU blocks {cnn_widths} "
            "(kernel 5, stride 2, global mean pool) on the 40-sample signals, {cnn_steps} "
            "steps at rates {cnn_lrs}. All runs trained at once by the batched trainer. Dead "
            "= never z > 0 on any training input (classify.dead_mask), per layer (per channel "
            "in the CNN: at any position); stuck = zero gradient on every training input or "
            "saturated. Diverged runs (non-finite loss) are counted and left out of the dead "
            "statistics. Proportions: pooled Wilson intervals with the between-seed design "
            "effect; accuracy: t intervals."
        ),
        sweep=sweep,
        judge=judge,
        figure=figure,
        arms=arms,
        assemble=assemble,
        caveats=(
            "A fixed step budget favours larger learning rates: the accuracy cost of a low "
            "rate partly measures slower convergence, not a worse optimum; the best rate is "
            "picked after the fact, which biases the cost upwards (against C6).",
            "Plain SGD without momentum; Adam or schedules may die at other rates.",
            "The CNN has BatchNorm before every ReLU: its channels are counted in eval mode "
            "(running statistics), the way the trained net is used.",
            "Leaky ReLU units can be never active yet still learn through the negative "
            "slope: for them only 'stuck' means no gradient, and it is 0 by construction.",
        ),
    )
)
