"""E9 (C11's "costs an exp"): forward + backward time per element, relative to ReLU.

Each activation's ``nn.Module`` (from ``deadrelu.activations``, which calls torch's own
kernels) runs forward and backward on the same float32 vector of ``n`` elements. Rounds
are interleaved (every round times every activation, in an order rotated per round) and
each activation's time is divided by ReLU's *of the same round*, so a slow moment of a
shared machine affects numerator and denominator alike. The rounds are the axis the
bootstrap resamples (``Sweep.n_seeds`` = rounds).

Reproducibility: wall-clock times are not reproducible, so every measured number is in
``Sweep.timings`` and the experiment declares ``verdict_source="timings"``: the runner
keeps its verdict out of ``results.json`` (which records "n/a" and a pointer) and writes it
to ``timings.json``; the report and the claims table show it marked "timing-based".
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from deadrelu.activations import get
from deadrelu.lab.core import (
    ClaimVerdict,
    Experiment,
    Judgement,
    LabConfig,
    SeedIndex,
    Sweep,
    new_figure,
    register,
    save_figure,
)
from deadrelu.lab.verdicts import mean_ci, threshold_detail

__all__ = ["ACTIVATIONS", "COST_BOUND", "EXPERIMENT", "time_activations"]

#: Activations timed (registry names, default parameters).
ACTIVATIONS: tuple[str, ...] = (
    "relu",
    "leaky_relu",
    "prelu",
    "relu6",
    "elu",
    "selu",
    "celu",
    "gelu",
    "silu",
    "mish",
    "softplus",
)
#: ELU counts as "more expensive" when its time ratio to ReLU is above this (95 % CI).
COST_BOUND = 1.05

_TRANSCENDENTAL = ("exp", "tanh", "sigmoid", "Phi", "log", "softplus")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_activations(
    names: tuple[str, ...], n: int, rounds: int, iters: int, device: str = "cpu"
) -> dict[str, list[float]]:
    """Seconds per element of forward + backward, per activation, one value per round.

    ``x``: ``(n,)`` float32 standard normal (seed 0) on ``device``; each round times
    ``iters`` forward+backward passes of every activation, in an order rotated per round.
    """
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, generator=g).to(device).requires_grad_(True)
    grad = torch.ones(n, device=device)
    modules = {}
    for name in names:
        act = get(name)
        assert act is not None
        modules[name] = act.module().to(device)
    out: dict[str, list[float]] = {name: [] for name in names}
    for name in names:  # warm-up
        modules[name](x).backward(grad)
    for r in range(rounds):
        order = list(names[r % len(names) :]) + list(names[: r % len(names)])
        for name in order:
            m = modules[name]
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(iters):
                x.grad = None
                m(x).backward(grad)
            _sync(device)
            out[name].append((time.perf_counter() - t0) / (iters * n))
    return out


def sweep(cfg: LabConfig) -> Sweep:
    """Time every activation in interleaved rounds (numbers: the set-up; timings: all)."""
    n = cfg.size(tiny=10_000, quick=1_000_000, full=4_000_000)
    rounds = cfg.size(tiny=3, quick=11, full=21)
    iters = cfg.size(tiny=3, quick=5, full=10)
    per_elem = time_activations(ACTIVATIONS, n, rounds, iters, cfg.device)
    specs = {}
    for k in ACTIVATIONS:
        act = get(k)
        assert act is not None
        specs[k] = {
            "formula": act.spec.formula,
            "transcendental": any(t in act.spec.formula for t in _TRANSCENDENTAL),
        }
    numbers: dict[str, Any] = {
        "setting": {
            "elements": n,
            "rounds": rounds,
            "iterations_per_round": iters,
            "dtype": "float32",
            "device": cfg.device,
            "activations": list(ACTIVATIONS),
        },
        "formulas": specs,
    }
    timings: dict[str, Any] = {
        "seconds_per_element": per_elem,
        "threads": torch.get_num_threads(),
    }
    return Sweep(numbers=numbers, n_seeds=rounds, timings=timings, axis="rounds")


def _ratios(sweep: Sweep, rounds: SeedIndex) -> dict[str, list[float]]:
    per_elem = sweep.timings["seconds_per_element"]
    idx = list(range(sweep.n_seeds)) if rounds is None else list(rounds)
    relu = per_elem["relu"]
    return {k: [v[i] / relu[i] for i in idx] for k, v in per_elem.items()}


def judge(sweep: Sweep, seeds: SeedIndex) -> Judgement:
    """C11 "costs an exp": the per-round log time ratio log(ELU / ReLU) above log(1.05)."""
    ratios = _ratios(sweep, seeds)
    # geometric: CI of the mean log-ratio, mapped back (robust to one slow round)
    ratio_ci = {
        k: [math.exp(x) for x in mean_ci([math.log(r) for r in v])] for k, v in ratios.items()
    }
    medians = {k: sorted(v)[len(v) // 2] for k, v in ratios.items()}
    elu = threshold_detail(
        [math.log(x) for x in ratios["elu"]], bound=math.log(COST_BOUND), above=True
    )
    ranking = sorted(ACTIVATIONS, key=lambda k: medians[k])
    rule = (
        f"MEASURED (wall clock, not reproducible): 'ELU costs more than ReLU' by threshold() "
        f"on the per-round log time ratio log(ELU/ReLU): supported if its 95 % CI is "
        f"entirely above log({COST_BOUND}) = {math.log(COST_BOUND):.4f}, not supported if "
        f"entirely at or below, else mixed: {elu.rule}"
    )
    summary = (
        f"ELU/ReLU time {ratio_ci['elu'][0]:.2f}x [{ratio_ci['elu'][1]:.2f}, "
        f"{ratio_ci['elu'][2]:.2f}]; cheapest to dearest: {', '.join(ranking)}"
    )
    derived = {
        "ratio_to_relu_geometric_ci": ratio_ci,
        "ratio_to_relu_median": medians,
        "elu_more_expensive": elu.to_dict(),
    }
    return Judgement(
        {"C11": ClaimVerdict(elu.verdict, rule, summary, {"elu_log_ratio": elu.to_dict()})},
        derived,
    )


def figure(cfg: LabConfig, sweep: Sweep, judgement: Judgement) -> list[str]:
    """Bars: geometric mean time ratio to ReLU with its 95 % interval, per activation."""
    ratio_ci = judgement.derived["ratio_to_relu_geometric_ci"]
    setting = sweep.numbers["setting"]
    fig, axes = new_figure(ncols=1, width=7.0, height=3.8)
    ax = axes[0][0]
    names = list(ACTIVATIONS)
    means = [ratio_ci[k][0] for k in names]
    lo = [max(ratio_ci[k][0] - ratio_ci[k][1], 0.0) for k in names]
    hi = [max(ratio_ci[k][2] - ratio_ci[k][0], 0.0) for k in names]
    ax.bar(range(len(names)), means, yerr=[lo, hi], capsize=3, color="#4a7ab5")
    for i, m in enumerate(means):
        ax.annotate(
            f"{m:.2f}x", (i, m), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8
        )
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30, fontsize=9)
    ax.set_ylabel("time / ReLU's time")
    ax.set_title(
        f"forward + backward, {setting['elements']:,} float32 elements, {setting['device']}, "
        "1 thread (measured)",
        fontsize=10,
    )
    fig.tight_layout()
    return [save_figure(fig, cfg, "e9_cost.png")]


EXPERIMENT = register(
    Experiment(
        id="E9",
        claims=("C11",),
        title="Cost per element vs ReLU",
        question=(
            "How much more does an activation with an exp (ELU, SELU, ...) cost than ReLU, "
            "forward plus backward, per element?"
        ),
        method=(
            "Each activation module on the same {setting[elements]}-element float32 vector, "
            "forward and backward, {setting[iterations_per_round]} passes per round, "
            "{setting[rounds]} interleaved rounds, on {setting[device]} with the lab's single "
            "intra-op thread; per round, time divided by ReLU's time of the same round; "
            "geometric mean and 95 % t-interval of the log ratio over rounds (the rounds are "
            "what the bootstrap resamples)."
        ),
        sweep=sweep,
        judge=judge,
        figure=figure,
        caveats=(
            "Timings are from this run on this machine (see timings.json); E9's verdict is "
            "measured, results.json records it as n/a, the report marks it timing-based.",
            "One thread, elementwise kernels on a large vector: memory bandwidth bounds ReLU, "
            "so the ratio shows the arithmetic cost of exp only where the kernel is compute "
            "bound. In a network the matmuls dominate and the activation's share is small.",
            "PyTorch's vectorised exp is far cheaper than a scalar libm call; the notes' "
            "'expensive exp' dates from scalar code.",
        ),
        verdict_source="timings",
    )
)
