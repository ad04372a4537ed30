"""E4 (C8, C16): the remedies, under the setting that kills ReLU units.

Two settings kill ReLU units: E1's high learning rate (plain SGD at 2.0), and E2's one
large negative update of every hidden bias under a moderate rate (0.3). In each, every arm
trains the same seeds (same minibatch order; the same initial weights wherever the
initialiser is the same):

* ``relu``: the baseline; ``relu, low lr`` (high-lr setting only): lr 0.3 (C6);
  ``relu, bias 0.01`` (C7); ``relu, RAI``: randomized asymmetric initialization
  (``deadrelu.remedies.rai_init_``, Lu et al.; C15);
* ``leaky_relu``, ``prelu``, ``elu``, ``selu`` (LeCun normal init): "don't use ReLU" (C8);
* ``relu, ReDo``: recycling (``deadrelu.remedies.recycle``, Sokar et al. 2023; C16): every
  ``redo_every`` steps the dormant units (ReDo score <= tau on the training set,
  ``deadrelu.classify.dormant_mask``) get fresh incoming weights and zero outgoing
  weights. This arm runs on the sequential trainer (it edits one model at a time).

Measured after training: the **stuck** fraction of hidden units (zero gradient on every
training input, i.e. dead for ReLU, or saturated: ``deadrelu.classify``), test accuracy,
and diverged runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from deadrelu.classify import DORMANT_TAU, dormant_mask
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
from deadrelu.lab.data import Dataset, load
from deadrelu.lab.trainer import (
    MLP,
    Member,
    StepHook,
    TrainConfig,
    TrainResult,
    train_batched,
    train_sequential,
)
from deadrelu.lab.verdicts import combine, compare_detail

#: The two settings that kill ReLU units: E1's high learning rate (with E1's safe rate as
#: the low-rate arm), and E2's one large negative update of every hidden bias at a third
#: of training under a moderate rate.
SETTINGS: dict[str, dict[str, Any]] = {
    "high lr": {"lr": 2.0, "kick": 0.0, "low_lr": 0.3},
    "negative update": {"lr": 0.3, "kick": -3.0, "low_lr": None},
}
#: Minimum reduction of the stuck fraction (absolute) for "the remedy works".
MIN_EFFECT = 0.02
#: The variants of C8.
VARIANTS = ("leaky_relu", "prelu", "elu", "selu")


def _remedies() -> tuple[Callable[..., Any] | None, Callable[..., Any] | None]:
    """``(rai_init_, recycle)`` from ``deadrelu.remedies``, None where missing."""
    try:
        from deadrelu import remedies
    except ImportError:  # pragma: no cover - only while the module is being written
        return None, None
    return getattr(remedies, "rai_init_", None), getattr(remedies, "recycle", None)


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


def redo_hook(
    recycle: Callable[..., Any], probe: torch.Tensor, every: int, last: int, tau: float
) -> StepHook:
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


def _stuck(res: TrainResult) -> list[float]:
    """Per member: stuck fraction (frozen + saturated, pooled); 1.0 when diverged."""
    frozen, sat, div = res.pooled("frozen_frac"), res.pooled("saturated_frac"), res.diverged
    return [1.0 if bool(d) else float(f + s) for f, s, d in zip(frozen, sat, div, strict=True)]


def _arm(res: TrainResult, idx: list[int]) -> dict[str, Any]:
    stuck = _stuck(res)
    dead = res.pooled("dead_frac").tolist()
    return {
        "stuck": [rounded(stuck[i]) for i in idx],
        "dead": [rounded(float(dead[i])) if not bool(res.diverged[i]) else None for i in idx],
        "acc": [rounded(float(res.test_acc[i, -1])) for i in idx],
        "diverged": int(res.diverged[idx].sum()),
    }


def _setting_arms(
    cfg: LabConfig, data: Dataset, tc: TrainConfig, lr: float, kick: float, low_lr: float | None
) -> tuple[dict[str, Any], list[str]]:
    """Every arm at learning rate ``lr`` with a hidden-bias update ``kick`` at a third of
    training (0: none); ``low_lr`` adds the low-learning-rate arm."""
    seeds = list(range(cfg.n_seeds))
    n = len(seeds)
    kick_step = tc.steps // 3
    common: dict[str, Any] = {"bias_kick": kick, "kick_step": kick_step}
    rai_init_, recycle = _remedies()
    arms: dict[str, Any] = {}
    missing: list[str] = []

    relu_arms: list[tuple[str, dict[str, Any]]] = [("relu", {"lr": lr})]
    if low_lr is not None:
        relu_arms.append(("relu, low lr", {"lr": low_lr}))
    relu_arms.append(("relu, bias 0.01", {"lr": lr, "bias_init": 0.01}))
    if rai_init_ is not None:
        relu_arms.append(("relu, RAI", {"lr": lr, "init_fn": rai_init_}))
    else:
        missing.append("relu, RAI")
    members = [
        Member(seed=s, activation="relu", **common, **kw) for _, kw in relu_arms for s in seeds
    ]
    res = train_batched(members, tc, data)
    for a, (name, _) in enumerate(relu_arms):
        arms[name] = _arm(res, list(range(a * n, (a + 1) * n)))

    for act in VARIANTS:
        init = "lecun" if act == "selu" else "he"
        res = train_batched(
            [Member(seed=s, lr=lr, activation=act, init=init, **common) for s in seeds], tc, data
        )
        arms[act] = _arm(res, list(range(n)))
        if act == "prelu":
            arms[act]["learned_slopes"] = [
                [rounded(float(v)) for v in res.state[f"acts.{k}.weight"][i].flatten()]
                for i in range(n)
                for k in range(len(tc.widths) - 2)
            ]

    redo_every = cfg.size(tiny=10, quick=50, full=100)
    if recycle is not None:
        probe = data.x_train if tc.probe_limit is None else data.x_train[: tc.probe_limit]
        hook = redo_hook(recycle, probe, redo_every, tc.steps - redo_every, DORMANT_TAU)
        res = train_sequential(
            [Member(seed=s, lr=lr, activation="relu", **common) for s in seeds],
            tc,
            data,
            on_step=hook,
        )
        arms["relu, ReDo"] = _arm(res, list(range(n)))
    else:
        missing.append("relu, ReDo")
    return arms, missing


def sweep(cfg: LabConfig) -> dict[str, Any]:
    """Train every arm in every setting; return per-seed numbers by setting and arm."""
    data: Dataset = load(cfg.dataset, 0).to(cfg.device)
    hidden = cfg.size(tiny=16, quick=64, full=100)
    steps = cfg.size(tiny=30, quick=300, full=1500)
    tc = TrainConfig(
        widths=(data.n_features, hidden, hidden, data.n_classes),
        steps=steps,
        batch_size=cfg.size(tiny=50, quick=100, full=100),
        eval_every=steps,
        probe_limit=cfg.size(tiny=500, quick=None, full=None),
    )
    settings: dict[str, Any] = {}
    missing: set[str] = set()
    for name, st in SETTINGS.items():
        arms, miss = _setting_arms(cfg, data, tc, st["lr"], st["kick"], st["low_lr"])
        settings[name] = {**st, "kick_step": steps // 3, "arms": arms}
        missing.update(miss)
    return {
        "widths": tc.widths,
        "steps": steps,
        "seeds": cfg.n_seeds,
        "redo_every": cfg.size(tiny=10, quick=50, full=100),
        "redo_tau": DORMANT_TAU,
        "settings": settings,
        "missing_arms": sorted(missing),
    }


def verdicts(numbers: dict[str, Any]) -> tuple[dict[str, Verdict], dict[str, Any]]:
    """Per setting: C8, for each variant, ``verdicts.compare`` (paired over seeds) of the
    stuck fraction, ReLU minus variant (diverged runs count as stuck = 1), min effect
    MIN_EFFECT; C16, the same comparison for ReLU + ReDo. Each claim combines its parts over
    variants and settings (all supported -> supported, all not -> not supported, else
    mixed)."""
    detail: dict[str, Any] = {}
    c8: list[Verdict] = []
    c16: list[Verdict] = []
    for sname, st in numbers["settings"].items():
        arms = st["arms"]
        base = arms["relu"]["stuck"]
        for v in VARIANTS:
            c = compare_detail(
                base, arms[v]["stuck"], min_effect=MIN_EFFECT, higher_is_better=True, paired=True
            )
            detail[f"{sname}: C8 {v}"] = c.to_dict()
            c8.append(c.verdict)
        if "relu, ReDo" in arms:
            c = compare_detail(
                base,
                arms["relu, ReDo"]["stuck"],
                min_effect=MIN_EFFECT,
                higher_is_better=True,
                paired=True,
            )
            acc = compare_detail(
                arms["relu, ReDo"]["acc"],
                arms["relu"]["acc"],
                min_effect=0.0,
                higher_is_better=True,
                paired=True,
            )
            detail[f"{sname}: C16"] = c.to_dict()
            detail[f"{sname}: C16 accuracy gain"] = acc.to_dict()
            c16.append(c.verdict)
    if not c16:
        detail["C16"] = {"reason": "deadrelu.remedies.recycle is not available"}
    return {"C8": combine(c8), "C16": combine(c16)}, detail


def _figure(cfg: LabConfig, numbers: dict[str, Any]) -> str:
    settings = numbers["settings"]
    fig, axes = new_figure(ncols=2, nrows=len(settings), width=5.2, height=3.6)
    for row, (sname, st) in enumerate(settings.items()):
        names = list(st["arms"])
        for col, (key, label) in enumerate(
            (("stuck", "stuck fraction (dead / saturated; diverged = 1)"), ("acc", "test accuracy"))
        ):
            ax = axes[row, col]
            cis = [ci_dict(st["arms"][a][key]) for a in names]
            means = [c["mean"] if c["mean"] is not None else 0.0 for c in cis]
            lo = [
                m - c["lo"] if c["lo"] is not None else 0.0 for m, c in zip(means, cis, strict=True)
            ]
            hi = [
                c["hi"] - m if c["hi"] is not None else 0.0 for m, c in zip(means, cis, strict=True)
            ]
            colors = ["tab:red" if a == "relu" else "tab:blue" for a in names]
            ax.barh(range(len(names)), means, xerr=[lo, hi], capsize=3, color=colors)
            ax.set_yticks(range(len(names)), names, fontsize=8)
            ax.invert_yaxis()
            ax.set_xlabel(label)
            ax.grid(alpha=0.3, axis="x")
        kick = f", bias update {st['kick']} at step {st['kick_step']}" if st["kick"] else ""
        axes[row, 0].set_title(f"{sname}: SGD lr {st['lr']}{kick}", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, cfg, "e4_remedies")


@experiment("E4", ("C8", "C16"), "Remedies where ReLU units die")
def run(cfg: LabConfig) -> ExperimentResult:
    """Train every remedy under both killing settings; apply the C8/C16 rules."""
    numbers = sweep(cfg)
    claim_verdicts, detail = verdicts(numbers)
    numbers["claim_verdicts"] = claim_verdicts
    numbers["verdict_detail"] = detail

    def pct(arms: dict[str, Any], arm: str) -> str:
        m = ci_dict(arms[arm]["stuck"])["mean"]
        return f"{arm} {100 * m:.0f} %" if m is not None else f"{arm} n/a"

    def stuck_of(arms: dict[str, Any], names: tuple[str, ...]) -> str:
        return ", ".join(pct(arms, a) for a in names if a in arms)

    c8_parts, c16_parts = [], []
    for sname, st in numbers["settings"].items():
        c8_parts.append(f"{sname}: " + stuck_of(st["arms"], ("relu", *VARIANTS)))
        c16_parts.append(f"{sname}: " + stuck_of(st["arms"], ("relu", "relu, ReDo")))
    numbers["claim_summaries"] = {
        "C8": "stuck units (diverged = 100 %) " + "; ".join(c8_parts),
        "C16": "stuck units " + "; ".join(c16_parts),
    }
    summary = (
        "stuck units (diverged = 100 %) "
        + "; ".join(
            f"{sname}: " + ", ".join(pct(st["arms"], a) for a in st["arms"])
            for sname, st in numbers["settings"].items()
        )
        + f" (C8 {claim_verdicts['C8']}, C16 {claim_verdicts['C16']})"
    )
    caveats = [
        "Diverged runs count as fully stuck in the verdict: at a high learning rate a "
        "variant can avoid dying and still fail by diverging (see 'diverged' per arm).",
        "Leaky ReLU and PReLU cannot be stuck by construction (their gradient is never 0); "
        "their comparison is about accuracy and divergence as much as about dying.",
        "ReDo is applied every few steps up to one interval before the end, so the final "
        "count is not simply the last recycling; RAI only changes the initialisation, "
        "it is designed against networks born dead (E10), not against a high learning rate "
        "or a bias update.",
        "The 'negative update' setting moves every hidden bias directly (a controlled "
        "stand-in for one large gradient step).",
        "PReLU has one learned slope per layer (num_parameters=1, initial 0.25): when most "
        "units of a layer sit on the negative side, that slope receives the summed gradient "
        "of all of them, and plain SGD can diverge; per-channel slopes or a smaller rate "
        "for the slope may behave differently.",
        "One small MLP, plain SGD: other settings may rank the remedies differently.",
    ]
    if numbers["missing_arms"]:
        caveats.append(
            "Arms left out because deadrelu.remedies did not provide them: "
            + ", ".join(numbers["missing_arms"])
        )
    settings_text = "; ".join(
        f"{sname}: lr {st['lr']}"
        + (
            f", every hidden bias moved by {st['kick']} at step {st['kick_step']}"
            if st["kick"]
            else ""
        )
        + (f", low-lr arm {st['low_lr']}" if st["low_lr"] is not None else "")
        for sname, st in numbers["settings"].items()
    )
    return ExperimentResult(
        id="E4",
        claims=("C8", "C16"),
        title="Remedies where ReLU units die",
        question=(
            "Where ReLU units die (a high learning rate; one large negative bias update), "
            "which remedies keep units alive and accurate: a low rate, bias 0.01, Leaky ReLU, "
            "PReLU, ELU, SELU, RAI, ReDo?"
        ),
        method=(
            f"MLP {numbers['widths']} on {cfg.dataset}, plain SGD, {numbers['steps']} steps, "
            f"{numbers['seeds']} seeds shared by all arms, He init (SELU: LeCun normal). "
            f"Settings: {settings_text}. ReDo: every {numbers['redo_every']} steps, units "
            f"with ReDo score <= {numbers['redo_tau']} on the training set are recycled "
            "(deadrelu.remedies.recycle), sequential trainer. Stuck = zero gradient on every "
            "training input or saturated (deadrelu.classify)."
        ),
        numbers=numbers,
        verdict=combine(claim_verdicts.values()),
        verdict_rule=(
            "In each setting, for each of Leaky ReLU, PReLU, ELU, SELU: paired difference of "
            "the stuck fraction (ReLU minus variant; diverged = 1), 95 % t CI; supported if "
            f"CI lo > 0 and effect >= {MIN_EFFECT}, not supported if CI hi < {MIN_EFFECT}, "
            "else mixed; C8 combines the eight parts (all supported -> supported, all not -> "
            "not supported, else mixed). C16: the same rule for ReLU + ReDo in both "
            "settings. Overall: combine(C8, C16)."
        ),
        summary=summary,
        figures=[_figure(cfg, numbers)],
        caveats=caveats,
    )
