"""E10 (C15): born dead. How often is a deep, narrow ReLU net dead at initialisation?

Lu, Shin, Su and Karniadakis ("Dying ReLU and Initialization: Theory and Numerical
Examples", 2019/2020) prove that a ReLU network initialised from symmetric distributions
dies in probability as its depth grows, the sooner the narrower it is, and propose the
randomized asymmetric initialization (RAI) against it.

Monte Carlo through :func:`deadrelu.born_dead.born_dead_rate`: for each width ``N`` it
draws many networks with ``L = max depth`` hidden ReLU layers and finds, per network, the
first hidden layer that is 0 on every input (input dimension 1, a grid of inputs on
``[-sqrt 3, sqrt 3]``; for zero biases the grid decides exactly). A network of depth ``L``
is *born dead* when that layer is ``<= L``: one deep draw gives the rate at every depth.
Three initialisations: ``he`` (N(0, 2/fan_in) weights, zero biases: the usual symmetric
default), ``he_bias`` (symmetric biases too) and ``rai``
(:func:`deadrelu.remedies.rai_sample`).

The draws are split into one batch per seed, so each (width, depth) has one born-dead rate
per seed and the verdicts use 95 % intervals over seeds.
"""

from __future__ import annotations

from typing import Any

from deadrelu.born_dead import born_dead_rate
from deadrelu.lab.core import ExperimentResult, LabConfig, experiment, new_figure, save_figure
from deadrelu.lab.verdicts import combine, compare_detail, threshold_detail

#: Input dimension of the Monte Carlo networks (1: the grid decides exactly for "he").
INPUT_DIM = 1
#: Initialisations compared ("he" is the symmetric reference of the verdicts).
INITS: tuple[str, ...] = ("he", "he_bias", "rai")
#: "Deep narrow nets can be born dead": rate at the deepest, narrowest setting above this.
BORN_DEAD_BOUND = 0.05
#: "It grows with depth": rate(deepest) - rate(shallowest) at least this, narrowest width.
MIN_DEPTH_EFFECT = 0.05
#: "RAI lowers it": rate(he) - rate(RAI) at least this, deepest narrowest setting.
MIN_RAI_EFFECT = 0.05
#: Depth at which RAI is compared with He: deep enough for He to die often, shallow enough
#: that the rate is not saturated at 1 for both (at depth 100 and width 2 both are ~1).
RAI_DEPTH = 10


def born_dead_by_depth(
    width: int, depth: int, nets: int, inputs: int, init: str, seed: int
) -> list[float]:
    """Fraction of ``nets`` random nets born dead at each depth ``1..depth``.

    One call of :func:`deadrelu.born_dead.born_dead_rate` at the full ``depth``; entry
    ``L - 1`` is the fraction whose first all-zero hidden layer is ``<= L``.
    """
    res = born_dead_rate(
        depth, width, init=init, trials=nets, seed=seed, d_in=INPUT_DIM, n_inputs=inputs
    )
    first = res.first_dead_layer
    alive_to_end = first == 0
    return [float(((~alive_to_end) & (first <= d)).double().mean()) for d in range(1, depth + 1)]


