"""Why each unit died: margin, cause (bias / weights / both), the step and update that did it.

:func:`explain` takes a model and what was measured on it (a :class:`~deadrelu.report.Report`
from :func:`deadrelu.scan.scan`, or a :class:`~deadrelu.monitor.Monitor`) and returns an
:class:`Explanation` with one :class:`DeadUnit` per dead unit:

**Margin.** ``z_max``, the largest pre-activation seen over the data, and ``margin =
-z_max``: how far below 0 the unit stays (z_max <= 0 for a dead unit).

**Cause.** A unit's pre-activation is ``z = w . x + b`` with ``b`` its *effective* bias:
the producer's bias (Linear / Conv), or through an eval-mode BatchNorm between producer
and activation ``b = gamma (b_conv - mu) / sqrt(var + eps) + beta`` (and ``w`` scaled
likewise). Because ``b`` is the same at every position, the largest value of the weight
part over the data is exactly ``m = max_x w . x = z_max - b``. For a dead unit
(``m + b <= 0``) the cause is:

* ``"bias"``: ``b < 0`` and ``m > 0``: the weights alone would activate the unit on some
  data; the negative bias alone keeps z <= 0 (setting b = 0 revives it);
* ``"weights"``: ``b >= 0`` (so ``m <= -b <= 0``): w . x <= 0 on all data even with b = 0,
  and the bias does not push it down;
* ``"both"``: ``b < 0`` and ``m <= 0``: either alone keeps the unit dead;
* ``"unknown"``: no producer was found (the site is fed by a sum, an input, ...), or no
  position was seen; ``DeadUnit.note`` says which.
* ``"active_in_eval"``: not dead at all as the model is used: with ``data=`` every unit
  is re-checked in a scan in eval mode (BatchNorm on its running statistics), and a unit
  with ``z_max > 0`` there gets this label and a note instead of a cause of death (a
  Monitor counts units in training mode, where BatchNorm uses batch statistics).

The three causes of death partition the dead units with a producer. The model must not
have changed since the measurement (explain reads its current parameters); the effective
bias uses a BatchNorm's running statistics (eval mode), as the re-scan does.

**Real models.** Layers are linked by :func:`deadrelu.remedies.links_of`: with ``data=``
by one probe forward on its first batch (any model, Hugging Face ones with dict batches
``{"input_ids": ..., "attention_mask": ...}`` included), else by tracing with
``torch.fx``.

**When and how it died** (with a Monitor and an :class:`UpdateTracker`). The Monitor gives,
per dead unit, the first sampled step at which it was inactive after its last active one
(``died_at``); the tracker records, for every optimizer step, the learning rate and each
unit's relative update ``||delta theta_i|| / ||theta_i||`` (``theta_i``: its incoming
weights and bias, and its BatchNorm scale and shift). The update blamed is the largest in
the steps that can have killed the unit, ``[last active step, died_at - 1]`` (one step
when the Monitor counts every step), so a user reads "died at step 1200 after an update
80 % the size of its weights, lr 0.5". Units that died and later came back are listed in
``Explanation.revived``.

**Certificate.** With ``box=`` the explanation also says, per dead unit, whether it is
*certified* dead for every input of the box (:func:`deadrelu.certify.certify`), i.e. dead
"for any input value", not only on the data.
"""

from __future__ import annotations

import math
import warnings
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from deadrelu.batches import first_batch
from deadrelu.certify import certify
from deadrelu.graph import SiteLinks, submodule
from deadrelu.remedies import links_of
from deadrelu.report import html_table
from deadrelu.scan import scan

__all__ = ["CAUSES", "DeadUnit", "Explanation", "UpdateTracker", "cause_of", "explain"]

#: The cause labels, see the module docstring.
CAUSES = ("bias", "weights", "both", "unknown", "active_in_eval")


def cause_of(z_max: float, bias: float) -> str:
    """The cause label of a dead unit from its largest pre-activation and effective bias.

    ``m = z_max - bias`` is the largest weight part w . x over the data. ``"bias"`` when
    ``bias < 0 < m``; ``"weights"`` when ``bias >= 0``; ``"both"`` when ``bias < 0`` and
    ``m <= 0``; ``"unknown"`` when ``z_max`` or ``bias`` is not finite.
    """
    if not (math.isfinite(z_max) and math.isfinite(bias)):
        return "unknown"
    m = z_max - bias
    if bias >= 0:
        return "weights"
    return "bias" if m > 0 else "both"


