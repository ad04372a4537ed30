"""E11 (C5, C16): loss of plasticity -- do dead units accumulate over a sequence of tasks,
and do the remedies keep the network able to learn?

Dohare et al. ("Loss of plasticity in deep continual learning", Nature 2024) train one
network on a long sequence of tasks (e.g. permuted MNIST) and find that plain
backpropagation gradually loses the ability to learn new tasks while the fraction of dead
(never active) ReLU units grows; their continual backprop (CBP) re-initialises a small
fraction of low-utility units all the time. Sokar et al. ("The dormant neuron phenomenon
in deep reinforcement learning", ICML 2023) recycle dormant units every few steps (ReDo).

Here: a sequence of label-shuffled MNIST-1D tasks (task ``k`` relabels the ten classes with
a fixed random permutation; task 1 keeps the labels; the inputs stay the same, so a dead
first-layer unit stays dead under SGD), trained one after another with one network per
seed, plain SGD, no reset between tasks. Four arms on the same seeds (same initial
weights, same minibatch order): ReLU, Leaky ReLU (0.01), ReLU + ReDo (every
:data:`REDO_EVERY` steps, units whose ReDo score is <= :data:`REDO_TAU` on a batch of the
current task are re-initialised) and ReLU + a CBP-style replacement (a running utility
``|h| * sum |w_out|`` per unit; every :data:`CBP_EVERY` steps a fraction
:data:`CBP_RATE` per step of the mature units with the lowest utility is re-initialised).
Re-initialising is ReDo's action (``deadrelu.remedies.recycle``'s logic, on the stacked
weights): incoming weights re-drawn from ``nn.Linear``'s default, bias 0, outgoing weights
0 (SGD has no optimizer state to reset).

At the end of each task: test accuracy on that task, the dead fraction (never active on the
task's training inputs) and the dormant fraction (ReDo score <= tau) per hidden layer.

The training loop is this module's own (batched over members with stacked weights): the
lab's trainer trains one task from a fresh initialisation and has no per-step remedies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import stack_module_state

from deadrelu.activations import Activation, get
from deadrelu.classify import DORMANT_TAU, dead_mask, dormant_mask
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
from deadrelu.lab.trainer import Member, TrainConfig, build_member
from deadrelu.lab.verdicts import (
    combine,
    compare_detail,
    decide,
    paired_proportion_diff_ci,
)

#: Arms: name -> (activation, remedy).
ARMS: dict[str, tuple[str, str | None]] = {
    "relu": ("relu", None),
    "leaky_relu": ("leaky_relu", None),
    "relu + ReDo": ("relu", "redo"),
    "relu + CBP": ("relu", "cbp"),
}
#: SGD learning rate (high enough for units to die within the sequence: a pilot at 0.3
#: killed none in 8 tasks, 2.0 killed 16 % in the first task and then none more).
LR = 1.0
#: ReDo: recycle every this many steps, units with ReDo score <= tau (passed explicitly).
REDO_EVERY = 50
REDO_TAU = DORMANT_TAU
#: ReDo's scoring batch (rows of the current task's training set).
REDO_BATCH = 500
#: CBP-style replacement: utility decay, maturity (steps), replacement rate per step per
#: layer (a fraction of the mature units), bookkeeping every this many steps.
CBP_DECAY = 0.99
CBP_MATURITY = 100
CBP_RATE = 1e-4
CBP_EVERY = 10
#: "Dead units accumulate": ReLU dead fraction (all hidden units), last task minus first,
#: at least this.
MIN_ACCUMULATION = 0.02
#: "The remedy keeps it able to learn": accuracy on the last tasks higher by at least this.
MIN_ACC_EFFECT = 0.01
#: The tasks the accuracy verdict averages over: the last quarter of the sequence.
LATE_FRACTION = 0.25
#: Rows of each task's training set on which dead and dormant units are measured.
PROBE_ROWS = 2000


# --------------------------------------------------------------------------------------
# Stacked MLP: forward, SGD, re-initialisation
# --------------------------------------------------------------------------------------


def _forward(
    params: dict[str, Tensor], n_layers: int, act: Activation, x: Tensor
) -> tuple[Tensor, list[Tensor]]:
    """``x``: ``(m, N, D)`` -> logits ``(m, N, C)`` and hidden activations ``[(m, N, H)]``."""
    h = x
    post: list[Tensor] = []
    for i in range(n_layers + 1):
        z = torch.baddbmm(
            params[f"linears.{i}.bias"].unsqueeze(1),
            h,
            params[f"linears.{i}.weight"].transpose(1, 2),
        )
        if i == n_layers:
            return z, post
        h = act(z)
        post.append(h)
    raise AssertionError("unreachable")


def reinit_units(
    params: dict[str, Tensor], layer: int, mask: Tensor, generator: torch.Generator
) -> int:
    """Re-initialise the units ``mask`` (``(m, H)`` bool) of hidden ``layer`` in place:
    ``deadrelu.remedies.recycle``'s action on stacked weights. Incoming rows re-drawn from
    ``nn.Linear``'s default ``kaiming_uniform_(a=sqrt 5)`` (U(-1/sqrt fan_in, 1/sqrt fan_in)),
    bias 0, outgoing columns 0. Returns the number of units re-initialised."""
    w = params[f"linears.{layer}.weight"]  # (m, H, fan_in)
    b = params[f"linears.{layer}.bias"]  # (m, H)
    w_out = params[f"linears.{layer + 1}.weight"]  # (m, H_next, H)
    n = int(mask.sum())
    if n == 0:
        return 0
    bound = 1.0 / math.sqrt(w.shape[-1])
    fresh = (torch.rand(w.shape, generator=generator, dtype=w.dtype) * 2 - 1) * bound
    with torch.no_grad():
        w[mask] = fresh.to(w.device)[mask]
        b[mask] = 0.0
        w_out.transpose(1, 2)[mask] = 0.0
    return n


def _layer_masks(
    params: dict[str, Tensor], n_layers: int, act: Activation, x: Tensor, tau: float
) -> tuple[list[Tensor], list[Tensor]]:
    """Dead and dormant ``(m, H)`` masks per hidden layer on the rows ``x`` (``(N, D)``)."""
    m = params["linears.0.weight"].shape[0]
    with torch.no_grad():
        _, post = _forward(params, n_layers, act, x.expand(m, -1, -1))
    dead = [dead_mask((h > 0).sum(dim=1)) for h in post]
    dormant = [
        torch.stack([dormant_mask(h[i].abs().mean(dim=0), tau) for i in range(m)]) for h in post
    ]
    return dead, dormant


def _run_arm(
    act_name: str,
    remedy: str | None,
    seeds: Sequence[int],
    tc: TrainConfig,
    data: Dataset,
    tasks: Sequence[tuple[Tensor, Tensor]],
    steps_per_task: int,
) -> dict[str, Any]:
    """Train one network per seed through the task sequence; per-task numbers."""
    act = get(act_name)
    assert act is not None
    n_layers = len(tc.widths) - 2
    models = [build_member(Member(seed=s, lr=LR, activation=act_name), tc) for s in seeds]
    params, _ = stack_module_state(models)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    m = len(seeds)
    n_train = data.x_train.shape[0]
    batch = tc.batch_size
    gens = [torch.Generator().manual_seed(50_021 + s) for s in seeds]
    g_init = torch.Generator().manual_seed(77_003 + 31 * len(act_name) + len(remedy or ""))
    utility = [torch.zeros(m, w) for w in tc.widths[1:-1]]
    age = [torch.zeros(m, w) for w in tc.widths[1:-1]]
    owed = [0.0] * n_layers
    out: dict[str, Any] = {
        "test_acc": [[] for _ in seeds],  # [seed][task]
        "dead": [[] for _ in seeds],  # [seed][task][layer] units
        "dormant": [[] for _ in seeds],
        "reinitialised": [0 for _ in seeds],
    }
    step = 0
    for perm, relabel in tasks:
        xtr, xte = data.x_train[:, perm], data.x_test[:, perm]
        ytr, yte = relabel[data.y_train], relabel[data.y_test]
        probe = xtr[:PROBE_ROWS]
        for _ in range(steps_per_task):
            rows = torch.stack(
                [torch.randint(0, n_train, (batch,), generator=g) for g in gens]
            )  # (m, B)
            logits, post = _forward(params, n_layers, act, xtr[rows])
            loss = (
                F.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]),
                    ytr[rows].reshape(-1),
                    reduction="none",
                )
                .view(m, batch)
                .mean(dim=1)
            )
            grads = torch.autograd.grad(loss.sum(), list(params.values()))
            with torch.no_grad():
                for p, g in zip(params.values(), grads, strict=True):
                    p.sub_(LR * g)
            step += 1
            if remedy == "redo" and step % REDO_EVERY == 0:
                _, dormant = _layer_masks(params, n_layers, act, probe[:REDO_BATCH], REDO_TAU)
                for layer, mask in enumerate(dormant):
                    n = reinit_units(params, layer, mask, g_init)
                    for i in range(m):
                        out["reinitialised"][i] += int(mask[i].sum()) if n else 0
            if remedy == "cbp":
                with torch.no_grad():
                    for layer, h in enumerate(post):
                        w_out = params[f"linears.{layer + 1}.weight"].abs().sum(dim=1)  # (m, H)
                        u = h.detach().abs().mean(dim=1) * w_out
                        utility[layer].mul_(CBP_DECAY).add_((1 - CBP_DECAY) * u)
                        age[layer] += 1
                if step % CBP_EVERY == 0:
                    for layer in range(n_layers):
                        mature = age[layer] > CBP_MATURITY  # (m, H)
                        owed[layer] += CBP_RATE * CBP_EVERY * float(mature.sum()) / m
                        k = int(owed[layer])
                        if k < 1:
                            continue
                        owed[layer] -= k
                        score = utility[layer].masked_fill(~mature, math.inf)
                        idx = score.topk(k, dim=1, largest=False).indices  # (m, k)
                        mask = torch.zeros_like(mature)
                        mask.scatter_(1, idx, True)
                        mask &= mature
                        reinit_units(params, layer, mask, g_init)
                        utility[layer][mask] = 0.0
                        age[layer][mask] = 0.0
                        for i in range(m):
                            out["reinitialised"][i] += int(mask[i].sum())
        with torch.no_grad():
            logits, _ = _forward(params, n_layers, act, xte.expand(m, -1, -1))
            acc = (logits.argmax(dim=-1) == yte).double().mean(dim=1)
        dead, dormant = _layer_masks(params, n_layers, act, probe, REDO_TAU)
        for i in range(m):
            out["test_acc"][i].append(rounded(float(acc[i])))
            out["dead"][i].append([int(d[i].sum()) for d in dead])
            out["dormant"][i].append([int(d[i].sum()) for d in dormant])
    return out


def sweep(cfg: LabConfig) -> Sweep:
    """Every arm through the same task sequence, on the same seeds."""
    data = load(cfg.dataset, 0).to(cfg.device)
    hidden = cfg.size(tiny=16, quick=64, full=100)
    tasks = cfg.size(tiny=3, quick=8, full=20)
    steps_per_task = cfg.size(tiny=20, quick=150, full=300)
    seeds = list(range(cfg.n_seeds))
    tc = TrainConfig(
        widths=(data.n_features, hidden, hidden, data.n_classes),
        steps=0,
        batch_size=cfg.size(tiny=50, quick=100, full=100),
    )
    g = torch.Generator().manual_seed(2024)
    same = torch.arange(data.n_features)
    sequence = [(same, torch.arange(data.n_classes))] + [
        (same, torch.randperm(data.n_classes, generator=g)) for _ in range(tasks - 1)
    ]
    arms = {
        name: _run_arm(act, remedy, seeds, tc, data, sequence, steps_per_task)
        for name, (act, remedy) in ARMS.items()
    }
    numbers: dict[str, Any] = {
        "setting": {
            "widths": list(tc.widths),
            "tasks": tasks,
            "steps_per_task": steps_per_task,
            "lr": LR,
            "batch_size": tc.batch_size,
            "seeds": seeds,
            "task": "label-shuffled MNIST-1D: task k permutes the 10 labels (task 1: none)",
            "relabelling": [[int(c) for c in r] for _, r in sequence],
            "redo": {"every": REDO_EVERY, "tau": REDO_TAU, "batch": REDO_BATCH},
            "cbp": {
                "decay": CBP_DECAY,
                "maturity": CBP_MATURITY,
                "rate": CBP_RATE,
                "every": CBP_EVERY,
            },
            "probe_rows": PROBE_ROWS,
        },
        "arms": arms,
    }
    return Sweep(numbers=numbers, n_seeds=len(seeds))


# --------------------------------------------------------------------------------------
# Judge
# --------------------------------------------------------------------------------------


def _late_acc(arm: dict[str, Any], idx: Sequence[int], tasks: int) -> list[float]:
    late = max(1, round(LATE_FRACTION * tasks))
    return [sum(arm["test_acc"][s][-late:]) / late for s in idx]


def judge(sw: Sweep, seeds: SeedIndex = None) -> Judgement:
    """C5: ReLU's dead fraction grows over the tasks. C16: ReDo keeps ReLU learning (late
    accuracy higher, fewer dead units) -- CBP and Leaky ReLU shown alongside."""
    num = sw.numbers
    st = num["setting"]
    idx = seed_axis(sw.n_seeds, seeds)
    tasks = int(st["tasks"])
    units = sum(int(w) for w in st["widths"][1:-1])
    arms = num["arms"]

    def dead_total(name: str, task: int) -> list[int]:
        return [sum(arms[name]["dead"][s][task]) for s in idx]

    # C5: accumulation for plain ReLU, last task minus first, paired by seed.
    grow = paired_proportion_diff_ci(dead_total("relu", -1), dead_total("relu", 0), units)
    c5 = decide(*grow, MIN_ACCUMULATION)

    # C16: ReDo vs plain ReLU: late accuracy, and dead units at the last task.
    acc = {name: _late_acc(arm, idx, tasks) for name, arm in arms.items()}
    redo_acc = compare_detail(
        acc["relu + ReDo"],
        acc["relu"],
        min_effect=MIN_ACC_EFFECT,
        higher_is_better=True,
        paired=True,
        resolution=1e-3,
    )
    fewer = paired_proportion_diff_ci(dead_total("relu", -1), dead_total("relu + ReDo", -1), units)
    redo_dead = decide(*fewer, MIN_ACCUMULATION)
    c16 = combine([redo_acc.verdict, redo_dead])
    others = {
        name: compare_detail(
            acc[name],
            acc["relu"],
            min_effect=MIN_ACC_EFFECT,
            higher_is_better=True,
            paired=True,
            resolution=1e-3,
        ).to_dict()
        for name in ("leaky_relu", "relu + CBP")
    }
    late = max(1, round(LATE_FRACTION * tasks))
    mean = {k: sum(v) / len(v) for k, v in acc.items()}
    first_acc = {k: sum(arms[k]["test_acc"][s][0] for s in idx) / len(idx) for k in arms}
    dead_last = {k: sum(dead_total(k, -1)) / (len(idx) * units) for k in arms}
    dead_first = {k: sum(dead_total(k, 0)) / (len(idx) * units) for k in arms}
    per_layer = {
        k: [
            [
                sum(arms[k]["dead"][s][t][layer] for s in idx) / (len(idx) * int(w))
                for layer, w in enumerate(st["widths"][1:-1])
            ]
            for t in range(tasks)
        ]
        for k in arms
    }
    g, glo, ghi = grow
    layers_txt = ", ".join(
        f"L{layer + 1} {100 * per_layer['relu'][0][layer]:.1f} -> "
        f"{100 * per_layer['relu'][-1][layer]:.1f} %"
        for layer in range(len(per_layer["relu"][0]))
    )
    c5_summary = (
        f"ReLU dead {100 * dead_first['relu']:.1f} % after task 1 -> "
        f"{100 * dead_last['relu']:.1f} % after task {tasks} ({layers_txt}; {100 * g:+.1f} points "
        f"[{100 * glo:+.1f}, {100 * ghi:+.1f}]); Leaky {100 * dead_last['leaky_relu']:.1f} %, "
        f"ReDo {100 * dead_last['relu + ReDo']:.1f} %, CBP {100 * dead_last['relu + CBP']:.1f} %"
    )
    c5_rule = (
        f"{tasks} label-shuffled MNIST-1D tasks in a row, plain SGD lr {st['lr']}: ReLU's dead "
        "fraction (never active on the task's training inputs, all hidden units) after the "
        "last task minus after the first, paired by seed (verdicts.paired_proportion_diff_ci)"
        f"; supported if 95 % CI lo > 0 and effect >= {MIN_ACCUMULATION}, not supported if "
        f"hi < {MIN_ACCUMULATION}, else mixed -> {c5}."
    )
    d, lo, hi = fewer
    c16_summary = (
        f"accuracy on the last {late} of {tasks} tasks: ReLU {mean['relu']:.3f}, ReDo "
        f"{mean['relu + ReDo']:.3f} ({redo_acc.effect:+.3f} [{redo_acc.lo:+.3f}, "
        f"{redo_acc.hi:+.3f}]), CBP {mean['relu + CBP']:.3f}, Leaky {mean['leaky_relu']:.3f} "
        f"(task 1: ReLU {first_acc['relu']:.3f}); dead at the end {100 * dead_last['relu']:.1f} "
        f"% -> {100 * dead_last['relu + ReDo']:.1f} % with ReDo"
    )
    c16_rule = (
        f"ReLU + ReDo (every {REDO_EVERY} steps, tau {REDO_TAU}) vs plain ReLU, paired by "
        f"seed: (1) mean test accuracy over the last {late} tasks higher by >= "
        f"{MIN_ACC_EFFECT} (compare(), paired t, resolution 1/1000) -> {redo_acc.verdict}; "
        f"(2) dead fraction after the last task lower by >= {MIN_ACCUMULATION} "
        f"({100 * d:+.1f} points [{100 * lo:+.1f}, {100 * hi:+.1f}]) -> {redo_dead}; "
        "combine(): supported if both are. CBP and Leaky ReLU are shown, not judged."
    )
    return Judgement(
        claims={
            "C5": ClaimVerdict(
                c5,
                c5_rule,
                c5_summary,
                {
                    "accumulation": {"effect": rounded(g), "lo": rounded(glo), "hi": rounded(ghi)},
                    "dead_first": {k: rounded(v) for k, v in dead_first.items()},
                    "dead_last": {k: rounded(v) for k, v in dead_last.items()},
                },
            ),
            "C16": ClaimVerdict(
                c16,
                c16_rule,
                c16_summary,
                {
                    "late_accuracy": redo_acc.to_dict(),
                    "fewer_dead": {
                        "effect": rounded(d),
                        "lo": rounded(lo),
                        "hi": rounded(hi),
                        "verdict": redo_dead,
                    },
                    "others_vs_relu": others,
                },
            ),
        },
        derived={
            "late_accuracy_mean": {k: rounded(v) for k, v in mean.items()},
            "dead_fraction_per_task_layer": {
                k: [[rounded(x) for x in row] for row in v] for k, v in per_layer.items()
            },
        },
    )


def figure(cfg: LabConfig, sw: Sweep, jd: Judgement) -> list[str]:
    """Accuracy on each new task and dead fraction after each task, per arm."""
    num = sw.numbers
    tasks = int(num["setting"]["tasks"])
    xs = list(range(1, tasks + 1))
    fig, axes = new_figure(ncols=2, width=5.0, height=3.6)
    for j, (name, arm) in enumerate(num["arms"].items()):
        n = len(arm["test_acc"])
        acc = [sum(arm["test_acc"][s][t] for s in range(n)) / n for t in range(tasks)]
        axes[0][0].plot(xs, acc, marker="o", ms=3, color=f"C{j}", label=name)
        per_layer = jd.derived["dead_fraction_per_task_layer"][name]
        for layer in range(len(per_layer[0])):
            axes[0][1].plot(
                xs,
                [row[layer] for row in per_layer],
                color=f"C{j}",
                ls=":" if layer == 0 else "-",
                label=f"{name}, L{layer + 1}",
            )
    axes[0][0].set_xlabel("task")
    axes[0][0].set_ylabel("test accuracy at the end of the task")
    axes[0][0].set_title(f"{num['setting']['steps_per_task']} SGD steps per task", fontsize=9)
    axes[0][1].set_xlabel("task")
    axes[0][1].set_ylabel("dead fraction after the task (dotted: layer 1)")
    for a in axes[0]:
        a.grid(alpha=0.3)
        a.legend(fontsize=6)
    fig.tight_layout()
    return [save_figure(fig, cfg, "e11_plasticity.png")]


EXPERIMENT = register(
    Experiment(
        id="E11",
        claims=("C5", "C16"),
        title="Loss of plasticity over a sequence of tasks",
        question=(
            "Trained on one task after another, do a ReLU network's dead units accumulate, "
            "and do Leaky ReLU, ReDo recycling or a continual-backprop-style replacement keep "
            "it able to learn new tasks?"
        ),
        method=(
            "MLP {setting[widths]}, {setting[tasks]} label-shuffled MNIST-1D tasks in a row "
            "({setting[steps_per_task]} SGD steps each, lr {setting[lr]}, batch "
            "{setting[batch_size]}, no reset between tasks), the same seeds {setting[seeds]} "
            "in every arm. Arms: ReLU; Leaky ReLU 0.01; ReLU + ReDo (every "
            "{setting[redo][every]} steps, ReDo score <= {setting[redo][tau]} on "
            "{setting[redo][batch]} rows of the current task; recycle's action: incoming "
            "re-drawn, bias 0, outgoing 0); ReLU + CBP-style replacement (utility "
            "|h| sum|w_out|, decay {setting[cbp][decay]}, maturity {setting[cbp][maturity]} "
            "steps, rate {setting[cbp][rate]} per step). After each task: test accuracy on "
            "it, dead and dormant units on {setting[probe_rows]} of its training rows."
        ),
        sweep=sweep,
        judge=judge,
        figure=figure,
        caveats=(
            "Far shorter than Dohare et al.'s sequences (hundreds of tasks) and a small MLP "
            "on MNIST-1D: the effects are those of the first tasks.",
            "Shuffling the labels makes every task equally hard; accuracy differences between "
            "tasks come from the network. The features of earlier tasks stay useful (only the "
            "labels move), so later tasks can be learned faster: plasticity loss has to "
            "overcome that transfer.",
            "The CBP arm follows the idea (utility, maturity, replacement rate) at a rate "
            "scaled to this short run, not Dohare et al.'s exact algorithm (no mean-"
            "correction of the outgoing contribution).",
            "Minibatches are drawn with replacement from the current task (own seeded "
            "generator per seed), not the lab trainer's epochs.",
        ),
    )
)