@experiment("E10", ("C15",), "Born dead at initialisation")
def run(cfg: LabConfig) -> ExperimentResult:
    """Monte Carlo born-dead rates by width and depth, symmetric init vs RAI."""
    widths = cfg.size(tiny=(2, 4), quick=(2, 3, 4, 5, 8), full=(2, 3, 4, 5, 8, 16))
    depth = cfg.size(tiny=10, quick=50, full=100)
    nets = cfg.size(tiny=100, quick=300, full=1000)
    inputs = cfg.size(tiny=32, quick=64, full=128)
    seeds = list(range(cfg.n_seeds))
    rates: dict[str, dict[str, list[list[float]]]] = {init: {} for init in INITS}
    for init in INITS:
        for w in widths:
            rates[init][str(w)] = [
                born_dead_by_depth(w, depth, nets, inputs, init, 7919 * (s + 1) + w) for s in seeds
            ]

    narrow = str(min(widths))
    sym_deep = [r[-1] for r in rates["he"][narrow]]
    sym_shallow = [r[0] for r in rates["he"][narrow]]
    rai_depth = min(RAI_DEPTH, depth)
    rai_deep = [r[-1] for r in rates["rai"][narrow]]
    sym_ref = [r[rai_depth - 1] for r in rates["he"][narrow]]
    rai_ref = [r[rai_depth - 1] for r in rates["rai"][narrow]]
    exists = threshold_detail(sym_deep, bound=BORN_DEAD_BOUND, above=True)
    grows = compare_detail(
        sym_deep, sym_shallow, min_effect=MIN_DEPTH_EFFECT, higher_is_better=True, paired=True
    )
    rai_helps = compare_detail(
        rai_ref, sym_ref, min_effect=MIN_RAI_EFFECT, higher_is_better=False, paired=True
    )
    verdict = combine([exists.verdict, grows.verdict, rai_helps.verdict])

    def mean_curve(init: str, w: str) -> list[float]:
        runs = rates[init][w]
        return [sum(r[d] for r in runs) / len(runs) for d in range(depth)]

    fig, axes = new_figure(ncols=1, width=8.5, height=4.0)
    ax = axes[0][0]
    depths = list(range(1, depth + 1))
    for i, w in enumerate(widths):
        color = f"C{i}"
        ax.plot(depths, mean_curve("he", str(w)), color=color, label=f"N={w} He, bias 0")
        ax.plot(depths, mean_curve("he_bias", str(w)), color=color, ls=":", lw=1)
        ax.plot(depths, mean_curve("rai", str(w)), color=color, ls="--", label=f"N={w} RAI")
    ax.set_xlabel("depth L (hidden layers)")
    ax.set_ylabel("P(born dead)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(
        f"Monte Carlo, {nets * len(seeds)} nets per curve, input dim {INPUT_DIM} "
        "(dotted: He with symmetric biases)",
        fontsize=9,
    )
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    figure = save_figure(fig, cfg, "e10_born_dead.png")

    table = {
        init: {
            w: {
                f"L={d}": mean_curve(init, w)[d - 1]
                for d in (1, 2, 5, 10, 20, 50, 100)
                if d <= depth
            }
            for w in rates[init]
        }
        for init in rates
    }
    numbers: dict[str, Any] = {
        "setting": {
            "widths": list(widths),
            "max_depth": depth,
            "nets_per_seed": nets,
            "inputs": inputs,
            "input_dim": INPUT_DIM,
            "seeds": seeds,
            "inits": {
                "he": "N(0, 2/fan_in) weights, zero biases",
                "he_bias": "N(0, 2/fan_in) weights and biases",
                "rai": "deadrelu.remedies.rai_sample (Beta(2, 1) asymmetric entry)",
            },
            "monte_carlo": "deadrelu.born_dead.born_dead_rate",
        },
        "born_dead_rate_mean": table,
        "born_dead_rate_per_seed_by_depth": rates,
        "exists_at_depth": exists.to_dict(),
        "grows_with_depth": grows.to_dict(),
        "rai_lowers_it": rai_helps.to_dict(),
    }

    def avg(xs: list[float]) -> float:
        return sum(xs) / len(xs)

    summary = (
        f"width {narrow}: P(born dead) depth 1 {avg(sym_shallow):.3f}, depth {rai_depth} "
        f"{avg(sym_ref):.3f} He (bias 0) vs {avg(rai_ref):.3f} RAI, depth {depth} "
        f"{avg(sym_deep):.3f} vs {avg(rai_deep):.3f}"
    )
    rule = (
        f"at the narrowest width ({narrow}), rates per seed: (1) threshold(): P(born dead) at "
        f"depth {depth} above {BORN_DEAD_BOUND} -> {exists.verdict}; (2) compare(): depth "
        f"{depth} minus depth 1 >= {MIN_DEPTH_EFFECT}, paired -> {grows.verdict}; (3) "
        f"compare(): He (bias 0) minus RAI at depth {rai_depth} >= {MIN_RAI_EFFECT}, paired "
        f"-> "
        f"{rai_helps.verdict}. Overall combine(): supported if all three are."
    )
    caveats = [
        "'Born dead' is judged on a grid of inputs of [-sqrt 3, sqrt 3]: exact for zero biases "
        "(the network is positively homogeneous), otherwise an upper bound of the rate a "
        "certificate over the interval would give.",
        f"Input dimension {INPUT_DIM}, as in Lu et al.'s function-approximation examples; wide "
        "inputs and wide layers make born-dead nets rare.",
        "RAI from deadrelu.remedies.rai_sample; its sigma and asymmetric distribution "
        "(Beta(2, 1)) follow that implementation.",
        "A dead layer is counted; a network can also be constant in other ways (all "
        "surviving paths cancelling), which this does not count.",
    ]
    return ExperimentResult(
        id="E10",
        claims=("C15",),
        title="Born dead at initialisation",
        question=(
            "How likely is a deep, narrow ReLU network to be dead (constant) at "
            "initialisation, by depth and width; and does RAI lower it?"
        ),
        method=(
            f"Monte Carlo: {nets} random nets per seed x {len(seeds)} seeds per width "
            f"{list(widths)}, {depth} hidden ReLU layers, input dim {INPUT_DIM}, a grid of "
            f"{inputs} inputs; a net of depth L is born dead when one of its first L "
            "hidden layers is 0 on every input (deadrelu.born_dead.born_dead_rate). He init "
            "with zero biases (the verdicts' symmetric reference), He with symmetric biases, "
            "and RAI."
        ),
        numbers=numbers,
        verdict=verdict,
        verdict_rule=rule,
        summary=summary,
        figures=[figure],
        caveats=caveats,
    )