@dataclass
class DeadUnit:
    """One dead unit and why.

    Attributes:
        site, unit: where it is.
        z_max: largest pre-activation seen (``-inf`` if none was recorded).
        margin: ``-z_max``, how far below 0 it stays.
        cause: one of :data:`CAUSES`.
        bias: effective bias b (None without a producer).
        wx_max: ``z_max - b``, the largest w . x over the data (None without a producer).
        producer: path of the Linear/Conv feeding the unit.
        died_at: Monitor step from which it was dead (None without a Monitor).
        update_step: the optimizer step blamed (largest relative update in the window).
        update_ratio: ``||delta theta|| / ||theta||`` at that step.
        lr: the learning rate at that step.
        certified: dead for every input of the box (None without ``box``).
        note: why something is unknown.
    """

    site: str
    unit: int
    z_max: float
    margin: float
    cause: str
    bias: float | None = None
    wx_max: float | None = None
    producer: str | None = None
    died_at: int | None = None
    update_step: int | None = None
    update_ratio: float | None = None
    lr: float | None = None
    certified: bool | None = None
    note: str = ""

    def line(self) -> str:
        """One readable line."""
        parts = [f"{self.site}[{self.unit}]: z_max = {self.z_max:.4g} (margin {self.margin:.4g})"]
        if self.cause == "unknown":
            parts.append(f"cause unknown ({self.note})" if self.note else "cause unknown")
        else:
            parts.append(f"cause: {self.cause} (b = {self.bias:.4g}, max w.x = {self.wx_max:.4g})")
        if self.died_at is not None:
            s = f"died at step {self.died_at}"
            if self.update_ratio is not None and self.update_step is not None:
                s += (
                    f" after an update {100 * self.update_ratio:.3g} % the size of its "
                    f"weights at step {self.update_step}"
                )
                if self.lr is not None:
                    s += f", lr {self.lr:.4g}"
            parts.append(s)
        if self.certified is not None:
            parts.append("certified dead on the box" if self.certified else "not certified")
        return "; ".join(parts)


