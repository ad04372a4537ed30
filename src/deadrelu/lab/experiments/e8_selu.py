"""E8 (C12, with C13's known limits as caveats): SELU self-normalisation and training speed.

Part 1, signal propagation: standard-normal inputs pushed through 64 fully connected layers
with LeCun normal weights (N(0, 1/fan_in), zero biases), no training. Per layer we record
the mean and the variance of the activations, for SELU, ReLU and ELU. Klambauer et al.
(2017) prove that (mean 0, variance 1) is an attracting fixed point for SELU under exactly
this initialisation; ReLU halves the second moment at every layer under LeCun init (He's
init, variance 2/fan_in, compensates), and ELU has no such fixed point.

Part 2, training speed: a deep narrow MLP trained with SELU (LeCun init, as the paper
requires) and with ReLU (He init, its own recommended init): the mean test accuracy over
the evaluation points (area under the accuracy curve) measures how fast each learns.

Seeds: seed ``s`` draws propagation inputs and weights from ``1000 + s`` and trains both
nets from ``s``; every per-seed number is a list indexed by seed, which ``judge`` resamples.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from deadrelu.activations import get
from deadrelu.init import lecun_normal_
from deadrelu.lab.core import (
    ClaimVerdict,
    Experiment,
    Judgement,
    LabConfig,
    SeedIndex,
    Sweep,
    ci_dict,
    new_figure,
    register,
    save_figure,
)
from deadrelu.lab.data import load
from deadrelu.lab.trainer import Member, TrainConfig, train_batched
from deadrelu.lab.verdicts import combine, compare_detail, within_detail

__all__ = ["DEPTH", "EXPERIMENT", "MEAN_BAND", "MIN_SPEED_EFFECT", "VAR_BAND", "propagate"]

DEPTH = 64
#: SELU counts as self-normalised when, at layer 64, the mean lies in MEAN_BAND and the
#: variance in VAR_BAND (95 % CI over seeds).
MEAN_BAND = (-0.1, 0.1)
VAR_BAND = (2.0 / 3.0, 1.5)
#: "learning is faster": mean test accuracy over the run higher by at least this much.
MIN_SPEED_EFFECT = 0.01
#: Learning rate (SGD) of both trained nets.
LR = 0.05

_PROPAGATE = ("selu", "relu", "elu")
_VARIANTS = {"selu (lecun)": ("selu", "lecun"), "relu (he)": ("relu", "he")}


def propagate(
    activation: str, depth: int, width: int, n: int, seed: int
) -> tuple[list[float], list[float]]:
    """Mean and variance of the activations after each of ``depth`` LeCun-normal layers.

    Inputs ``(n, width)`` are standard normal; layer ``l`` is an ``nn.Linear(width, width,
    bias=False)`` initialised by :func:`deadrelu.init.lecun_normal_` (``W ~ N(0, 1/width)``)
    and computes ``h = f(h W^T)``. Float64; the global RNG is seeded with ``seed`` inside a
    fork, so the caller's RNG state is untouched. Returns two lists of length ``depth``.
    """
    act = get(activation)
    assert act is not None
    means: list[float] = []
    variances: list[float] = []
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        h = torch.randn(n, width, dtype=torch.float64)
        for _ in range(depth):
            layer = nn.Linear(width, width, bias=False, dtype=torch.float64)
            lecun_normal_(layer)
            h = act(layer(h))
            means.append(float(h.mean()))
            variances.append(float(h.var(unbiased=False)))
    return means, variances


def sweep(cfg: LabConfig) -> Sweep:
    """Propagate through 64 LeCun layers per seed; train a deep SELU net and a ReLU net."""
    seeds = list(range(cfg.n_seeds))
    width = cfg.size(tiny=32, quick=128, full=256)
    n = cfg.size(tiny=64, quick=256, full=512)
    prop: dict[str, dict[str, list[list[float]]]] = {}
    for name in _PROPAGATE:
        runs = [propagate(name, DEPTH, width, n, 1000 + s) for s in seeds]
        prop[name] = {"mean": [r[0] for r in runs], "var": [r[1] for r in runs]}

    data = load(cfg.dataset, 0).to(cfg.device)
    depth_train = cfg.size(tiny=4, quick=16, full=32)
    width_train = cfg.size(tiny=16, quick=64, full=64)
    steps = cfg.size(tiny=30, quick=400, full=2000)
    tc = TrainConfig(
        widths=(data.n_features, *([width_train] * depth_train), data.n_classes),
        steps=steps,
        batch_size=cfg.size(tiny=50, quick=100, full=100),
        eval_every=max(steps // cfg.size(tiny=3, quick=10, full=20), 1),
        probe_limit=cfg.size(tiny=200, quick=500, full=1000),
    )
    curves: dict[str, list[list[float]]] = {}
    auc: dict[str, list[float]] = {}
    final: dict[str, list[float]] = {}
    dead: dict[str, list[float]] = {}
    for label, (act, init) in _VARIANTS.items():
        members = [Member(seed=s, lr=LR, activation=act, init=init) for s in seeds]
        res = train_batched(members, tc, data)
        acc = torch.nan_to_num(res.test_acc, nan=0.0)  # (M, T)
        curves[label] = acc.tolist()
        auc[label] = acc.mean(dim=1).tolist()
        final[label] = acc[:, -1].tolist()
        dead[label] = res.dead_frac[:, -1, :].mean(dim=1).tolist()
    numbers: dict[str, Any] = {
        "propagation": {
            "depth": DEPTH,
            "width": width,
            "inputs": n,
            "init": "deadrelu.init.lecun_normal_: N(0, 1/fan_in), no bias",
            "seeds": [1000 + s for s in seeds],
            "per_layer": prop,
        },
        "training": {
            "dataset": cfg.dataset,
            "n_test": int(data.y_test.shape[0]),
            "widths": list(tc.widths),
            "hidden_layers": depth_train,
            "hidden_width": width_train,
            "steps": steps,
            "eval_steps": tc.eval_steps(),
            "lr": LR,
            "seeds": seeds,
            "test_acc_curves": curves,
            "auc_test_acc": auc,
            "final_test_acc": final,
            "dead_fraction_final": dead,
        },
    }
    return Sweep(numbers=numbers, n_seeds=len(seeds))


def _pick(xs: list[Any], seeds: SeedIndex) -> list[Any]:
    return list(xs) if seeds is None else [xs[i] for i in seeds]


def judge(sweep: Sweep, seeds: SeedIndex) -> Judgement:
    """C12: SELU's layer-64 mean and variance in their bands, and SELU learns faster."""
    prop = sweep.numbers["propagation"]["per_layer"]
    tr = sweep.numbers["training"]
    last = {
        name: {
            "mean": [m[-1] for m in _pick(prop[name]["mean"], seeds)],
            "var": [v[-1] for v in _pick(prop[name]["var"], seeds)],
        }
        for name in _PROPAGATE
    }
    mean_ok = within_detail(last["selu"]["mean"], low=MEAN_BAND[0], high=MEAN_BAND[1])
    var_ok = within_detail(last["selu"]["var"], low=VAR_BAND[0], high=VAR_BAND[1])
    selfnorm = combine([mean_ok.verdict, var_ok.verdict])
    a = _pick(tr["auc_test_acc"]["selu (lecun)"], seeds)
    b = _pick(tr["auc_test_acc"]["relu (he)"], seeds)
    # accuracy is a share of n_test examples: its step is 1 / n_test
    speed = compare_detail(
        a,
        b,
        min_effect=MIN_SPEED_EFFECT,
        higher_is_better=True,
        paired=True,
        resolution=1.0 / tr["n_test"],
    )
    verdict = combine([selfnorm, speed.verdict])
    rule = (
        f"combine() of three parts. Self-normalising: within() on SELU's layer-64 mean "
        f"(band {list(MEAN_BAND)}) and variance (band [{VAR_BAND[0]:.3g}, {VAR_BAND[1]:.3g}]): "
        f"95 % CI over seeds inside the band -> supported, entirely outside -> not supported "
        f"(mean: {mean_ok.verdict}, {mean_ok.rule}; variance: {var_ok.verdict}, "
        f"{var_ok.rule}). Faster learning: compare() of the mean test accuracy over the run, "
        f"SELU+LeCun vs ReLU+He, paired by seed, min effect {MIN_SPEED_EFFECT}: "
        f"{speed.verdict} ({speed.rule})."
    )
    sm = sum(last["selu"]["mean"]) / len(last["selu"]["mean"])
    sv = sum(last["selu"]["var"]) / len(last["selu"]["var"])
    rv = sum(last["relu"]["var"]) / len(last["relu"]["var"])
    summary = (
        f"layer 64: SELU mean {sm:+.3f} var {sv:.3f}, ReLU var {rv:.2g}; deep-net accuracy "
        f"over the run SELU - ReLU {speed.effect:+.4f} [{speed.lo:+.4f}, {speed.hi:+.4f}]"
    )
    derived = {
        "layer_64": {
            name: {"mean": ci_dict(v["mean"]), "var": ci_dict(v["var"])} for name, v in last.items()
        },
        "selu_mean_in_band": mean_ok.to_dict(),
        "selu_var_in_band": var_ok.to_dict(),
        "selu_minus_relu_auc": speed.to_dict(),
        "final_test_acc": {
            k: ci_dict(_pick(v, seeds), bounds=(0.0, 1.0)) for k, v in tr["final_test_acc"].items()
        },
    }
    evidence = {
        "selfnormalising": selfnorm,
        "faster": speed.verdict,
        "auc_effect": speed.effect,
        "auc_ci": [speed.lo, speed.hi],
    }
    return Judgement({"C12": ClaimVerdict(verdict, rule, summary, evidence)}, derived)


