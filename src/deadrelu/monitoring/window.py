"""The Monitor's window part: per-site state over a sliding window of sampled steps.

For one call site with ``U`` units (all tensors ``(U,)`` on the activation's device):

* ``last_active``: the last sampled step on which the unit was active (z > 0 somewhere;
  for hardswish/hardsigmoid also a non-zero output: :func:`~deadrelu.classify.alive_evidence`),
  -1 if never; ``last_seen``: the last sampled step on which the site was called. A unit
  is **dead over the window** at step ``t`` when ``last_active < start`` and
  ``last_seen >= start``, ``start = max(first_step, t - window + 1)``: classify's
  :func:`~deadrelu.classify.dead_mask` on the window's active counts, kept as one integer
  per unit, so the state is O(U) whatever the window and the number of steps.
* ``revived_at`` and ``was_dead``: the last sampled step on which a dead unit came back.
* three :class:`~deadrelu.stats.UnitStats`: ``step`` (the sampled step being counted),
  ``pane`` and ``prev``: two tumbling panes of ``window`` steps
  (``[k window, (k+1) window)``, :class:`Panes`), merged for a report.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from deadrelu.activations import Activation
from deadrelu.classify import alive_evidence, dead_mask, nonfinite_mask
from deadrelu.stats import Level, UnitStats

__all__ = ["NEVER", "Panes", "SiteWindow"]

#: "no such step".
NEVER = -1


class Panes:
    """Where the current pane starts; panes are ``[k window, (k+1) window)``."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.start = 0

    def rotation(self, t: int) -> bool | None:
        """At sampled step ``t``: None if ``t`` is in the current pane, else whether the
        pane ``t`` opens follows the current one (True) or a gap of panes (False)."""
        if t < self.start + self.window:
            return None
        return t < self.start + 2 * self.window

    def advance(self, t: int) -> None:
        """Move the start to the pane holding ``t``."""
        self.start += (t - self.start) // self.window * self.window


