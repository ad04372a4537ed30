"""Advice: what to do about the dead units measured, each line with the number behind it.

:func:`suggest` reads a :class:`~deadrelu.report.Report`, a
:class:`~deadrelu.monitor.Monitor` or an :class:`~deadrelu.explain.Explanation` and
returns :class:`Advice` lines. Each is a ``str`` (print it) that also carries, when it is
an operation on the model, the remedy to run: ``advice.code`` is the line to type and
``advice.apply(model, optimizer=...)`` runs it, on exactly the units the advice is about.

**Never harm a trained model.** Whole-model initialisers (``init_bias_`` on every unit,
``rai_init_``, ``swap_activations``) overwrite or change what training learned: they are
advised for *now* only before training, and otherwise as advice for the next run (no
``apply``). After training, the cure advised is :func:`deadrelu.remedies.recycle` on the
dead units only, which keeps the outputs exactly (dead units contribute 0 before and
after), so it can neither lower accuracy nor kill other units. Whether the model is
trained: ``trained=`` when given; else a Monitor's step count (``> 0``: trained); else
(a Report or an Explanation) assumed trained, the safe side.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import nn

from deadrelu.batches import first_batch
from deadrelu.explain import Explanation, explain
from deadrelu.init import rai_init_
from deadrelu.remedies import (
    RemedySummary,
    init_bias_,
    recycle,
    swap_activations,
)

__all__ = ["LARGE_UPDATE", "SWITCH_FRACTION", "Advice", "suggest"]

#: A relative update ||delta w|| / ||w|| above this in one step is "large" (the usual rule
#: of thumb for a healthy step is about 1e-3).
LARGE_UPDATE = 1e-2
#: A site with a larger dead fraction than this gets the "switch activation" advice.
SWITCH_FRACTION = 0.1

When = Literal["info", "now", "next run"]


class Advice(str):
    """One line of advice: a ``str``, plus the remedy it names, if any.

    Attributes:
        when: ``"now"`` (an operation on the model as it is: :meth:`apply` runs it),
            ``"next run"`` (change the training setup or initialise before training the
            next model: nothing to apply now) or ``"info"`` (a finding).
        remedy: ``"recycle"``, ``"init_bias_"``, ``"rai_init_"``, ``"swap_activations"``
            or None.
        units: ``{site: unit indices}`` the remedy acts on (``recycle``: the dead units).
        options: keyword arguments of the remedy besides the model and the units.
        code: the call to type, e.g. ``"recycle(model, report, optimizer)"`` (None
            without a remedy).
    """

    when: When
    remedy: str | None
    units: dict[str, list[int]]
    options: dict[str, Any]
    code: str | None

    def __new__(
        cls,
        text: str,
        *,
        when: When = "info",
        remedy: str | None = None,
        units: dict[str, list[int]] | None = None,
        options: dict[str, Any] | None = None,
        code: str | None = None,
    ) -> Advice:
        self = super().__new__(cls, text)
        self.when = when
        self.remedy = remedy
        self.units = dict(units or {})
        self.options = dict(options or {})
        self.code = code
        return self

    def apply(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        data: Any = None,
        example_inputs: Any = None,
    ) -> RemedySummary | None:
        """Run the advised remedy on ``model`` (in place); None when there is nothing to
        run now (``when`` is not ``"now"``).

        ``optimizer`` is reset at the recycled entries; ``data`` / ``example_inputs`` are
        passed on (needed for a model ``torch.fx`` cannot trace).
        """
        if self.when != "now" or self.remedy is None:
            return None
        if self.remedy == "recycle":
            return recycle(model, self.units, optimizer, data=data, example_inputs=example_inputs)
        if data is not None and example_inputs is None:
            example_inputs = first_batch(data)
        if self.remedy == "init_bias_":
            return init_bias_(model, example_inputs=example_inputs, **self.options)
        if self.remedy == "rai_init_":
            return rai_init_(model, example_inputs=example_inputs, **self.options)
        if self.remedy == "swap_activations":
            return swap_activations(model, example_inputs=example_inputs, **self.options)
        raise ValueError(f"unknown remedy {self.remedy!r}")


def _trained(source: Any, trained: bool | None) -> bool:
    if trained is not None:
        return bool(trained)
    steps = getattr(source, "step_count", None)
    if isinstance(steps, int):
        return steps > 0
    return True


def suggest(
    source: Any,
    *,
    model: nn.Module | None = None,
    data: Any = None,
    trained: bool | None = None,
) -> list[Advice]:
    """Plain-language advice from what was measured, each line with the number behind it.

    Args:
        source: a :class:`deadrelu.explain.Explanation` (best: causes and update sizes),
            a ``Report`` or a ``Monitor``.
        model: with a Report or Monitor, explain it first (causes) on this model.
        data: passed to :func:`deadrelu.explain.explain` (re-scan for z_max).
        trained: whether the model has been trained (see the module docstring); None: a
            Monitor's ``step_count > 0``, else True.

    Returns:
        :class:`Advice` lines (``str``), e.g. ``"12 units died right after updates of
        median 80 % of their weights (lr 0.5): lower the learning rate by about 80x"``.
    """
    is_trained = _trained(source, trained)
    out: list[Advice] = []
    expl: Explanation | None = source if isinstance(source, Explanation) else None
    report = None
    if expl is None:
        report = source
        if not hasattr(report, "stats") and callable(getattr(report, "report", None)):
            report = report.report()
        if model is not None:
            expl = explain(model, source, data)
    dead: dict[str, list[int]] = {}
    if expl is not None:
        for u in expl.units:
            if u.cause != "active_in_eval":
                dead.setdefault(u.site, []).append(u.unit)
    elif report is not None:
        dead = {s: report.dead_units(s) for s in report.stats}
    if report is not None:
        total = sum(int(st.units) for st in report.stats.values())
        n_dead = sum(len(v) for v in dead.values())
        if n_dead == 0:
            return [Advice(f"no dead units among {total}: nothing to cure")]
        out.append(Advice(f"{n_dead} of {total} units are dead ({n_dead / max(total, 1):.1%})"))
        for s, idx in dead.items():
            units = int(report.stats[s].units)
            k = len(idx)
            if units and k / units > SWITCH_FRACTION:
                text = (
                    f"{s}: {k} of {units} units dead ({k / units:.0%} > "
                    f"{SWITCH_FRACTION:.0%}): a ReLU variant keeps a gradient where z < 0"
                )
                code = f"swap_activations(model, 'leaky_relu(0.01)', where={s!r})"
                if is_trained:
                    out.append(Advice(f"{text}; for the next run: {code}", when="next run"))
                else:
                    out.append(
                        Advice(
                            f"{text}: {code} (before training)",
                            when="now",
                            remedy="swap_activations",
                            options={"to": "leaky_relu(0.01)", "where": s},
                            code=code,
                        )
                    )
    if expl is None:
        if report is not None and is_trained:
            out.append(_recycle_advice(dead, ""))
        elif not out:
            out.append(Advice("pass model= (or an Explanation) for causes and cures"))
        return out
    if report is None:
        out.append(Advice(f"{len(expl.units)} dead unit(s) explained"))
    big = [u for u in expl.units if u.update_ratio is not None and u.update_ratio > LARGE_UPDATE]
    if big:
        ratios = sorted(u.update_ratio for u in big if u.update_ratio is not None)
        med = ratios[len(ratios) // 2]
        lrs = sorted({u.lr for u in big if u.lr is not None})
        factor = max(2, math.ceil(med / LARGE_UPDATE))
        out.append(
            Advice(
                f"{len(big)} unit(s) died right after updates of median {med:.0%} of their "
                f"weights (lr {', '.join(f'{lr:.3g}' for lr in lrs)}); steps above "
                f"{LARGE_UPDATE:.0%} are large: lower the learning rate by about {factor}x "
                "(or warm it up / clip gradients)",
                when="next run",
            )
        )
    in_eval = [u for u in expl.units if u.cause == "active_in_eval"]
    if in_eval:
        out.append(
            Advice(
                f"{len(in_eval)} unit(s) counted dead during training are active in eval "
                "mode (BatchNorm running statistics): not dead as the model is used"
            )
        )
    by_bias = [u for u in expl.units if u.cause == "bias"]
    by_w = [u for u in expl.units if u.cause in ("weights", "both")]
    born = [u for u in expl.units if u.died_at == 0]
    causes = []
    if by_bias:
        b = sorted(u.bias for u in by_bias if u.bias is not None)
        causes.append(
            f"{len(by_bias)} held below 0 by their bias alone (median b = {b[len(b) // 2]:.3g};"
            " the weights would activate them)"
        )
    if by_w:
        causes.append(f"{len(by_w)} with w.x <= 0 on all the data (cause weights or both)")
    if dead and is_trained:
        out.append(_recycle_advice(dead, "; ".join(causes)))
    elif dead:
        if by_bias:
            out.append(
                Advice(
                    f"{causes[0]}: init_bias_(model, 0.01) before training",
                    when="now",
                    remedy="init_bias_",
                    options={"value": 0.01},
                    code="init_bias_(model, 0.01)",
                )
            )
        if by_w or born:
            out.append(
                Advice(
                    f"{len(by_w) + len(born)} unit(s) dead from the weights or from the start: "
                    "rai_init_(model) before training (randomized asymmetric initialization)",
                    when="now",
                    remedy="rai_init_",
                    code="rai_init_(model)",
                )
            )
    if born and is_trained:
        out.append(
            Advice(
                f"{len(born)} unit(s) were dead from the first step: for the next run, "
                "rai_init_(model) or init_bias_(model, 0.01) before training",
                when="next run",
            )
        )
    revived = sum(len(v) for v in expl.revived.values())
    if revived:
        out.append(
            Advice(
                f"{revived} unit(s) died and later came back: dead units can revive when the "
                "layers before them change"
            )
        )
    return out


def _recycle_advice(dead: dict[str, list[int]], causes: str) -> Advice:
    n = sum(len(v) for v in dead.values())
    why = f" ({causes})" if causes else ""
    return Advice(
        f"{n} dead unit(s){why}: recycle(model, report, optimizer) re-initialises them and "
        "zeroes their outgoing weights, so the outputs stay exactly the same",
        when="now",
        remedy="recycle",
        units={s: list(v) for s, v in dead.items() if v},
        code="recycle(model, report, optimizer)",
    )
