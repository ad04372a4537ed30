"""E3 (C5): is a dead unit ever recovered? ReLU vs Leaky ReLU, first layer vs deeper.

The notes: "a dead unit is not recoverable". For a ReLU unit of the *first* hidden layer
this is exact: dead on every training input means zero gradient for its weights and bias
on every minibatch, and its inputs (the data) never change, so it stays dead. A unit of a
deeper layer can come back when the layers below it change its inputs. A Leaky ReLU unit
that is never active still gets gradient through the negative slope and can come back.

We train at the learning rate that kills units in E1, with one negative bias update early
on (to create dead units in every layer), evaluate every few steps on the whole training
set, and follow every unit: of the units dead at some evaluation (before the last), the
fraction that is alive at any later evaluation.
"""

from __future__ import annotations

from typing import Any

import torch

from deadrelu.lab.core import (
    ExperimentResult,
    LabConfig,
    Verdict,
    ci_dict,
    experiment,
    new_figure,
    rounded,
    save_figure,
)
from deadrelu.lab.data import load
from deadrelu.lab.trainer import Member, TrainConfig, TrainResult, train_batched
from deadrelu.lab.verdicts import combine, threshold_detail

ACTIVATIONS = ("relu", "leaky_relu")
#: Learning rate of the run (kills units in E1).
LR = 1.5
#: One negative update of every hidden bias, early, so that every layer has dead units.
KICK = -2.5
#: "Not recoverable": fewer than this fraction of dead units ever come back.
MAX_REVIVAL = 0.05


def revival(masks: torch.Tensor) -> tuple[int, int]:
    """``masks``: ``(T, U)`` dead masks of one member's layer over the evaluations.

    Returns ``(ever_dead, revived)``: units dead at some evaluation before the last, and
    among them those alive at a later evaluation than the first one at which they were
    dead.
    """
    t = masks.shape[0]
    if t < 2:
        return 0, 0
    dead_before_last = masks[:-1].any(dim=0)  # (U,)
    first = torch.where(
        dead_before_last,
        masks[:-1].int().argmax(dim=0),
        torch.full_like(masks[0], t, dtype=torch.long),
    )
    steps = torch.arange(t)[:, None]
    later_alive = ((steps > first[None, :]) & ~masks).any(dim=0)
    ever = int(dead_before_last.sum())
    return ever, int((later_alive & dead_before_last).sum())


def per_member(res: TrainResult) -> list[list[dict[str, int]]]:
    """``[member][layer] -> {"dead": ever_dead, "revived": revived}`` (diverged members
    are skipped: their NaN units are not dead)."""
    out: list[list[dict[str, int]]] = []
    div = res.diverged.tolist()
    for i in range(len(res.members)):
        if div[i]:
            continue
        layers = []
        for masks in res.dead_masks:
            ever, rev = revival(masks[:, i, :])
            layers.append({"dead": ever, "revived": rev})
        out.append(layers)
    return out


def sweep(cfg: LabConfig) -> dict[str, Any]:
    """Train ReLU and Leaky ReLU with per-unit tracking; return the counts per seed."""
    data = load(cfg.dataset, 0).to(cfg.device)
    hidden = cfg.size(tiny=16, quick=64, full=100)
    steps = cfg.size(tiny=30, quick=300, full=1500)
    every = cfg.size(tiny=5, quick=15, full=25)
    kick_step = every
    tc = TrainConfig(
        widths=(data.n_features, hidden, hidden, data.n_classes),
        steps=steps,
        batch_size=cfg.size(tiny=50, quick=100, full=100),
        eval_every=every,
        record_masks=True,
        probe_limit=cfg.size(tiny=500, quick=None, full=None),
    )
    seeds = list(range(cfg.n_seeds))
    out: dict[str, Any] = {
        "widths": tc.widths,
        "steps": steps,
        "eval_every": every,
        "lr": LR,
        "kick": KICK,
        "kick_step": kick_step,
        "seeds": len(seeds),
        "results": {},
    }
    for act in ACTIVATIONS:
        members = [
            Member(seed=s, lr=LR, activation=act, bias_kick=KICK, kick_step=kick_step)
            for s in seeds
        ]
        res = train_batched(members, tc, data)
        counts = per_member(res)
        n_layers = len(tc.widths) - 2
        frac = [
            [
                rounded(c[layer]["revived"] / c[layer]["dead"]) if c[layer]["dead"] else None
                for c in counts
            ]
            for layer in range(n_layers)
        ]
        ok = ~res.diverged
        out["results"][act] = {
            "counts": counts,
            "revived_fraction": frac,  # [layer][seed]
            "diverged": int(res.diverged.sum()),
            "dead_curve": [
                [rounded(v) for v in res.dead_frac[ok, :, layer].mean(dim=0).tolist()]
                for layer in range(n_layers)
            ],
            "eval_steps": res.steps,
        }
    return out


