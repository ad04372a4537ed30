"""E10 (C15): born dead. How often is a deep, narrow ReLU net dead at initialisation?

Lu, Shin, Su and Karniadakis ("Dying ReLU and Initialization: Theory and Numerical
Examples", 2019/2020) prove that a ReLU network initialised from symmetric distributions
dies in probability as its depth grows, the sooner the narrower it is, and propose the
randomized asymmetric initialization (RAI) against it.

Monte Carlo: for each width ``N`` we draw many networks ``R^D -> (R^N)^L`` with
``L = max depth`` hidden ReLU layers, push a fixed sample of inputs through them, and call
a network of depth ``L`` *born dead* when some hidden layer ``l <= L`` has all its units
dead on every input (``deadrelu.classify.dead_mask`` of each unit's active count): from
that layer on the network is constant on the sample, so its output does not depend on the
input. One deep draw gives the answer for every depth ``L`` (a depth-``L`` net is the first
``L`` layers). Two initialisations:

* symmetric: He normal weights N(0, 2/fan_in), zero biases (the usual default);
* RAI: ``deadrelu.remedies.rai_sample`` (Lu et al.'s recipe as implemented there).

The draws are split into one batch per seed, so each (width, depth) has one born-dead rate
per seed and the verdicts use 95 % intervals over seeds.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from deadrelu.classify import dead_mask
from deadrelu.lab.core import ExperimentResult, LabConfig, experiment, new_figure, save_figure
from deadrelu.lab.verdicts import combine, compare_detail, threshold_detail

#: Input dimension of the Monte Carlo networks.
INPUT_DIM = 2
#: "Deep narrow nets can be born dead": rate at the deepest, narrowest setting above this.
BORN_DEAD_BOUND = 0.05
#: "It grows with depth": rate(deepest) - rate(shallowest) at least this, narrowest width.
MIN_DEPTH_EFFECT = 0.05
#: "RAI lowers it": rate(symmetric) - rate(RAI) at least this, deepest narrowest setting.
MIN_RAI_EFFECT = 0.05


def _rai_sampler() -> tuple[Any, str]:
    """``rai_sample`` from ``deadrelu.remedies`` if importable, else a local equivalent."""
    try:
        from deadrelu.remedies import rai_sample

        return rai_sample, "deadrelu.remedies.rai_sample"
    except ImportError:  # pragma: no cover - only while remedies is missing
        return _rai_fallback, "local fallback (deadrelu.remedies.rai_sample not importable)"


def _rai_fallback(
    rows: int,
    fan_in: int,
    *,
    bias: bool = True,
    sigma: float = 0.6,
    batch: tuple[int, ...] = (),
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor | None]:
    """Same recipe as ``deadrelu.remedies.rai_sample`` (used only if that is missing)."""
    width = fan_in + (1 if bias else 0)
    v = torch.randn((*batch, rows, width), generator=generator, dtype=dtype)
    v = v * (sigma / math.sqrt(fan_in))
    k = torch.randint(0, width, (*batch, rows, 1), generator=generator)
    positive = torch.rand((*batch, rows, 1), generator=generator, dtype=dtype).sqrt()
    v.scatter_(-1, k, positive)
    if bias:
        return v[..., :fan_in].contiguous(), v[..., fan_in].contiguous()
    return v, None


def born_dead_by_depth(
    width: int,
    depth: int,
    nets: int,
    inputs: int,
    init: str,
    seed: int,
    input_dim: int = INPUT_DIM,
) -> list[float]:
    """Fraction of ``nets`` random nets born dead at each depth ``1..depth``.

    ``init`` is ``"symmetric"`` (He normal, zero bias) or ``"rai"``. All nets share the
    input sample ``(inputs, input_dim)`` ~ N(0, I), drawn from ``seed``. Returns a list of
    length ``depth``: entry ``L-1`` is the fraction of nets in which one of the first ``L``
    hidden layers is dead on every input.
    """
    if init not in ("symmetric", "rai"):
        raise ValueError(f"init must be 'symmetric' or 'rai', got {init!r}")
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(inputs, input_dim, generator=g, dtype=torch.float32)
    h = x.expand(nets, inputs, input_dim)  # (P, n, D)
    rai, _ = _rai_sampler()
    dead_so_far = torch.zeros(nets, dtype=torch.bool)
    rates: list[float] = []
    fan_in = input_dim
    for _ in range(depth):
        if init == "symmetric":
            w = torch.randn(nets, width, fan_in, generator=g, dtype=torch.float32)
            w = w * math.sqrt(2.0 / fan_in)
            b = torch.zeros(nets, width, dtype=torch.float32)
        else:
            w, b = rai(width, fan_in, bias=True, batch=(nets,), generator=g, dtype=torch.float32)
        z = torch.baddbmm(b[:, None, :], h, w.transpose(1, 2))  # (P, n, N)
        active = (z > 0).sum(dim=1)  # (P, N)
        layer_dead = dead_mask(active).all(dim=1)  # (P,) every unit of the layer dead
        dead_so_far |= layer_dead
        rates.append(float(dead_so_far.double().mean()))
        h = torch.relu(z)
        fan_in = width
    return rates


@experiment("E10", ("C15",), "Born dead at initialisation")
def run(cfg: LabConfig) -> ExperimentResult:
    """Monte Carlo born-dead rates by width and depth, symmetric init vs RAI."""
    widths = cfg.size(tiny=(2, 4), quick=(2, 3, 4, 5, 8), full=(2, 3, 4, 5, 8, 16))
    depth = cfg.size(tiny=10, quick=50, full=100)
    nets = cfg.size(tiny=100, quick=400, full=1000)
    inputs = cfg.size(tiny=64, quick=256, full=512)
    seeds = list(range(cfg.n_seeds))
    _, rai_source = _rai_sampler()
    rates: dict[str, dict[str, list[list[float]]]] = {"symmetric": {}, "rai": {}}
    for init in rates:
        for w in widths:
            rates[init][str(w)] = [
                born_dead_by_depth(w, depth, nets, inputs, init, 7919 * (s + 1) + w) for s in seeds
            ]

    narrow = str(min(widths))
    sym_deep = [r[-1] for r in rates["symmetric"][narrow]]
    sym_shallow = [r[0] for r in rates["symmetric"][narrow]]
    rai_deep = [r[-1] for r in rates["rai"][narrow]]
    exists = threshold_detail(sym_deep, bound=BORN_DEAD_BOUND, above=True)
    grows = compare_detail(
        sym_deep, sym_shallow, min_effect=MIN_DEPTH_EFFECT, higher_is_better=True, paired=True
    )
    rai_helps = compare_detail(
        rai_deep, sym_deep, min_effect=MIN_RAI_EFFECT, higher_is_better=False, paired=True
    )
    verdict = combine([exists.verdict, grows.verdict, rai_helps.verdict])

    def mean_curve(init: str, w: str) -> list[float]:
        runs = rates[init][w]
        return [sum(r[d] for r in runs) / len(runs) for d in range(depth)]

    fig, axes = new_figure(ncols=1, width=7.0, height=4.0)
    ax = axes[0][0]
    depths = list(range(1, depth + 1))
    for i, w in enumerate(widths):
        color = f"C{i}"
        ax.plot(depths, mean_curve("symmetric", str(w)), color=color, label=f"N={w} symmetric")
        ax.plot(depths, mean_curve("rai", str(w)), color=color, ls="--", label=f"N={w} RAI")
    ax.set_xlabel("depth L (hidden layers)")
    ax.set_ylabel("P(born dead)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(
        f"Monte Carlo, {nets * len(seeds)} nets per curve, input dim {INPUT_DIM}", fontsize=9
    )
    ax.legend(fontsize=7, ncol=2)
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
            "symmetric_init": "He normal N(0, 2/fan_in), zero bias",
            "rai_init": rai_source,
        },
        "born_dead_rate_mean": table,
        "born_dead_rate_per_seed_by_depth": rates,
        "exists_at_depth": exists.to_dict(),
        "grows_with_depth": grows.to_dict(),
        "rai_lowers_it": rai_helps.to_dict(),
    }
    summary = (
        f"width {narrow}, depth {depth}: P(born dead) {sum(sym_deep) / len(sym_deep):.3f} "
        f"symmetric vs {sum(rai_deep) / len(rai_deep):.3f} RAI (depth 1: "
        f"{sum(sym_shallow) / len(sym_shallow):.3f})"
    )
    rule = (
        f"at the narrowest width ({narrow}), rates per seed: (1) threshold(): P(born dead) at "
        f"depth {depth} above {BORN_DEAD_BOUND} -> {exists.verdict}; (2) compare(): depth "
        f"{depth} minus depth 1 >= {MIN_DEPTH_EFFECT}, paired -> {grows.verdict}; (3) "
        f"compare(): symmetric minus RAI at depth {depth} >= {MIN_RAI_EFFECT}, paired -> "
        f"{rai_helps.verdict}. Overall combine(): supported if all three are."
    )
    caveats = [
        "'Born dead' is judged on a finite input sample (dead on every sampled input); a "
        "data-free certificate over a domain (deadrelu.certify) would be stricter, so these "
        "rates are upper bounds of the certified ones.",
        f"Input dimension {INPUT_DIM}, standard-normal inputs, as in Lu et al.'s low-dimensional "
        "function-approximation setting; wide inputs and wide layers make born-dead nets rare.",
        f"RAI from {rai_source}; its sigma and asymmetric distribution (Beta(2, 1)) follow "
        "that implementation.",
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
            f"{list(widths)}, {depth} hidden ReLU layers, input dim {INPUT_DIM}, {inputs} "
            "standard-normal inputs; a net of depth L is born dead when one of its first L "
            "hidden layers has every unit dead (deadrelu.classify.dead_mask) on every input. "
            "He-normal zero-bias init vs RAI."
        ),
        numbers=numbers,
        verdict=verdict,
        verdict_rule=rule,
        summary=summary,
        figures=[figure],
        caveats=caveats,
    )
