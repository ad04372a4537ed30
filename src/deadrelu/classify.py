"""The definitions: when a unit is dead, dormant, rarely active or saturated.

These are pure functions of per-unit statistics, shape ``(U,)`` for ``U`` units of one call
site. The scanner, the Monitor and the lab all classify through this module, so the whole
project uses one definition of each word.

* **dead** (the notes, C1): never active (pre-activation z > 0) on any position seen. For
  ReLU the output is then exactly 0 everywhere and da/dz = 0, so no gradient reaches the
  unit's weights (C2). Hardswish and hardsigmoid die only below their kink at z = -3
  (:func:`dies_below_kink`): for them dead also needs every output exactly 0
  (:func:`alive_evidence`).
* **dormant** (ReDo: Sokar, Agarwal, Castro, Evci, "The Dormant Neuron Phenomenon in Deep
  Reinforcement Learning", ICML 2023, eq. 1): score s_i = E|h_i| / ((1/U) sum_j E|h_j|),
  dormant if s_i <= tau. The paper's default is tau = 0 for reporting "completely
  dormant" units and tau in {0.025, 0.1} for recycling; we default to
  :data:`DORMANT_TAU` = 0.025.
* **rarely active**: active on fewer than :data:`RARELY_ACTIVE_FRACTION` = 1 % of positions
  (the activation-frequency measure of the loss-of-plasticity literature, e.g. Lyle et
  al. 2023, Dohare et al. 2024).
* **saturated** (ELU, SELU, CELU, GELU, SiLU, Mish, Softplus): every pre-activation seen lies
  where |f'(z)| < threshold (default :data:`SATURATION_THRESHOLD` = 1e-3), so the unit
  passes almost no gradient although it is not exactly dead.
* **non-finite**: saw a NaN or inf pre-activation (counted at detail "range"/"full"), or its
  mean |output| is NaN/inf (what detail "counts" can see). Such a unit may also be counted
  dead (NaN > 0 is false); reports say so.

The classes are data: :data:`UNIT_CLASSES` lists one :class:`UnitClass` per word (name,
the statistics level it needs, the threshold it reads, its mask function), and reports
iterate it for their masks, table columns, summaries and JSON.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from deadrelu.activations import Activation
from deadrelu.stats import Level, UnitStats

__all__ = [
    "CLASS_NAMES",
    "DORMANT_TAU",
    "RARELY_ACTIVE_FRACTION",
    "SATURATION_THRESHOLD",
    "UNIT_CLASSES",
    "Thresholds",
    "UnitClass",
    "alive_evidence",
    "classify_units",
    "dead_mask",
    "dies_below_kink",
    "dormant_mask",
    "dormant_scores",
    "get_class",
    "nonfinite_mask",
    "rarely_active_mask",
    "saturated_mask",
]

DORMANT_TAU = 0.025
RARELY_ACTIVE_FRACTION = 0.01
SATURATION_THRESHOLD = 1e-3
_GRID = 65


def dead_mask(active_count: Tensor) -> Tensor:
    """``(U,)`` counts of positions with z > 0 -> ``(U,)`` bool, True where never active."""
    return active_count == 0


def dies_below_kink(activation: Activation) -> bool:
    """Whether ``activation`` dies only below a negative kink (``dead_below < 0``:
    hardswish and hardsigmoid, 0 with zero gradient for z <= -3): between the kink and 0
    it still has a non-zero output and gradient, so "never z > 0" does not make it dead."""
    below = activation.dead_below
    return below is not None and below < 0


def alive_evidence(active_count: Tensor, abs_sum: Tensor, activation: Activation) -> Tensor:
    """``(U,)`` bool: the statistics show the unit alive. ``active_count``: positions with
    z > 0; ``abs_sum``: sum of |output|, both ``(U,)``.

    For ReLU and its kin: z > 0 somewhere (the notes' definition). For an activation that
    dies only below a negative kink (:func:`dies_below_kink`) also a non-zero output
    somewhere: a hardswish unit with -3 < z < 0 is not dead.
    """
    alive = active_count > 0
    if dies_below_kink(activation):
        alive = alive | (abs_sum != 0)
    return alive


def dormant_scores(mean_abs: Tensor) -> Tensor:
    """``(U,)`` mean |output| per unit -> ``(U,)`` ReDo score, the unit's share of the layer mean.

    A layer whose units are all exactly 0 has every score 0.
    """
    layer_mean = mean_abs.mean()
    if layer_mean == 0:
        return torch.zeros_like(mean_abs)
    return mean_abs / layer_mean


def _check_tau(tau: float) -> None:
    if not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau >= 0):
        raise ValueError(f"tau must be a finite number >= 0, got {tau!r}")


def dormant_mask(mean_abs: Tensor, tau: float = DORMANT_TAU) -> Tensor:
    """``(U,)`` mean |output| -> ``(U,)`` bool, True where the ReDo score is <= ``tau``."""
    _check_tau(tau)
    return dormant_scores(mean_abs) <= tau


def rarely_active_mask(
    active_count: Tensor, positions: Tensor | int, fraction: float = RARELY_ACTIVE_FRACTION
) -> Tensor:
    """``(U,)`` active counts and positions seen -> ``(U,)`` bool: active on < ``fraction``."""
    if not 0 <= fraction <= 1:  # False for NaN too
        raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")
    positions_t = torch.as_tensor(positions, device=active_count.device)
    return active_count.to(torch.float64) < fraction * positions_t.to(torch.float64)


def saturated_mask(
    min_preact: Tensor,
    max_preact: Tensor,
    activation: Activation,
    threshold: float = SATURATION_THRESHOLD,
) -> Tensor:
    """``(U,)`` range of pre-activations seen -> ``(U,)`` bool, True where saturated.

    A unit is saturated when |f'(z)| < ``threshold`` over the whole range
    ``[min_preact, max_preact]`` it was seen in. Only activations whose spec says they
    saturate can be; for the others (ReLU: use :func:`dead_mask`) the mask is all False.
    The supremum of |f'| is taken over the two ends and a grid of 65 points between them,
    exact for the monotone cases (ELU, SELU, CELU, Softplus).
    """
    if not activation.spec.saturates:
        return torch.zeros_like(max_preact, dtype=torch.bool)
    lo = torch.nan_to_num(min_preact.to(torch.float64), neginf=-1e4)
    hi = torch.nan_to_num(max_preact.to(torch.float64), neginf=-1e4)
    steps = torch.linspace(0, 1, _GRID, dtype=torch.float64, device=lo.device)
    # The grid's two ends first: where |f'| reaches the threshold at one of them the unit is
    # not saturated, so the whole grid is evaluated for the other units only (a GELU site's
    # full grid cost ~0.8 ms per report); same result as the grid of every unit.
    width = hi - lo
    ends = torch.stack([lo + width * steps[0], lo + width * steps[-1]], dim=1)
    saturated = activation.derivative(ends).abs().amax(dim=1) < threshold
    rest = saturated.nonzero().flatten()
    if rest.numel():
        grid = lo[rest, None] + width[rest, None] * steps[None, :]
        saturated[rest] = activation.derivative(grid).abs().amax(dim=1) < threshold
    return saturated


def nonfinite_mask(stats: UnitStats) -> Tensor:
    """``(U,)`` bool: the unit saw a NaN/inf pre-activation (counted at detail "range" and
    "full") or its mean |output| is NaN/inf (visible at every level, "counts" included)."""
    bad = ~torch.isfinite(stats.abs_sum)
    if stats.has_range:
        bad = bad | (stats.nonfinite > 0)
    return bad


# --------------------------------------------------------------------------------------
# The registry of unit classes
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Thresholds:
    """The thresholds the classes read (see the module docstring for each)."""

    tau: float = DORMANT_TAU
    rarely_fraction: float = RARELY_ACTIVE_FRACTION
    saturation_threshold: float = SATURATION_THRESHOLD

    def __post_init__(self) -> None:
        _check_tau(self.tau)
        if not 0 <= self.rarely_fraction <= 1:
            raise ValueError(f"rarely_fraction must be in [0, 1], got {self.rarely_fraction!r}")
        if not (math.isfinite(self.saturation_threshold) and self.saturation_threshold >= 0):
            raise ValueError(
                f"saturation_threshold must be a finite number >= 0, "
                f"got {self.saturation_threshold!r}"
            )


#: ``mask(stats, activation, thresholds) -> (U,) bool`` for a site that saw >= 1 position.
MaskFn = Callable[[UnitStats, Activation, Thresholds], Tensor]


@dataclass(frozen=True)
class UnitClass:
    """One class of units, as data.

    Attributes:
        name: the key in masks, summaries and JSON ("dead", ...).
        title: the table column header; ``{tau}`` etc. are filled from :class:`Thresholds`.
        needs: the lowest statistics level (:data:`deadrelu.stats.DETAIL_LEVELS`) whose
            fields the mask reads; below it the class is not computable (shown as "-").
        threshold: the :class:`Thresholds` field the mask reads, or None.
        mask: the mask function, ``(U,)`` bool.
        saturating_only: only activations whose spec saturates can have such units.
    """

    name: str
    title: str
    needs: Level
    threshold: str | None
    mask: MaskFn
    saturating_only: bool = False

    def computable(self, stats: UnitStats, activation: Activation) -> bool:
        """Whether these statistics of this activation can show the class at all."""
        if self.saturating_only and not activation.spec.saturates:
            return False
        return self.needs == "counts" or stats.has_range

    def header(self, thresholds: Thresholds) -> str:
        """The column header with its threshold filled in."""
        return self.title.format(
            tau=f"{thresholds.tau:g}",
            rarely_fraction=f"{thresholds.rarely_fraction:g}",
            saturation_threshold=f"{thresholds.saturation_threshold:g}",
        )


def _dormant(s: UnitStats, act: Activation, th: Thresholds) -> Tensor:
    # among the units whose mean |output| is finite: a NaN/inf unit is not dormant
    mean_abs = s.mean_abs
    finite = torch.isfinite(mean_abs)
    out = torch.zeros(s.units, dtype=torch.bool, device=mean_abs.device)
    if bool(finite.any()):
        out[finite] = dormant_mask(mean_abs[finite], th.tau)
    return out


#: Every unit class, in display order.
UNIT_CLASSES: tuple[UnitClass, ...] = (
    UnitClass(
        "dead", "dead", "counts", None, lambda s, a, th: ~alive_evidence(s.active, s.abs_sum, a)
    ),
    UnitClass("dormant", "dormant (τ={tau})", "counts", "tau", _dormant),
    UnitClass(
        "rarely_active",
        "rarely active",
        "counts",
        "rarely_fraction",
        lambda s, a, th: rarely_active_mask(s.active, s.positions, th.rarely_fraction),
    ),
    UnitClass(
        "saturated",
        "saturated",
        "range",
        "saturation_threshold",
        lambda s, a, th: saturated_mask(s.z_min, s.z_max, a, th.saturation_threshold),
        saturating_only=True,
    ),
    UnitClass("nonfinite", "non-finite", "counts", None, lambda s, a, th: nonfinite_mask(s)),
)

#: The class names, in display order.
CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in UNIT_CLASSES)


def get_class(name: str) -> UnitClass:
    """The :class:`UnitClass` called ``name``; ValueError naming the known ones otherwise."""
    for c in UNIT_CLASSES:
        if c.name == name:
            return c
    raise ValueError(f"unknown unit class {name!r}; known: {', '.join(CLASS_NAMES)}")


def classify_units(
    stats: UnitStats, activation: Activation, thresholds: Thresholds | None = None
) -> dict[str, Tensor]:
    """``{class name: (U,) bool}`` for one site, every class of :data:`UNIT_CLASSES`.

    A site that saw no position, and a class the statistics cannot show
    (:meth:`UnitClass.computable`), have all-False masks.
    """
    th = thresholds or Thresholds()
    false = torch.zeros(stats.units, dtype=torch.bool, device=stats.device)
    seen = bool(stats.positions > 0)
    return {
        c.name: c.mask(stats, activation, th)
        if seen and c.computable(stats, activation)
        else false.clone()
        for c in UNIT_CLASSES
    }