def figure(cfg: LabConfig, sweep: Sweep, judgement: Judgement) -> list[str]:
    """Mean and variance by layer (mean over seeds); training curves (mean over seeds)."""
    prop = sweep.numbers["propagation"]["per_layer"]
    tr = sweep.numbers["training"]
    fig, axes = new_figure(ncols=3, width=4.4, height=3.6)
    layers = list(range(1, DEPTH + 1))
    k = sweep.n_seeds
    for name in _PROPAGATE:
        mm = [sum(m[li] for m in prop[name]["mean"]) / k for li in range(DEPTH)]
        vv = [sum(v[li] for v in prop[name]["var"]) / k for li in range(DEPTH)]
        axes[0][0].plot(layers, mm, label=name)
        axes[0][1].semilogy(layers, [max(x, 1e-300) for x in vv], label=name)
    axes[0][0].axhline(0.0, color="gray", lw=0.8)
    axes[0][0].set_xlabel("layer")
    axes[0][0].set_ylabel("mean activation")
    axes[0][0].set_title("mean through 64 LeCun-normal layers", fontsize=10)
    axes[0][0].legend(fontsize=8)
    axes[0][1].axhline(1.0, color="gray", lw=0.8)
    axes[0][1].set_xlabel("layer")
    axes[0][1].set_ylabel("variance (log scale)")
    axes[0][1].set_title("variance through 64 layers", fontsize=10)
    axes[0][1].legend(fontsize=8)
    for label, runs in tr["test_acc_curves"].items():
        mean_curve = [sum(r[t] for r in runs) / len(runs) for t in range(len(runs[0]))]
        axes[0][2].plot(tr["eval_steps"], mean_curve, label=label)
    axes[0][2].set_xlabel("step")
    axes[0][2].set_ylabel("test accuracy (mean over seeds)")
    axes[0][2].set_title(f"training a {tr['hidden_layers']}-layer MLP", fontsize=10)
    axes[0][2].legend(fontsize=8)
    fig.tight_layout()
    return [save_figure(fig, cfg, "e8_selu.png")]