@dataclass
class Explanation:
    """The result of :func:`explain`.

    Attributes:
        units: one :class:`DeadUnit` per dead unit, by site then index.
        revived: ``{site: indices}`` of units that were dead and came back (Monitor only).
        notes: anything the explanation could not do, and why.
        scanned: the sites of the source (Report / Monitor), dead units or not.
    """

    units: list[DeadUnit] = field(default_factory=list)
    revived: dict[str, list[int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    scanned: list[str] = field(default_factory=list)

    @property
    def sites(self) -> list[str]:
        """Site names: the source's, then any other a unit or revival names, in order."""
        names = [*self.scanned, *(u.site for u in self.units), *self.revived]
        return list(dict.fromkeys(names))

    def dead_units(self, site: str) -> list[int]:
        """Sorted indices of the explained dead units of ``site`` (a unit found active in
        the eval-mode re-check, cause ``"active_in_eval"``, is not dead)."""
        if site not in self.sites:
            raise KeyError(f"no site {site!r} in this explanation; sites: {self.sites}")
        return sorted(u.unit for u in self.units if u.site == site and u.cause != "active_in_eval")

    def __repr__(self) -> str:
        causes = {k: v for k, v in self.by_cause().items() if v}
        revived = sum(len(v) for v in self.revived.values())
        return (
            f"Explanation(sites={len(self.sites)}, dead={len(self.units)}, causes={causes}, "
            f"revived={revived}, notes={len(self.notes)})"
        )

    def _repr_html_(self) -> str:
        rows = [[u.site, u.unit, u.cause, f"{u.z_max:.4g}", u.died_at, u.note] for u in self.units]
        title = f"deadrelu explanation: {len(self.units)} dead unit(s)"
        return html_table(title, ["site", "unit", "cause", "z_max", "died at", "note"], rows)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Explanation:
        """Rebuild from :meth:`to_dict` (non-finite z_max / margin come back as -inf / inf)."""
        units = []
        for d in data["units"]:
            d = dict(d)
            d["z_max"] = -math.inf if d.get("z_max") is None else float(d["z_max"])
            d["margin"] = math.inf if d.get("margin") is None else float(d["margin"])
            units.append(DeadUnit(**d))
        return cls(
            units=units,
            revived={k: list(v) for k, v in data.get("revived", {}).items()},
            notes=list(data.get("notes", [])),
            scanned=list(data.get("sites", [])),
        )

    def by_cause(self) -> dict[str, int]:
        """Number of dead units per cause label (every label present)."""
        counts = dict.fromkeys(CAUSES, 0)
        for u in self.units:
            counts[u.cause] += 1
        return counts

    def unit(self, site: str, index: int) -> DeadUnit:
        """The explanation of one unit (``KeyError`` if it is not dead)."""
        for u in self.units:
            if u.site == site and u.unit == index:
                return u
        raise KeyError(f"unit {index} of {site!r} is not among the dead units explained")

    def causes(self, site: str) -> dict[int, str]:
        """``{unit: cause}`` of the dead units of ``site``."""
        return {u.unit: u.cause for u in self.units if u.site == site}

    def lines(self) -> list[str]:
        """Readable lines: one per dead unit, then revived units and notes."""
        out = [u.line() for u in self.units]
        for site, idx in self.revived.items():
            if idx:
                out.append(f"{site}: {len(idx)} unit(s) died and came back: {idx}")
        out += [f"note: {n}" for n in self.notes]
        return out

    def __str__(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in self.by_cause().items())
        return "\n".join([f"{len(self.units)} dead unit(s): {counts}", *self.lines()])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""

        def clean(v: Any) -> Any:
            return None if isinstance(v, float) and not math.isfinite(v) else v

        return {
            "units": [{k: clean(v) for k, v in asdict(u).items()} for u in self.units],
            "by_cause": self.by_cause(),
            "revived": self.revived,
            "notes": self.notes,
            "sites": self.sites,
        }


# --------------------------------------------------------------------------------------
# The update tracker
# --------------------------------------------------------------------------------------


def _unit_params(model: nn.Module, lk: SiteLinks) -> list[tuple[Tensor, int]]:
    """The parameters holding a site's units, with the dim of the unit axis (always 0)."""
    out: list[tuple[Tensor, int]] = []
    for path in (lk.producer, lk.norm):
        if path is None:
            continue
        layer = submodule(model, path)
        for name in ("weight", "bias"):
            p = getattr(layer, name, None)
            if isinstance(p, nn.Parameter):
                out.append((p, 0))
    return out


def _as_float(v: Any) -> float:
    return float(v.detach().cpu()) if isinstance(v, Tensor) else float(v)


class UpdateTracker:
    """Record, at every optimizer step, the lr and each unit's relative update size.

    Attach it next to a :class:`~deadrelu.monitor.Monitor` so that :func:`explain` can say
    which update killed a unit::

        tracker = UpdateTracker(model, optimizer)
        with Monitor(model, every=1) as mon:
            for x, y in loader:
                ...; optimizer.step(); mon.step()
        print(explain(model, mon, tracker=tracker))

    Uses ``optimizer.register_step_pre_hook`` / ``register_step_post_hook``: before each
    step it copies the units' parameters (producer weight and bias, BatchNorm scale and
    shift, for every activation site with a producer), after it stores
    ``||theta_i(t+1) - theta_i(t)|| / ||theta_i(t)||`` per unit ``(U,)`` on the
    parameters' device (no host sync) and every param group's learning rate (a unit is
    blamed with the lr of the group holding its producer's weight). Step
    ``s`` is the ``s``-th ``optimizer.step()`` since the tracker was made, which matches
    the Monitor's step count when both start together. Memory: one copy of those
    parameters plus ``U`` floats per step, for the last ``max_steps`` steps. A model
    ``torch.fx`` cannot trace needs ``example_inputs`` (one batch) to find the producers
    (see :func:`deadrelu.remedies.links_of`).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        max_steps: int = 100_000,
        example_inputs: Any = None,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.step_count = 0
        links = links_of(model, example_inputs, remedy="UpdateTracker")
        self.links = {s: lk for s, lk in links.items() if lk.producer is not None}
        self._params = {s: _unit_params(model, lk) for s, lk in self.links.items()}
        self._before: dict[str, list[Tensor]] = {}
        self.ratios: dict[str, deque[Tensor]] = {s: deque(maxlen=max_steps) for s in self.links}
        #: per step, the learning rate of every param group
        self.lrs: deque[tuple[float, ...]] = deque(maxlen=max_steps)
        groups = {id(p): i for i, g in enumerate(optimizer.param_groups) for p in g["params"]}
        self._group = {s: groups.get(id(ps[0][0]), 0) for s, ps in self._params.items() if ps}
        self._handles = [
            optimizer.register_step_pre_hook(self._pre),
            optimizer.register_step_post_hook(self._post),
        ]

    def _pre(self, *_args: Any) -> None:
        with torch.no_grad():
            self._before = {
                s: [p.detach().clone() for p, _ in ps] for s, ps in self._params.items()
            }

    def _post(self, *_args: Any) -> None:
        with torch.no_grad():
            for site, ps in self._params.items():
                before = self._before.get(site)
                if before is None:
                    continue
                num = torch.zeros(ps[0][0].shape[0], dtype=torch.float32, device=ps[0][0].device)
                den = torch.zeros_like(num)
                for (p, _dim), old in zip(ps, before, strict=True):
                    d = (p.detach() - old).reshape(old.shape[0], -1).float()
                    o = old.reshape(old.shape[0], -1).float()
                    num += d.pow(2).sum(1)
                    den += o.pow(2).sum(1)
                self.ratios[site].append(num.sqrt() / den.sqrt().clamp_min(1e-30))
        self.lrs.append(
            tuple(_as_float(g.get("lr", math.nan)) for g in self.optimizer.param_groups)
        )
        self.step_count += 1
        self._before = {}

    @property
    def first_step(self) -> int:
        """The oldest optimizer step still recorded."""
        return self.step_count - len(self.lrs)

    def remove(self) -> None:
        """Remove the optimizer hooks."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def blame(self, site: str, unit: int, first: int, last: int) -> tuple[int, float, float] | None:
        """The step in ``[first, last]`` with the largest relative update of ``unit``:
        ``(step, ratio, lr)``, or None when none of those steps was recorded."""
        if site not in self.ratios:
            return None
        best: tuple[int, float, float] | None = None
        for s in range(max(first, self.first_step), min(last, self.step_count - 1) + 1):
            i = s - self.first_step
            r = float(self.ratios[site][i][unit])
            if best is None or r > best[1]:
                best = (s, r, self.lrs[i][self._group.get(site, 0)])
        return best


# --------------------------------------------------------------------------------------
# explain
# --------------------------------------------------------------------------------------


def _effective_bias(model: nn.Module, lk: SiteLinks) -> Tensor:
    """``(U,)`` float64: the bias of z through the producer and an eval BatchNorm."""
    assert lk.producer is not None
    layer = submodule(model, lk.producer)
    weight = getattr(layer, "weight", None)
    assert isinstance(weight, Tensor)
    b_p = getattr(layer, "bias", None)
    b = (
        b_p.detach().double().cpu()
        if isinstance(b_p, Tensor)
        else torch.zeros(weight.shape[0], dtype=torch.float64)
    )
    if lk.norm is not None:
        bn = submodule(model, lk.norm)
        assert isinstance(bn, nn.modules.batchnorm._BatchNorm)
        if bn.running_mean is None or bn.running_var is None:
            return torch.full_like(b, float("nan"))
        s = 1.0 / torch.sqrt(bn.running_var.detach().double().cpu() + bn.eps)
        if isinstance(bn.weight, Tensor):
            s = s * bn.weight.detach().double().cpu()
        b = s * (b - bn.running_mean.detach().double().cpu())
        if isinstance(bn.bias, Tensor):
            b = b + bn.bias.detach().double().cpu()
    return b


def _z_max(report: Any, data: Any, model: nn.Module) -> dict[str, Tensor]:
    """``{site: (U,)}`` largest pre-activation: re-scanned on ``data`` when given (current
    parameters, so consistent with the biases read now), else the report's."""
    if data is not None:
        report = scan(model, data)
    return {
        s: st.z_max.double().cpu()
        if st.has_range
        else torch.full((st.units,), float("-inf"), dtype=torch.float64)
        for s, st in report.stats.items()
    }


def explain(
    model: nn.Module,
    source: Any,
    data: Any = None,
    *,
    tracker: UpdateTracker | None = None,
    box: Any = None,
) -> Explanation:
    """Explain every dead unit of ``source`` (a Report or a Monitor) on ``model``.

    Args:
        model: the model measured, unchanged since (its parameters give b and w).
        source: a :class:`~deadrelu.report.Report` (dead = never active on the data
            scanned) or a :class:`~deadrelu.monitor.Monitor` (dead over its window; adds
            ``died_at`` and ``revived``).
        data: batches (tensors, ``(x, y)`` or dicts, as :func:`deadrelu.scan.scan` takes)
            to re-scan for ``z_max`` with the current parameters in eval mode (needed when
            the statistics lack it: a Monitor's default ``detail=False``, or
            ``scan(..., detail="counts")``); the dead units are still those of ``source``,
            but one active in the re-scan is labelled ``"active_in_eval"``. Its first
            batch links the layers by a probe forward (any model).
        tracker: an :class:`UpdateTracker` that ran during training (with a Monitor):
            adds the step, relative update size and learning rate that killed each unit.
        box: a :class:`deadrelu.certify.Box`: also certify each dead unit over it.

    Returns:
        An :class:`Explanation`; ``str(expl)`` reads as a list of causes.
    """
    expl = Explanation()
    monitor = None
    report = source
    if not hasattr(source, "stats") and callable(getattr(source, "report", None)):
        monitor = source
        report = source.report()
    if not hasattr(report, "stats") or not callable(getattr(report, "dead_units", None)):
        raise TypeError(
            f"explain needs a Report or a Monitor, got {type(source).__name__}: run "
            "deadrelu.scan.scan(model, data) first"
        )
    if monitor is not None:
        dead = monitor.all_units("dead")
        expl.scanned = list(dead)
        died = monitor.dead_since
        expl.revived = monitor.revived_since(0)
    else:
        dead = {s: report.dead_units(s) for s in report.stats}
        expl.scanned = list(dead)
        died = {}
    z_max = _z_max(report, data, model)
    links: dict[str, SiteLinks] = {}
    try:
        links = links_of(model, first_batch(data) if data is not None else None, remedy="explain")
    except ValueError:
        expl.notes.append(
            f"causes unknown: {type(model).__name__} cannot be traced with torch.fx; pass "
            "data= (its first batch links the layers by one probe forward)"
        )
    if (
        data is None
        and (monitor is not None or report.meta.get("mode") == "keep")
        and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    ):
        expl.notes.append(
            "the statistics may have been taken in training mode with BatchNorm layers "
            "(batch statistics), the causes use the running ones: pass data= to re-check "
            "every unit in eval mode"
        )
    cert = _certificate(model, box, expl) if box is not None else None
    every = int(getattr(monitor, "every", 1)) if monitor is not None else 1
    for site, units in dead.items():
        if not units:
            continue
        lk = links.get(site)
        b_eff = _effective_bias(model, lk) if lk is not None and lk.producer else None
        zm = z_max.get(site)
        for u in units:
            z = float(zm[u]) if zm is not None and u < zm.numel() else float("-inf")
            item = DeadUnit(site=site, unit=u, z_max=z, margin=-z, cause="unknown")
            if data is not None and z > 0:
                item.cause = "active_in_eval"
                item.note = (
                    f"active in eval mode: z_max = {z:.4g} > 0 in the re-scan of data= "
                    "(BatchNorm on running statistics); dead only in the measurement "
                    "(training-mode batch statistics, or other data)"
                )
            elif b_eff is None:
                item.note = (
                    lk.producer_problem or "no producer" if lk is not None else "site not traced"
                )
            elif not math.isfinite(z):
                item.note = "no pre-activation recorded: pass data= (or scan with detail='range')"
            else:
                item.producer = lk.producer if lk is not None else None
                item.bias = float(b_eff[u])
                item.wx_max = z - item.bias
                item.cause = cause_of(z, item.bias)
            if site in died and u < died[site].numel() and int(died[site][u]) >= 0:
                item.died_at = int(died[site][u])
                if tracker is not None:
                    # last active at sampled step died_at - 1, inactive at the next sampled
                    # step: the updates in between are steps died_at - 1 ... + every - 1
                    first = item.died_at - 1
                    hit = tracker.blame(site, u, first, first + every - 1)
                    if hit is not None:
                        item.update_step, item.update_ratio, item.lr = hit
            if cert is not None and site in cert.sites:
                item.certified = bool(cert.sites[site].certified_dead[u])
            expl.units.append(item)
    return expl


def _certificate(model: nn.Module, box: Any, expl: Explanation) -> Any:
    try:
        return certify(model, box)
    except ValueError as exc:
        expl.notes.append(f"no certificate: {exc}")
        warnings.warn(f"explain: no certificate: {exc}", stacklevel=3)
        return None
