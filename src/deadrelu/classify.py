"""The definitions: when a unit is dead, dormant, rarely active or saturated.

These are pure functions of per-unit statistics, shape ``(U,)`` for ``U`` units of one call
site. The scanner, the Monitor and the lab all classify through this module, so the whole
project uses one definition of each word.

* **dead** (the notes, C1): never active (pre-activation z > 0) on any position seen. For
  ReLU the output is then exactly 0 everywhere and da/dz = 0, so no gradient reaches the
  unit's weights (C2).
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
"""

from __future__ import annotations

import torch
from torch import Tensor

from deadrelu.activations import Activation

__all__ = [
    "DORMANT_TAU",
    "RARELY_ACTIVE_FRACTION",
    "SATURATION_THRESHOLD",
    "dead_mask",
    "dormant_mask",
    "dormant_scores",
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


def dormant_scores(mean_abs: Tensor) -> Tensor:
    """``(U,)`` mean |output| per unit -> ``(U,)`` ReDo score, the unit's share of the layer mean.

    A layer whose units are all exactly 0 has every score 0.
    """
    layer_mean = mean_abs.mean()
    if layer_mean == 0:
        return torch.zeros_like(mean_abs)
    return mean_abs / layer_mean


def dormant_mask(mean_abs: Tensor, tau: float = DORMANT_TAU) -> Tensor:
    """``(U,)`` mean |output| -> ``(U,)`` bool, True where the ReDo score is <= ``tau``."""
    if tau < 0:
        raise ValueError(f"tau must be >= 0, got {tau}")
    return dormant_scores(mean_abs) <= tau


def rarely_active_mask(
    active_count: Tensor, positions: Tensor | int, fraction: float = RARELY_ACTIVE_FRACTION
) -> Tensor:
    """``(U,)`` active counts and positions seen -> ``(U,)`` bool: active on < ``fraction``."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
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
    grid = lo[:, None] + (hi - lo)[:, None] * steps[None, :]
    sup = activation.derivative(grid).abs().amax(dim=1)
    return sup < threshold