EXPERIMENT = register(
    Experiment(
        id="E8",
        claims=("C12",),
        title="SELU self-normalisation",
        question=(
            "Do SELU activations keep mean 0 and variance 1 through 64 layers (LeCun normal "
            "init), unlike ReLU and ELU; and does a deep SELU net learn faster than ReLU?"
        ),
        method=(
            "Propagation: {propagation[inputs]} standard-normal inputs through 64 layers of "
            "width {propagation[width]}, W ~ N(0, 1/fan_in), no bias, one draw per seed, "
            "float64; mean and variance of each layer's activations. Training: MLP with "
            "{training[hidden_layers]} hidden layers of {training[hidden_width]} on "
            "{training[dataset]}, SGD lr {training[lr]}, {training[steps]} steps, SELU with "
            "LeCun init vs ReLU with He init, same seeds; the mean test accuracy over the "
            "evaluation points (area under the curve)."
        ),
        sweep=sweep,
        judge=judge,
        figure=figure,
        caveats=(
            "The self-normalisation proof (Klambauer et al. 2017) assumes LeCun normal "
            "weights, normalised inputs, wide fully connected layers and no dropout other "
            "than alpha-dropout; the propagation part follows those assumptions, so it tests "
            "the theory in its own setting.",
            "ReLU and ELU under LeCun init are shown for contrast; with He init ReLU's "
            "variance would be preserved on average (but not its mean).",
            "Training speed: one learning rate (SGD) for both nets, not tuned per "
            "activation; ReLU gets He init, SELU LeCun init, each its recommended one.",
            "C13 (SELU is new and less studied) is not an experiment: see L13 for the known "
            "limits (init, alpha-dropout, architectures).",
        ),
    )
)
