"""E3 (C5): is a dead unit ever recovered? Which optimizer, which layer, and why?

The notes: "a dead unit is not recoverable". What is exact and what is not:

* a ReLU unit of the **first** hidden layer that is dead on every training input gets zero
  gradient for its weights and bias on every minibatch, and its inputs (the data) never
  change: with **plain SGD** (no weight decay) it stays dead, exactly;
* with **momentum** or **Adam** its parameters keep moving for a while on the stale
  first moment (the velocity from before it died), so it *can* come back;
* a unit of a **deeper** layer can come back when the layers below it change its inputs,
  even with plain SGD and its own weights frozen.

We kill units two ways -- a high learning rate alone (no kick), and one negative update of
every hidden bias early in training (the kick) -- train with SGD, SGD with momentum and
Adam, and follow every unit: of the units dead at some evaluation (before the last), the
fraction that is alive at a later evaluation. Each revival is attributed: the unit is
re-evaluated with its **own** weights from the last evaluation at which it was dead and the
**upstream** layers from the evaluation at which it is alive again; if that already revives
it, the revival is "upstream" (its inputs changed), otherwise "own" (its own weights had to
move). Per seed we also report whether a whole layer died.

Training is :func:`deadrelu.lab.trainer.train_sequential` with a step hook that keeps the
weights at every evaluation (the batched trainer keeps only the final ones); Leaky ReLU is
the contrast arm (a never-active Leaky ReLU unit still gets gradient).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

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
from deadrelu.lab.experiments._common import seed_axis
from deadrelu.lab.trainer import (
    MLP,
    Member,
    TrainConfig,
    TrainResult,
    build_member,
    train_sequential,
)
from deadrelu.lab.verdicts import Verdict, combine, pooled_proportion_ci

#: One negative update of the hidden biases, per layer (layer 1, layer 2), right after step
#: ``eval_every``: layer 1 needs a larger one to have dead units (its inputs are the data);
#: layer 2 a smaller one, or the whole layer dies and the net with it.
KICKS: tuple[float, ...] = (-4.0, -1.5)
#: "Not recoverable": the pooled fraction of dead units that come back is below this.
MAX_REVIVAL = 0.05
#: The arms: activation, optimizer, learning rate, kick. Momentum's lr is SGD's times
#: (1 - 0.9) (the same step size in the long run); Adam's 0.01 is high for Adam.
ARMS: dict[str, dict[str, Any]] = {
    "relu, SGD, kick": {"act": "relu", "opt": "sgd", "lr": 1.5, "kick": True},
    "relu, SGD, no kick": {"act": "relu", "opt": "sgd", "lr": 2.0, "kick": False},
    "relu, momentum, kick": {"act": "relu", "opt": "momentum", "lr": 0.15, "kick": True},
    "relu, Adam, kick": {"act": "relu", "opt": "adam", "lr": 0.01, "kick": True},
    "leaky_relu, SGD, kick": {"act": "leaky_relu", "opt": "sgd", "lr": 1.5, "kick": True},
}


def revival(masks: Tensor) -> tuple[int, int]:
    """``masks``: ``(T, U)`` dead masks of one member's layer over the evaluations.

    Returns ``(ever_dead, revived)``: units dead at some evaluation before the last, and
    among them those alive at a later evaluation than the first one at which they were
    dead.
    """
    first, again = _revival_steps(masks)
    ever = int((first >= 0).sum())
    return ever, int((again >= 0).sum())


def _revival_steps(masks: Tensor) -> tuple[Tensor, Tensor]:
    """Per unit: the first evaluation index at which it is dead (before the last; -1 if
    never) and the first later index at which it is alive again (-1 if never)."""
    t, units = masks.shape
    first = torch.full((units,), -1, dtype=torch.long)
    again = torch.full((units,), -1, dtype=torch.long)
    if t < 2:
        return first, again
    dead_before_last = masks[:-1].any(dim=0)
    f = masks[:-1].int().argmax(dim=0)
    first[dead_before_last] = f[dead_before_last]
    steps = torch.arange(t)[:, None]
    later_alive = (steps > f[None, :]) & ~masks & dead_before_last[None, :]
    has = later_alive.any(dim=0)
    again[has] = later_alive.int().argmax(dim=0)[has]
    return first, again


# --------------------------------------------------------------------------------------
# Training with the weights kept at every evaluation
# --------------------------------------------------------------------------------------


def _train_with_snapshots(
    members: Sequence[Member], tc: TrainConfig, data: Dataset, kicks: Sequence[float] | None
) -> tuple[TrainResult, list[dict[int, dict[str, Tensor]]]]:
    """``train_sequential`` whose step hook adds ``kicks`` (one per hidden layer) to the
    hidden biases after step ``tc.eval_every`` (before that evaluation), and keeps, per
    member, ``{eval step: state_dict}``: the weights each evaluation saw."""
    eval_at = set(tc.eval_steps())
    snaps: list[dict[int, dict[str, Tensor]]] = [
        {0: {k: v.detach().clone() for k, v in build_member(m, tc).state_dict().items()}}
        for m in members
    ]
    current = {"i": -1}

    def hook(step: int, model: Any, opt: torch.optim.Optimizer) -> None:
        if step == 1:
            current["i"] += 1
        if kicks is not None and step == tc.eval_every:
            with torch.no_grad():
                for b, k in zip(model.hidden_biases(), kicks, strict=True):
                    b.add_(k)
        if step in eval_at:
            snaps[current["i"]][step] = {
                k: v.detach().clone() for k, v in model.state_dict().items()
            }

    res = train_sequential(members, tc, data, on_step=hook)
    return res, snaps


def _attribute(
    member: Member,
    tc: TrainConfig,
    snaps: dict[int, dict[str, Tensor]],
    steps: list[int],
    layer: int,
    units: Tensor,
    t_dead: int,
    t_alive: int,
    x: Tensor,
) -> Tensor:
    """``(len(units),)`` bool: the units of hidden ``layer`` (0-based, >= 1) are active on
    some row of ``x`` with their own weights from evaluation ``t_dead`` and the layers
    below from evaluation ``t_alive`` (True: the upstream change alone revives them)."""
    below = build_member(member, tc)
    below.load_state_dict(snaps[steps[t_alive]])
    own = build_member(member, tc)
    own.load_state_dict(snaps[steps[t_dead]])
    assert isinstance(own, MLP)
    with torch.no_grad():
        _, _, post = below(x)
        lin = own.linear_layers()[layer]
        z = post[layer - 1] @ lin.weight[units].T + lin.bias[units]
    active: Tensor = (z > 0).any(dim=0)
    return active


def _arm_numbers(
    res: TrainResult,
    snaps: list[dict[int, dict[str, Tensor]]],
    members: Sequence[Member],
    tc: TrainConfig,
    data: Dataset,
) -> dict[str, Any]:
    """Per seed and layer: units ever dead, revived (upstream / own), whole layer died."""
    steps = res.steps
    div = [bool(d) for d in res.diverged.tolist()]
    per_seed: list[list[dict[str, Any]]] = []
    for i, m in enumerate(members):
        layers: list[dict[str, Any]] = []
        for layer, masks_all in enumerate(res.dead_masks):
            masks = masks_all[:, i, :]  # (T, U)
            first, again = _revival_steps(masks)
            revived = torch.nonzero(again >= 0).flatten()
            upstream = 0
            if layer > 0 and not div[i]:
                for t2 in sorted({int(again[u]) for u in revived}):
                    us = revived[again[revived] == t2]
                    act = _attribute(m, tc, snaps[i], steps, layer, us, t2 - 1, t2, data.x_train)
                    upstream += int(act.sum())
            layers.append(
                {
                    "ever_dead": int((first >= 0).sum()),
                    "revived": int(revived.numel()),
                    "by_upstream": upstream,
                    "by_own": int(revived.numel()) - upstream,
                    "whole_layer_died": bool(masks.all(dim=1).any()),
                    "whole_layer_dead_at_end": bool(masks[-1].all()),
                    "dead_final": int(masks[-1].sum()),
                }
            )
        per_seed.append(layers)
    ok = [not d for d in div]
    curve = [
        [rounded(v) for v in res.dead_frac[torch.tensor(ok), :, layer].mean(dim=0).tolist()]
        if any(ok)
        else []
        for layer in range(len(res.dead_masks))
    ]
    return {
        "per_seed": per_seed,
        "diverged": div,
        "dead_curve": curve,
        "eval_steps": steps,
        "test_acc": [rounded(float(a)) for a in res.test_acc[:, -1]],
    }


def sweep(cfg: LabConfig) -> Sweep:
    """Train every arm on the same seeds with per-unit tracking and weight snapshots."""
    data = load(cfg.dataset, 0).to(cfg.device)
    hidden = cfg.size(tiny=16, quick=64, full=100)
    steps = cfg.size(tiny=30, quick=240, full=800)
    every = cfg.size(tiny=5, quick=20, full=25)
    seeds = list(range(cfg.n_seeds))
    out: dict[str, Any] = {
        "widths": [data.n_features, hidden, hidden, data.n_classes],
        "steps": steps,
        "eval_every": every,
        "kicks": list(KICKS),
        "kick_step": every,
        "seeds": len(seeds),
        "arms": {},
    }
    for name, arm in ARMS.items():
        tc = TrainConfig(
            widths=(data.n_features, hidden, hidden, data.n_classes),
            steps=steps,
            batch_size=cfg.size(tiny=50, quick=100, full=100),
            eval_every=every,
            record_masks=True,
            probe_limit=cfg.size(tiny=500, quick=None, full=None),
            optimizer=arm["opt"],
        )
        members = [Member(seed=s, lr=arm["lr"], activation=arm["act"]) for s in seeds]
        res, snaps = _train_with_snapshots(members, tc, data, KICKS if arm["kick"] else None)
        out["arms"][name] = {**arm, **_arm_numbers(res, snaps, members, tc, data)}
    return Sweep(numbers=out, n_seeds=len(seeds))


# --------------------------------------------------------------------------------------
# Judge
# --------------------------------------------------------------------------------------


def _layer_stats(arm: dict[str, Any], idx: Sequence[int], layer: int) -> dict[str, Any]:
    """Pooled revival fraction (design-effect Wilson over seeds) and its attribution."""
    seeds = [s for s in idx if not arm["diverged"][s]]
    rows = [arm["per_seed"][s][layer] for s in seeds]
    dead = [r["ever_dead"] for r in rows]
    rev = [r["revived"] for r in rows]
    out: dict[str, Any] = {
        "seeds": len(seeds),
        "ever_dead": sum(dead),
        "revived": sum(rev),
        "by_upstream": sum(r["by_upstream"] for r in rows),
        "by_own": sum(r["by_own"] for r in rows),
        "whole_layer_died_seeds": sum(r["whole_layer_died"] for r in rows),
        "whole_layer_dead_at_end_seeds": sum(r["whole_layer_dead_at_end"] for r in rows),
    }
    if sum(dead) == 0:
        out["verdict"] = "n/a"
        return out
    p, lo, hi = pooled_proportion_ci(rev, dead)
    verdict: Verdict = (
        "supported" if hi < MAX_REVIVAL else "not supported" if lo > MAX_REVIVAL else "mixed"
    )
    out.update(revived_fraction=rounded(p), lo=rounded(lo), hi=rounded(hi), verdict=verdict)
    if sum(rev):
        q, qlo, qhi = pooled_proportion_ci([r["by_upstream"] for r in rows], rev)
        out["upstream_share"] = {"p": rounded(q), "lo": rounded(qlo), "hi": rounded(qhi)}
    return out


def judge(sw: Sweep, seeds: SeedIndex = None) -> Judgement:
    """C5 for every ReLU arm and hidden layer (Leaky ReLU shown, not judged)."""
    num = sw.numbers
    idx = seed_axis(sw.n_seeds, seeds)
    n_layers = len(num["widths"]) - 2
    stats: dict[str, dict[str, Any]] = {}
    parts: list[Verdict] = []
    for name, arm in num["arms"].items():
        stats[name] = {}
        for layer in range(n_layers):
            s = _layer_stats(arm, idx, layer)
            stats[name][f"layer{layer + 1}"] = s
            if arm["act"] == "relu":
                parts.append(s["verdict"])
    verdict = combine(parts)
    units = [int(u) for u in num["widths"][1:-1]]
    dead_final = {
        name: {
            f"layer{layer + 1}": dict(
                zip(
                    ("p", "lo", "hi"),
                    map(
                        rounded,
                        pooled_proportion_ci(
                            [arm["per_seed"][s][layer]["dead_final"] for s in idx], units[layer]
                        ),
                    ),
                    strict=True,
                )
            )
            for layer in range(n_layers)
        }
        for name, arm in num["arms"].items()
    }

    def txt(name: str, layer: int) -> str:
        s = stats[name][f"layer{layer + 1}"]
        if s["verdict"] == "n/a":
            return f"L{layer + 1} no dead unit"
        up = f", {s['by_upstream']} by upstream" if layer > 0 and s["revived"] else ""
        return (
            f"L{layer + 1} {s['revived']}/{s['ever_dead']} revive "
            f"[{100 * s['lo']:.0f}, {100 * s['hi']:.0f}] %{up}"
        )

    short = {
        "relu, SGD, kick": "SGD+kick",
        "relu, SGD, no kick": "SGD no kick",
        "relu, momentum, kick": "momentum",
        "relu, Adam, kick": "Adam",
    }
    summary = "; ".join(
        f"{short[n]}: " + ", ".join(txt(n, layer) for layer in range(n_layers))
        for n in short
        if n in stats
    )
    died = [
        f"{short[n]} L{layer + 1} {stats[n][f'layer{layer + 1}']['whole_layer_died_seeds']}"
        for n in short
        if n in stats
        for layer in range(n_layers)
        if stats[n][f"layer{layer + 1}"]["whole_layer_died_seeds"]
    ]
    summary += f"; whole layer dead (seeds of {len(idx)}): " + (", ".join(died) or "none")
    rule = (
        "For each ReLU arm (SGD with the bias kick, SGD at a high lr without it, momentum "
        "and Adam with the kick) and each hidden layer: the fraction of units dead at some "
        "evaluation that are alive at a later one, pooled over seeds (Wilson interval on the "
        "design-effect sample size, verdicts.pooled_proportion_ci); supported if the 95 % "
        f"interval lies below {MAX_REVIVAL}, not supported if above, else mixed; no dead unit "
        "-> n/a. C5 = combine() over arms and layers. Plain SGD cannot revive a first-layer "
        "unit (zero gradient, fixed inputs); momentum and Adam can (stale first moment), and "
        "deeper units revive when their inputs change ('upstream': re-evaluated with their "
        "own weights from the last dead evaluation and the layers below from the revival). "
        f"Parts: {parts}"
    )
    return Judgement(
        claims={"C5": ClaimVerdict(verdict, rule, summary, {"per_arm": stats})},
        derived={"revival": stats, "dead_final": dead_final},
    )


def figure(cfg: LabConfig, sw: Sweep, jd: Judgement) -> list[str]:
    """Left: never-active fraction per layer over training; right: revival by arm/layer."""
    num = sw.numbers
    fig, axes = new_figure(ncols=2, width=5.2, height=3.8)
    ax = axes[0][0]
    for j, (name, arm) in enumerate(num["arms"].items()):
        for layer, curve in enumerate(arm["dead_curve"]):
            if curve:
                ax.plot(
                    arm["eval_steps"],
                    [c if c is not None else float("nan") for c in curve],
                    color=f"C{j}",
                    ls="-" if layer else ":",
                    label=f"{name}, L{layer + 1}",
                )
    ax.axvline(num["kick_step"], color="grey", ls=":", lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("never-active fraction (dotted: layer 1)")
    ax.set_title(f"bias update {num['kicks']} at the grey line (kick arms)", fontsize=9)
    ax.legend(fontsize=6)
    ax = axes[0][1]
    labels, means, lo_err, hi_err, colors = [], [], [], [], []
    for j, (name, per_layer) in enumerate(jd.derived["revival"].items()):
        for layer, s in enumerate(per_layer.values()):
            labels.append(f"{name.replace(', ', chr(10))}\nL{layer + 1}")
            m = s.get("revived_fraction") or 0.0
            means.append(m)
            lo_err.append(m - (s.get("lo") or 0.0) if s["verdict"] != "n/a" else 0.0)
            hi_err.append((s.get("hi") or 0.0) - m if s["verdict"] != "n/a" else 0.0)
            colors.append(f"C{j}")
    ax.bar(range(len(labels)), means, yerr=[lo_err, hi_err], capsize=2, color=colors)
    for x, per in enumerate(
        s for layers in jd.derived["revival"].values() for s in layers.values()
    ):
        if per["verdict"] == "n/a":
            ax.text(x, 0.01, "no dead\nunit", ha="center", va="bottom", fontsize=6)
    ax.set_xticks(range(len(labels)), labels, fontsize=5)
    ax.axhline(MAX_REVIVAL, color="grey", ls=":", lw=1)
    ax.set_ylabel("fraction of dead units that came back")
    ax.set_title("revival, Wilson 95 % (pooled over seeds)", fontsize=9)
    for a in axes[0]:
        a.grid(alpha=0.3)
    fig.tight_layout()
    return [save_figure(fig, cfg, "e3_irreversibility.png")]


EXPERIMENT = register(
    Experiment(
        id="E3",
        claims=("C5",),
        title="Do dead units come back?",
        question=(
            "Of the units dead at some step, how many are ever active again -- by layer, "
            "with plain SGD, momentum and Adam, with and without a large negative bias "
            "update -- and is a revival due to the unit's own weights or to the layers below?"
        ),
        method=(
            "MLP {widths} on MNIST-1D, {steps} steps, {seeds} seeds, the same seeds in every "
            "arm: ReLU with SGD (lr 1.5, the hidden biases of layers 1, 2 moved by {kicks} "
            "after step {kick_step}), SGD at lr 2.0 without the update, SGD with momentum 0.9 "
            "(lr 0.15) and Adam (lr 0.01) with the update, and Leaky ReLU (SGD, update) for "
            "contrast. "
            "Every {eval_every} steps each unit is classified dead or not on the whole "
            "training set (deadrelu.classify.dead_mask); a unit dead at some evaluation "
            "before the last revives if it is active at a later one. Each revival of a "
            "deeper unit is re-evaluated with its own weights from its last dead evaluation "
            "and the layers below from the revival ('upstream' if that is active)."
        ),
        sweep=sweep,
        judge=judge,
        figure=figure,
        caveats=(
            "Dead is judged on the training set every few steps: a unit alive only between "
            "two evaluations, or only on inputs outside the training set, is not seen.",
            "With plain SGD and no weight decay, first-layer revival is impossible by "
            "construction; the informative parts are the deeper layer and the other "
            "optimizers.",
            "A revival attributed to 'upstream' could also have happened with the unit's own "
            "weights changing; 'own' means the upstream change alone was not enough.",
            "A never-active Leaky ReLU unit is not stuck: it still receives gradient.",
            "The sequential trainer (torch.optim) is used here for its step hook; it is "
            "tested equal to the batched one.",
        ),
    )
)