class SiteWindow:
    """Everything the Monitor keeps for one site's units; see the module docstring."""

    def __init__(
        self,
        name: str,
        unit_dim: int,
        units: int,
        device: torch.device,
        detail: Level,
        activation: Activation | None = None,
    ) -> None:
        self.name = name
        self.activation = activation
        self.unit_dim = unit_dim
        self.units = units
        self.detail = detail
        self.step = UnitStats.empty(units, device, detail=detail)
        self.pane = UnitStats.empty(units, device, detail=detail)
        # allocated up front, so the state has its full size from the first call on
        self.prev: UnitStats | None = UnitStats.empty(units, device, detail=detail)
        self.last_active = torch.full((units,), NEVER, dtype=torch.int64, device=device)
        self.last_seen = torch.tensor(NEVER, dtype=torch.int64, device=device)
        self.revived_at = torch.full((units,), NEVER, dtype=torch.int64, device=device)
        self.was_dead = torch.zeros(units, dtype=torch.bool, device=device)
        self.first_step = NEVER

    @property
    def device(self) -> torch.device:
        """Where the tensors live (the activation's device)."""
        return self.last_active.device

    @property
    def started(self) -> bool:
        """Whether the site was counted on at least one sampled step."""
        return self.first_step != NEVER

    # ------------------------------------------------------------------ the window

    def window_start(self, t: int, window: int) -> int:
        """The first step of the window ending at ``t``."""
        return max(self.first_step, t - window + 1)

    def dead(self, t: int, window: int) -> Tensor:
        """``(U,)`` bool: dead over the window ending at step ``t`` (classify's definition).

        Only a site that was called on a sampled step of the window is judged: a site
        not run at all (a branch not taken) has no evidence, and its units are not dead.
        """
        start = self.window_start(t, window)
        in_window = (self.last_active >= start).to(torch.int64)
        return dead_mask(in_window) & (self.last_seen >= start)

    def dead_since(self, t: int, window: int) -> Tensor:
        """``(U,)`` int64: for a unit dead at ``t`` the step after its last active sampled
        step (its site's first sampled step if never active), -1 for the others."""
        since = torch.where(self.last_active == NEVER, self.first_step, self.last_active + 1)
        return torch.where(self.dead(t, window), since, NEVER)

    def rotate(self, adjacent: bool) -> None:
        """Open a new pane: the current one becomes ``prev`` (emptied if not adjacent)."""
        old = self.prev
        self.prev = self.pane
        if not adjacent:
            self.prev.reset()
        if old is None:
            old = UnitStats.empty(self.units, self.device, detail=self.detail)
        old.reset()
        self.pane = old

    def record(self, t: int, window: int) -> tuple[Tensor, Tensor, Tensor]:
        """Fold the counted step ``t`` into the state. Returns (the dead count, whether
        the site was called, the units that saw NaN/inf on this step), three 0-dim int64
        tensors (no host sync here)."""
        nonfinite = nonfinite_mask(self.step).sum()
        if self.first_step == NEVER:
            self.first_step = t
        seen = self.step.positions > 0
        self.last_seen = torch.where(seen, t, self.last_seen)
        alive = (
            self.step.active > 0
            if self.activation is None
            else alive_evidence(self.step.active, self.step.abs_sum, self.activation)
        )
        self.last_active = torch.where(alive, t, self.last_active)
        dead = self.dead(t, window)
        self.revived_at = torch.where(self.was_dead & ~dead, t, self.revived_at)
        self.was_dead = dead
        self.pane.merge(self.step)
        self.step.reset()
        return dead.sum(), seen.to(torch.int64), nonfinite

    def statistics(self) -> UnitStats:
        """The two panes merged, a copy on the CPU."""
        stats = self.pane.to("cpu")
        if self.prev is not None:
            stats.merge(self.prev)
        return stats

    # ------------------------------------------------------------------ housekeeping

    def move(self, device: torch.device) -> None:
        """Move every tensor to ``device``."""
        self.step = self.step.to(device)
        self.pane = self.pane.to(device)
        if self.prev is not None:
            self.prev = self.prev.to(device)
        self.last_active = self.last_active.to(device)
        self.last_seen = self.last_seen.to(device)
        self.revived_at = self.revived_at.to(device)
        self.was_dead = self.was_dead.to(device)

    def tensors(self) -> dict[str, Tensor]:
        """The per-unit tensors of the window (not the statistics)."""
        return {
            "last_active": self.last_active,
            "last_seen": self.last_seen,
            "revived_at": self.revived_at,
            "was_dead": self.was_dead,
        }

    def nbytes(self) -> int:
        """Bytes of every tensor (the per-step buffer included), as allocated: a
        statistics field the detail level does not update takes one element."""
        total = sum(t.numel() * t.element_size() for t in self.tensors().values())
        for stats in (self.step, self.pane, self.prev):
            if stats is not None:
                total += stats.nbytes
        return total

    def state_dict(self) -> dict[str, Any]:
        """CPU copies of the state (a checkpoint entry)."""
        entry: dict[str, Any] = {k: v.detach().cpu().clone() for k, v in self.tensors().items()}
        entry["unit_dim"] = self.unit_dim
        entry["first_step"] = self.first_step
        entry["pane"] = self.pane.to("cpu").state_dict()
        entry["prev"] = None if self.prev is None else self.prev.to("cpu").state_dict()
        return entry

    def load_state_dict(self, entry: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` onto this window's device."""
        units = int(entry["last_active"].shape[0])
        if units != self.units:
            raise ValueError(
                f"site {self.name!r}: saved state has {units} units, the model has "
                f"{self.units}; load the state into the same architecture"
            )
        dev = self.device
        self.last_active = entry["last_active"].to(dev).clone()
        self.last_seen = entry["last_seen"].to(dev).clone()
        self.revived_at = entry["revived_at"].to(dev).clone()
        self.was_dead = entry["was_dead"].to(dev).clone()
        self.first_step = int(entry["first_step"])
        self.pane = UnitStats.from_state_dict(entry["pane"], dev)
        prev = entry["prev"]
        self.prev = None if prev is None else UnitStats.from_state_dict(prev, dev)