def verdicts(numbers: dict[str, Any]) -> tuple[Verdict, dict[str, Any]]:
    """C5 for ReLU: per hidden layer, ``verdicts.threshold`` of the per-seed revived
    fraction below MAX_REVIVAL (seeds without dead units are left out); C5 = combine over
    layers. Layers without any dead unit in any seed are "n/a"."""
    detail: dict[str, Any] = {}
    parts: list[Verdict] = []
    for layer, fr in enumerate(numbers["results"]["relu"]["revived_fraction"]):
        xs = [f for f in fr if f is not None]
        if not xs:
            detail[f"layer{layer + 1}"] = {"verdict": "n/a", "reason": "no dead unit"}
            parts.append("n/a")
            continue
        t = threshold_detail(xs, bound=MAX_REVIVAL, above=False)
        detail[f"layer{layer + 1}"] = t.to_dict()
        parts.append(t.verdict)
    return combine(parts), detail


def _figure(cfg: LabConfig, numbers: dict[str, Any]) -> str:
    fig, axes = new_figure(ncols=2, width=4.6)
    ax = axes[0, 0]
    for act, r in numbers["results"].items():
        for layer, curve in enumerate(r["dead_curve"]):
            ax.plot(
                r["eval_steps"],
                [c if c is not None else float("nan") for c in curve],
                ls="-" if act == "relu" else "--",
                label=f"{act}, layer {layer + 1}",
            )
    ax.axvline(numbers["kick_step"], color="grey", ls=":", lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("never-active fraction")
    ax.set_title(f"lr {numbers['lr']}, bias update {numbers['kick']} at the dotted line")
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    labels, means, errs_lo, errs_hi = [], [], [], []
    for act, r in numbers["results"].items():
        for layer, fr in enumerate(r["revived_fraction"]):
            c = (
                ci_dict([f for f in fr if f is not None])
                if any(f is not None for f in fr)
                else {"mean": None, "lo": None, "hi": None}
            )
            labels.append(f"{act}\nlayer {layer + 1}")
            m = c["mean"] if c["mean"] is not None else 0.0
            means.append(m)
            errs_lo.append(m - c["lo"] if c["lo"] is not None else 0.0)
            errs_hi.append(c["hi"] - m if c["hi"] is not None else 0.0)
    ax.bar(range(len(labels)), means, yerr=[errs_lo, errs_hi], capsize=3, color="tab:purple")
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.axhline(MAX_REVIVAL, color="grey", ls=":", lw=1)
    ax.set_ylabel("fraction of dead units that came back")
    ax.set_title("revival")
    for a in axes[0]:
        a.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, cfg, "e3_irreversibility")


@experiment("E3", ("C5",), "Do dead units come back?")
def run(cfg: LabConfig) -> ExperimentResult:
    """Track every unit through training; apply the C5 rule to ReLU."""
    numbers = sweep(cfg)
    verdict, detail = verdicts(numbers)
    numbers["verdict_detail"] = detail
    parts = []
    for act, r in numbers["results"].items():
        for layer, fr in enumerate(r["revived_fraction"]):
            xs = [f for f in fr if f is not None]
            m = ci_dict(xs)["mean"] if xs else None
            parts.append(
                f"{act} L{layer + 1} {100 * m:.0f} %"
                if m is not None
                else f"{act} L{layer + 1} n/a"
            )
    summary = "dead units that come back: " + ", ".join(parts)
    numbers["claim_verdicts"] = {"C5": verdict}
    numbers["claim_summaries"] = {"C5": summary}
    return ExperimentResult(
        id="E3",
        claims=("C5",),
        title="Do dead units come back?",
        question=(
            "Of the units dead at some step, how many are ever active again? ReLU vs Leaky "
            "ReLU, first hidden layer vs the second."
        ),
        method=(
            f"MLP {numbers['widths']} on {cfg.dataset}, SGD lr {numbers['lr']}, "
            f"{numbers['steps']} steps, every hidden bias moved by {numbers['kick']} at step "
            f"{numbers['kick_step']} (to create dead units in every layer), {numbers['seeds']} "
            f"seeds. Every {numbers['eval_every']} steps each unit is classified dead or not on "
            "the whole training set (deadrelu.classify.dead_mask); a unit dead at some "
            "evaluation before the last revives if it is active at a later one."
        ),
        numbers=numbers,
        verdict=verdict,
        verdict_rule=(
            "For ReLU, per hidden layer: per-seed fraction of dead units that revive, 95 % t "
            f"CI of the mean; supported if the CI lies below {MAX_REVIVAL}, not supported if "
            "entirely above, else mixed (layers without dead units: n/a); the claim's "
            "verdict combines the layers (all supported -> supported, all not -> not "
            "supported, else mixed). Leaky ReLU is shown for contrast, not judged."
        ),
        summary=summary,
        figures=[_figure(cfg, numbers)],
        caveats=[
            "Dead is judged on the training set every few steps: a unit alive only between "
            "two evaluations, or only on inputs outside the training set, is not seen.",
            "In the first layer revival is impossible by construction for ReLU (no gradient, "
            "fixed inputs); the informative part of the claim is deeper layers.",
            "A never-active Leaky ReLU unit is not stuck: it still receives gradient.",
        ],
    )
