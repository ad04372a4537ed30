"""E4 (C8, C16): the remedies, under the settings that kill ReLU units.

Two settings kill ReLU units: a high learning rate (E1), and one large negative update of
every hidden bias at a third of training (E2). C8 ("don't use ReLU: use a variant") is
scored on three separate numbers, never on one that a variant wins by construction:

* **divergence**: the share of seeds whose loss or weights became non-finite, per
  learning rate; each activation's **largest stable learning rate** is the largest rate of
  the grid at which no seed diverged;
* the **never-active** fraction of hidden units (never z > 0 on any training input,
  ``deadrelu.classify.dead_mask``; the same definition for every activation: a Leaky ReLU
  unit can be never active, and then learns only through its slope) at that activation's
  own largest stable rate;
* the **test accuracy** at that rate.

Each activation (ReLU, Leaky ReLU 0.01, PReLU with one slope per unit (He et al. 2015;
the main PReLU arm), ELU, SELU with LeCun init; PReLU with one shared slope per layer as a
second arm) is swept over the learning-rate grid of each setting, on the same seeds. A CNN
arm (conv-BN-act blocks on MNIST-1D signals) repeats the high-rate setting.

C16 (ReDo recycling) and the other ReLU remedies (a low rate, bias 0.01, RAI) are trained
at each setting's nominal rate: ``relu, ReDo`` recycles dormant units every ``redo_every``
steps (``deadrelu.remedies.recycle``, sequential trainer).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import nn

from deadrelu.classify import DORMANT_TAU, dormant_mask
from deadrelu.init import rai_init_
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
    interval,
    paired_ci,
    pick,
)
from deadrelu.lab.trainer import (
    MLP,
    Member,
    StepHook,
    TrainConfig,
    TrainResult,
    train_batched,
    train_sequential,
)
from deadrelu.lab.verdicts import (
    Verdict,
    combine,
    decide,
    paired_proportion_diff_ci,
    proportion_ci,
)
from deadrelu.remedies import recycle

#: The killing settings: nominal rate (the remedies' arms), bias kick, the per-activation
#: learning-rate grid (per preset) and the low-rate arm.
SETTINGS: dict[str, dict[str, Any]] = {
    "high lr": {
        "lr": 2.0,
        "kick": 0.0,
        "low_lr": 0.3,
        "grid": {
            "tiny": [0.3, 3.0],
            "quick": [0.3, 1.0, 2.0, 3.0],
            "full": [0.3, 0.6, 1.0, 2.0, 3.0],
        },
    },
    "negative update": {
        "lr": 0.3,
        "kick": -3.0,
        "low_lr": None,
        "grid": {"tiny": [0.3, 1.0], "quick": [0.1, 0.3, 1.0], "full": [0.1, 0.3, 0.6, 1.0, 2.0]},
    },
}
#: Activation arms of C8: label -> (activation, init, PReLU slopes). The first is ReLU.
ACT_ARMS: dict[str, tuple[str, str, str]] = {
    "relu": ("relu", "he", "per_unit"),
    "leaky_relu": ("leaky_relu", "he", "per_unit"),
    "prelu": ("prelu", "he", "per_unit"),
    "elu": ("elu", "he", "per_unit"),
    "selu": ("selu", "lecun", "per_unit"),
    "prelu (shared)": ("prelu", "he", "shared"),
}
#: The variants C8's verdict combines (PReLU: per unit, the main arm).
VARIANTS = ("leaky_relu", "prelu", "elu", "selu")
#: CNN arm: activations and the learning-rate grid per preset.
CNN_ACTS = ("relu", "leaky_relu", "prelu", "elu")
CNN_GRID = {"tiny": [1.0, 10.0], "quick": [1.0, 10.0], "full": [1.0, 3.0, 10.0]}
#: Minimum reduction of the never-active fraction (absolute) for "the remedy works".
MIN_EFFECT = 0.02
#: Accuracy a remedy may lose (absolute) and still be "as accurate" (non-inferiority).
ACC_MARGIN = 0.02


class _Plain(nn.Module):
    """The MLP's layers (shared, not copied) with a forward that returns only the logits,
    so that ``recycle`` sees each activation's only consumer: the next Linear."""

    def __init__(self, mlp: MLP) -> None:
        super().__init__()
        self.linears = mlp.linears
        self.acts = mlp.acts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(N, D)`` -> logits ``(N, C)``."""
        h = x
        for lin, act in zip(self.linears[:-1], self.acts, strict=True):
            h = act(lin(h))
        out: torch.Tensor = self.linears[-1](h)
        return out


def redo_hook(probe: torch.Tensor, every: int, last: int, tau: float) -> StepHook:
    """A ``train_sequential`` hook recycling dormant units every ``every`` steps up to step
    ``last``. Dormant: ReDo score of the mean |activation| over ``probe`` <= ``tau``."""

    def hook(step: int, model: MLP, opt: torch.optim.Optimizer) -> None:
        if step % every or step > last:
            return
        with torch.no_grad():
            _, _, post = model(probe)
        masks = {f"acts.{i}": dormant_mask(h.abs().mean(dim=0), tau) for i, h in enumerate(post)}
        g = torch.Generator(device=probe.device).manual_seed(step)
        recycle(_Plain(model), masks, optimizer=opt, generator=g)

    return hook


def _record(res: TrainResult, idx: list[int], slopes: bool = False) -> dict[str, Any]:
    """Per-seed numbers of members ``idx`` (one per seed): diverged, never-active fraction
    per layer (None when diverged), accuracy; learned slopes ``[seed][layer][unit]``."""
    div = res.diverged
    out: dict[str, Any] = {
        "diverged": [bool(div[j]) for j in idx],
        "never_active": [
            None if div[j] else [rounded(v) for v in res.dead_frac[j, -1].tolist()] for j in idx
        ],
        "acc": [None if div[j] else rounded(float(res.test_acc[j, -1])) for j in idx],
    }
    if slopes:
        n_layers = len(res.widths) - 2
        out["learned_slopes"] = [
            [[rounded(v, 4) for v in res.slopes(li)[j].tolist()] for li in range(n_layers)]
            for j in idx
        ]
    return out


def _setup(cfg: LabConfig) -> tuple[Dataset, TrainConfig, TrainConfig]:
    """The data (on the CPU), and the MLP's and the CNN's training configurations."""
    data = load(cfg.dataset, 0)  # an arm moves it to cfg.device
    hidden = cfg.size(tiny=16, quick=64, full=100)
    steps = cfg.size(tiny=30, quick=300, full=600)
    probe = cfg.size(tiny=500, quick=None, full=None)
    tc = TrainConfig(
        widths=(data.n_features, hidden, hidden, data.n_classes),
        steps=steps,
        batch_size=cfg.size(tiny=50, quick=100, full=100),
        eval_every=steps,
        probe_limit=probe,
    )
    channels = cfg.size(tiny=4, quick=8, full=8)
    cnn_steps = cfg.size(tiny=20, quick=200, full=400)
    cnn_tc = TrainConfig(
        widths=(data.n_features, channels, channels, data.n_classes),
        steps=cnn_steps,
        batch_size=tc.batch_size,
        eval_every=cnn_steps,
        probe_limit=probe,
        arch="cnn",
    )
    return data, tc, cnn_tc


def _act_arm(cfg: LabConfig, setting: str, label: str) -> dict[str, Any]:
    """One activation arm at every rate of the setting's grid (``setting == "cnn"``: the
    CNN's grid, no kick): ``{str(lr): record}``."""
    data, tc, cnn_tc = _setup(cfg)
    data = data.to(cfg.device)
    n = cfg.n_seeds
    act, init, slopes = ACT_ARMS[label]
    if setting == "cnn":
        tc, lrs, kick = cnn_tc, CNN_GRID[cfg.preset], 0.0
    else:
        lrs, kick = SETTINGS[setting]["grid"][cfg.preset], SETTINGS[setting]["kick"]
    members = [
        Member(
            seed=s,
            lr=lr,
            activation=act,
            init=init,
            slopes=slopes,
            bias_kick=kick,
            kick_step=tc.steps // 3,
        )
        for lr in lrs
        for s in range(n)
    ]
    res = train_batched(members, tc, data)
    return {
        str(lr): _record(res, list(range(i * n, (i + 1) * n)), slopes=act == "prelu")
        for i, lr in enumerate(lrs)
    }


def _remedies_arm(cfg: LabConfig, setting: str) -> dict[str, Any]:
    """The ReLU remedies at the setting's nominal rate but ReDo, in one batched call:
    baseline, low lr, bias 0.01, RAI: ``{remedy: record}``."""
    data, tc, _ = _setup(cfg)
    data = data.to(cfg.device)
    n = cfg.n_seeds
    st = SETTINGS[setting]
    lr = st["lr"]
    common: dict[str, Any] = {"bias_kick": st["kick"], "kick_step": tc.steps // 3}
    specs: list[tuple[str, dict[str, Any]]] = [("relu", {"lr": lr})]
    if st["low_lr"] is not None:
        specs.append(("relu, low lr", {"lr": st["low_lr"]}))
    specs.append(("relu, bias 0.01", {"lr": lr, "bias_init": 0.01}))
    specs.append(("relu, RAI", {"lr": lr, "init_fn": rai_init_}))
    members = [Member(seed=s, **common, **kw) for _, kw in specs for s in range(n)]
    res = train_batched(members, tc, data)
    return {
        name: _record(res, list(range(a * n, (a + 1) * n))) for a, (name, _) in enumerate(specs)
    }


def _redo_arm(cfg: LabConfig, setting: str) -> dict[str, Any]:
    """ReLU + ReDo at the setting's nominal rate (sequential trainer): its record."""
    data, tc, _ = _setup(cfg)
    data = data.to(cfg.device)
    st = SETTINGS[setting]
    every = cfg.size(tiny=10, quick=50, full=100)
    probe = data.x_train if tc.probe_limit is None else data.x_train[: tc.probe_limit]
    hook = redo_hook(probe, every, tc.steps - every, DORMANT_TAU)
    members = [
        Member(seed=s, lr=st["lr"], bias_kick=st["kick"], kick_step=tc.steps // 3)
        for s in range(cfg.n_seeds)
    ]
    return _record(train_sequential(members, tc, data, on_step=hook), list(range(cfg.n_seeds)))


def arms(cfg: LabConfig) -> list[Arm]:
    """The sweep's independent pieces, each one trainer call: per setting the remedies, ReDo
    and each activation arm over the rate grid; each CNN activation arm."""
    out: list[Arm] = []
    for name in SETTINGS:
        out.append(Arm(f"{name}: remedies", partial(_remedies_arm, cfg, name)))
        out.append(Arm(f"{name}: relu, ReDo", partial(_redo_arm, cfg, name)))
        out += [Arm(f"{name}: {a}", partial(_act_arm, cfg, name, a)) for a in ACT_ARMS]
    out += [Arm(f"cnn: {a}", partial(_act_arm, cfg, "cnn", a)) for a in CNN_ACTS]
    return out


def assemble(cfg: LabConfig, values: list[Any]) -> Sweep:
    """The sweep from the values of :func:`arms` (in its order)."""
    got = dict(zip((a.name for a in arms(cfg)), values, strict=True))
    data, tc, cnn_tc = _setup(cfg)
    settings: dict[str, Any] = {}
    for name, st in SETTINGS.items():
        settings[name] = {
            "lr": st["lr"],
            "kick": st["kick"],
            "kick_step": tc.steps // 3,
            "low_lr": st["low_lr"],
            "grid": st["grid"][cfg.preset],
            "activations": {a: got[f"{name}: {a}"] for a in ACT_ARMS},
            "remedies": {**got[f"{name}: remedies"], "relu, ReDo": got[f"{name}: relu, ReDo"]},
        }
    return Sweep(
        numbers={
            "widths": list(tc.widths),
            "steps": tc.steps,
            "n_seeds": cfg.n_seeds,
            "n_test": int(data.y_test.shape[0]),
            "redo_every": cfg.size(tiny=10, quick=50, full=100),
            "redo_tau": DORMANT_TAU,
            "settings": settings,
            "cnn": {
                "widths": list(cnn_tc.widths),
                "steps": cnn_tc.steps,
                "grid": CNN_GRID[cfg.preset],
                "activations": {a: got[f"cnn: {a}"] for a in CNN_ACTS},
            },
        },
        n_seeds=cfg.n_seeds,
    )


def sweep(cfg: LabConfig) -> Sweep:
    """Per setting: every activation over the rate grid, and the ReLU remedies; the CNN
    (every arm here, in order: :func:`arms`, :func:`assemble`)."""
    return sweep_from_arms(cfg, arms, assemble)


def _pooled(per_layer: list[Any] | None, units: list[int]) -> float | None:
    """Never-active fraction over all hidden units from per-layer fractions."""
    if per_layer is None:
        return None
    return sum(f * h for f, h in zip(per_layer, units, strict=True)) / sum(units)


def _stable_lr(rows: dict[str, Any], grid: list[float], seeds: SeedIndex) -> float | None:
    ok = [lr for lr in grid if not any(pick(rows[str(lr)]["diverged"], seeds))]
    return max(ok) if ok else None


def _compare_variant(
    rows_relu: dict[str, Any],
    rows_var: dict[str, Any],
    grid: list[float],
    units: list[int],
    n_test: int,
    seeds: SeedIndex,
) -> dict[str, Any]:
    """One variant against ReLU, each at its own largest stable rate (see :func:`judge`)."""
    lr_r, lr_v = _stable_lr(rows_relu, grid, seeds), _stable_lr(rows_var, grid, seeds)
    if lr_r is None or lr_v is None:
        return {
            "verdict": "n/a",
            "reason": "no stable learning rate",
            "lr_relu": lr_r,
            "lr_variant": lr_v,
        }
    total = sum(units)
    # at a stable rate no selected seed diverged: every entry is a number
    na_r = [_pooled(d, units) or 0.0 for d in pick(rows_relu[str(lr_r)]["never_active"], seeds)]
    na_v = [_pooled(d, units) or 0.0 for d in pick(rows_var[str(lr_v)]["never_active"], seeds)]
    eff, lo, hi = paired_proportion_diff_ci(
        [round(x * total) for x in na_r], [round(x * total) for x in na_v], total
    )
    dying = decide(eff, lo, hi, MIN_EFFECT)
    acc = paired_ci(
        pick(rows_var[str(lr_v)]["acc"], seeds),
        pick(rows_relu[str(lr_r)]["acc"], seeds),
        resolution=1.0 / n_test,
    )
    accuracy: Verdict = (
        "supported"
        if acc["lo"] is not None and acc["lo"] > -ACC_MARGIN
        else "not supported"
        if acc["hi"] is not None and acc["hi"] < -ACC_MARGIN
        else "mixed"
    )
    return {
        "lr_relu": lr_r,
        "lr_variant": lr_v,
        "never_active_reduction": interval(eff, lo, hi),
        "dying": dying,
        "acc_variant_minus_relu": acc,
        "accuracy": accuracy,
        "verdict": _both(dying, accuracy),
    }


def _both(a: Verdict, b: Verdict) -> Verdict:
    """The conjunction "dies less and is as accurate": not supported when either part is,
    supported when both are, else mixed."""
    if "not supported" in (a, b):
        return "not supported"
    return "supported" if a == b == "supported" else "mixed"


def _table(
    acts: dict[str, Any], grid: list[float], units: list[int], n_test: int, seeds: SeedIndex
) -> dict[str, Any]:
    """Per activation: divergence per rate (Wilson), largest stable rate, never-active per
    layer and accuracy at that rate."""
    out: dict[str, Any] = {}
    for label, rows in acts.items():
        div = {}
        for lr in grid:
            d = pick(rows[str(lr)]["diverged"], seeds)
            k, lo_hi = sum(d), proportion_ci(sum(d), len(d))
            div[str(lr)] = {"k": k, "n": len(d), **interval(*lo_hi)}
        lr_s = _stable_lr(rows, grid, seeds)
        entry: dict[str, Any] = {"diverged": div, "stable_lr": lr_s}
        if lr_s is not None:
            r = rows[str(lr_s)]
            na = pick(r["never_active"], seeds)
            entry["never_active"] = [
                frac_ci([x[li] if x else None for x in na], h) for li, h in enumerate(units)
            ]
            entry["never_active_all"] = frac_ci([_pooled(x, units) for x in na], sum(units))
            entry["acc"] = acc_ci(pick(r["acc"], seeds), n_test)
            if "learned_slopes" in r:
                entry["learned_slopes"] = _slope_summary(pick(r["learned_slopes"], seeds))
        out[label] = entry
    return out


def _slope_summary(slopes: list[list[list[float]]]) -> list[dict[str, Any]]:
    """Per layer, over seeds and units: mean, min, max and share of negative slopes."""
    out = []
    for li in range(len(slopes[0])):
        vals = [v for seed in slopes for v in seed[li] if v is not None]
        out.append(
            {
                "layer": li + 1,
                "mean": rounded(sum(vals) / len(vals)),
                "min": rounded(min(vals)),
                "max": rounded(max(vals)),
                "negative": rounded(sum(v < 0 for v in vals) / len(vals)),
            }
        )
    return out


def judge(sw: Sweep, seeds: SeedIndex) -> Judgement:
    """C8 and C16 on the seeds ``seeds`` (None: all).

    C8, in each MLP setting, for each variant of :data:`VARIANTS`: ReLU and the variant
    each at its own largest stable rate (largest of the grid with no selected seed
    diverged). Dying part: paired reduction of the never-active fraction (ReLU - variant,
    all hidden units; ``paired_proportion_diff_ci``), supported if CI lo > 0 and >=
    MIN_EFFECT, not supported if CI hi < MIN_EFFECT. Accuracy part (non-inferiority):
    variant - ReLU, paired t with the test set's resolution, supported if CI lo >
    -ACC_MARGIN, not supported if CI hi < -ACC_MARGIN. Each (variant, setting) = both
    parts (:func:`_both`); C8 = combine over the eight. The CNN arm (same rule) and
    PReLU with one shared slope are reported, not combined.

    C16, in each setting at the nominal rate: never-active fraction of ReLU minus ReLU +
    ReDo (paired), supported if CI lo > 0 and >= MIN_EFFECT, not supported if CI hi <
    MIN_EFFECT; C16 = combine over the settings.
    """
    nb = sw.numbers
    units = nb["widths"][1:-1]
    n_test = nb["n_test"]
    derived: dict[str, Any] = {"settings": {}, "cnn": {}}
    c8_parts: list[Verdict] = []
    c8_ev: dict[str, Any] = {}
    c16_parts: list[Verdict] = []
    c16_ev: dict[str, Any] = {}
    for sname, st in nb["settings"].items():
        acts = st["activations"]
        derived["settings"][sname] = {
            "activations": _table(acts, st["grid"], units, n_test, seeds),
            "remedies": {
                arm: {
                    "diverged": sum(pick(r["diverged"], seeds)),
                    "never_active": [
                        frac_ci([x[li] if x else None for x in pick(r["never_active"], seeds)], h)
                        for li, h in enumerate(units)
                    ],
                    "acc": acc_ci(pick(r["acc"], seeds), n_test),
                }
                for arm, r in st["remedies"].items()
            },
        }
        for v in (*VARIANTS, "prelu (shared)"):
            part = _compare_variant(acts["relu"], acts[v], st["grid"], units, n_test, seeds)
            c8_ev[f"{sname}: {v}"] = part
            if v in VARIANTS:
                c8_parts.append(part["verdict"])
        rem = st["remedies"]
        base = [_pooled(x, units) for x in pick(rem["relu"]["never_active"], seeds)]
        redo = [_pooled(x, units) for x in pick(rem["relu, ReDo"]["never_active"], seeds)]
        pairs = [(a, b) for a, b in zip(base, redo, strict=True) if a is not None and b is not None]
        if pairs:
            total = sum(units)
            eff, lo, hi = paired_proportion_diff_ci(
                [round(a * total) for a, _ in pairs],
                [round(b * total) for _, b in pairs],
                total,
            )
            v16 = decide(eff, lo, hi, MIN_EFFECT)
            c16_parts.append(v16)
            c16_ev[sname] = {
                "never_active_reduction": interval(eff, lo, hi),
                "acc_gain": paired_ci(
                    pick(rem["relu, ReDo"]["acc"], seeds),
                    pick(rem["relu"]["acc"], seeds),
                    resolution=1.0 / n_test,
                ),
                "verdict": v16,
            }
    cnn = nb["cnn"]
    cnn_units = cnn["widths"][1:-1]
    derived["cnn"] = _table(cnn["activations"], cnn["grid"], cnn_units, n_test, seeds)
    cnn_ev = {
        v: _compare_variant(
            cnn["activations"]["relu"],
            cnn["activations"][v],
            cnn["grid"],
            cnn_units,
            n_test,
            seeds,
        )
        for v in CNN_ACTS[1:]
    }
    c8_ev["cnn"] = cnn_ev

    def setting_text(sname: str) -> str:
        tab = derived["settings"][sname]["activations"]
        parts = []
        for a in ("relu", *VARIANTS):
            e = tab[a]
            if e["stable_lr"] is None:
                parts.append(f"{a}: diverged at every rate")
                continue
            parts.append(
                f"{a} @lr {e['stable_lr']}: never active {fmt_ci(e['never_active_all'])}, "
                f"acc {e['acc']['mean']:.3f}"
            )
        return f"{sname}: " + "; ".join(parts)

    works = [k for k, e in c8_ev.items() if k != "cnn" and e.get("verdict") == "supported"]
    cnn_works = [k for k, e in cnn_ev.items() if e.get("verdict") == "supported"]
    c8_summary = (
        " | ".join(setting_text(s) for s in nb["settings"])
        + " | variants that die less and are as accurate: "
        + (", ".join(works) or "none")
        + f"; CNN: {', '.join(cnn_works) or 'none'}"
    )
    if c16_ev:
        c16_summary = "; ".join(
            f"{s}: never-active reduction with ReDo "
            f"{fmt_ci(e['never_active_reduction'], signed=True)}"
            for s, e in c16_ev.items()
        )
    else:
        c16_summary = "no seed where both the ReLU and the ReDo run stayed finite"
    claims = {
        "C8": ClaimVerdict(
            verdict=combine(c8_parts),
            rule=(
                "Each activation at its own largest stable learning rate (largest of the grid "
                "with no diverged seed). Per MLP setting and variant (Leaky ReLU, PReLU per "
                "unit, ELU, SELU): dying = ReLU minus variant never-active fraction, paired "
                f"interval, supported if CI lo > 0 and >= {MIN_EFFECT}, not supported if CI "
                f"hi < {MIN_EFFECT}; accuracy = variant minus ReLU, paired t, supported if CI "
                f"lo > -{ACC_MARGIN}, not supported if CI hi < -{ACC_MARGIN}; each part = both "
                "(not supported if either is, supported if both are, else mixed); C8 = "
                "combine of the eight (all supported -> supported, all not -> not supported, "
                "else mixed). Divergence is reported "
                "per rate, never counted as dying. CNN and shared-slope PReLU: reported."
            ),
            summary=c8_summary,
            evidence=c8_ev,
        ),
        "C16": ClaimVerdict(
            verdict=combine(c16_parts),
            rule=(
                "Per setting at the nominal rate: never-active fraction of ReLU minus ReLU + "
                "ReDo, paired interval; supported if CI lo > 0 and >= "
                f"{MIN_EFFECT}, not supported if CI hi < {MIN_EFFECT}, else mixed; combined "
                "over the two settings."
            ),
            summary=c16_summary,
            evidence=c16_ev,
        ),
    }
    return Judgement(claims=claims, derived=derived)


def figure(cfg: LabConfig, sw: Sweep, jd: Judgement) -> list[str]:
    """Per setting: never-active fraction and accuracy per activation at its stable rate,
    and divergence per rate; the remedies at the nominal rate."""
    nb = sw.numbers
    panels = [*nb["settings"], "cnn"]
    fig, axes = new_figure(ncols=3, nrows=len(panels), width=4.6, height=3.3)
    for row, sname in enumerate(panels):
        tab = jd.derived["cnn"] if sname == "cnn" else jd.derived["settings"][sname]["activations"]
        grid = nb["cnn"]["grid"] if sname == "cnn" else nb["settings"][sname]["grid"]
        names = [a for a in ACT_ARMS if a in tab]  # relu first, whatever the JSON order
        for col, key in enumerate(("never_active_all", "acc")):
            ax = axes[row, col]
            for y, a in enumerate(names):
                c = tab[a].get(key)
                if not c or c["mean"] is None:
                    ax.text(0.01, y, "diverged at every rate", va="center", fontsize=7)
                    continue
                lo = c["lo"] if c["lo"] is not None else c["mean"]
                hi = c["hi"] if c["hi"] is not None else c["mean"]
                ax.errorbar(
                    [c["mean"]],
                    [y],
                    xerr=[[c["mean"] - lo], [hi - c["mean"]]],
                    fmt="o",
                    capsize=3,
                    color="tab:red" if a == "relu" else "tab:blue",
                )
            ax.set_yticks(
                range(len(names)), [f"{a} @{tab[a]['stable_lr']}" for a in names], fontsize=7
            )
            ax.invert_yaxis()
            ax.set_xlabel("never-active fraction" if col == 0 else "test accuracy", fontsize=8)
            ax.grid(alpha=0.3, axis="x")
        ax = axes[row, 2]
        for a in names:
            ys = [tab[a]["diverged"][str(lr)]["mean"] for lr in grid]
            ax.plot(grid, ys, marker="o", label=a)
        ax.set_xscale("log")
        ax.set_xticks(grid, [f"{g:g}" for g in grid])
        ax.minorticks_off()
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("learning rate", fontsize=8)
        ax.set_ylabel("share of seeds diverged", fontsize=8)
        ax.legend(fontsize=6)
        ax.grid(alpha=0.3)
        title = sname if sname != "cnn" else "CNN conv-BN-act, high lr"
        axes[row, 0].set_title(f"{title}: each activation at its largest stable lr", fontsize=9)
    fig.tight_layout()
    return [save_figure(fig, cfg, "e4_remedies")]


EXPERIMENT = register(
    Experiment(
        id="E4",
        claims=("C8", "C16"),
        title="Remedies where ReLU units die",
        question=(
            "Where ReLU units die (a high learning rate; one large negative bias update), do "
            "the variants (Leaky ReLU, PReLU, ELU, SELU) die less and stay as accurate, each "
            "at its own largest stable learning rate? Does ReDo recycling cure dying?"
        ),
        method=(
            "MLP {widths} on MNIST-1D, plain SGD, {steps} steps, {n_seeds} seeds shared by "
            "all arms, He init (SELU: LeCun normal). Each activation swept over each "
            "setting's learning-rate grid; divergence per rate, never-active fraction (never "
            "z > 0 on any training input, per layer) and accuracy at each activation's "
            "largest stable rate, scored separately. PReLU: one slope per unit (init 0.25, "
            "no weight decay) as the main arm, one shared slope per layer as a second arm. "
            "Settings: high lr; negative update (every hidden bias moved by -3 at a third of "
            "training). ReLU remedies at the nominal rate (2.0; 0.3): low lr, bias 0.01, RAI "
            "(deadrelu.init.rai_init_), ReDo every {redo_every} steps (tau {redo_tau}, "
            "sequential trainer). CNN arm: conv-BN-act blocks, high-lr grid."
        ),
        sweep=sweep,
        judge=judge,
        figure=figure,
        arms=arms,
        assemble=assemble,
        caveats=(
            "Comparing each activation at its own largest stable rate answers 'tuned to its "
            "most aggressive stable rate, does it die'; at a common rate the ranking can "
            "differ (see the divergence panel and the per-rate numbers).",
            "Never-active is the same definition for every activation: a never-active Leaky "
            "ReLU or ELU unit still gets gradient (slope, exponential tail), a ReLU one does "
            "not; the accuracy part says whether that matters.",
            "The 'negative update' setting moves every hidden bias directly (a controlled "
            "stand-in for one large gradient step).",
            "ReDo is applied every few steps up to one interval before the end; RAI only "
            "changes the initialisation (designed against networks born dead, E10).",
            "One small MLP and one small CNN, plain SGD: other settings may rank the "
            "remedies differently.",
        ),
    )
)
