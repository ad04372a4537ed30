"""The Monitor's history part: the dead fraction of every site, one row per sampled step.

The only part of the Monitor's state that grows (S numbers per sampled step); exports to
CSV, JSON and a PNG.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from deadrelu.report import plot_history

__all__ = ["History"]


@dataclass
class History:
    """Dead fraction over the window, one row per sampled step.

    Attributes:
        steps: ``(R,)`` the sampled steps, increasing.
        sites: ``(S,)`` site names, in the order they were first seen.
        units: ``(S,)`` units per site.
        dead: ``R`` rows of ``S`` dead-unit counts (``None`` where a site had not been
            seen yet at that step).
    """

    steps: list[int] = field(default_factory=list)
    sites: list[str] = field(default_factory=list)
    units: list[int] = field(default_factory=list)
    dead: list[list[int | None]] = field(default_factory=list)

    def fractions(self) -> Tensor:
        """``(R, S)`` float64 dead fraction per sampled step and site (NaN: not seen yet)."""
        out = torch.full((len(self.steps), len(self.sites)), math.nan, dtype=torch.float64)
        for r, row in enumerate(self.dead):
            for s, count in enumerate(row):
                if count is not None:
                    out[r, s] = count / self.units[s]
        return out

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict: ``{"steps", "sites", "units", "dead", "dead_fraction"}``."""
        frac = self.fractions()
        return {
            "steps": list(self.steps),
            "sites": list(self.sites),
            "units": list(self.units),
            "dead": [list(row) + [None] * (len(self.sites) - len(row)) for row in self.dead],
            "dead_fraction": [[None if math.isnan(v) else v for v in row] for row in frac.tolist()],
        }

    def to_json(self) -> str:
        """The history as a JSON string (see :meth:`as_dict`)."""
        return json.dumps(self.as_dict())

    def to_csv(self, path: str | Path | None = None) -> str:
        """Write (if ``path``) and return a CSV: ``step`` then one dead-fraction column per site."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["step", *self.sites])
        for step, row in zip(self.steps, self.fractions().tolist(), strict=True):
            writer.writerow([step, *("" if math.isnan(v) else f"{v:.6g}" for v in row)])
        text = buf.getvalue()
        if path is not None:
            Path(path).write_text(text)
        return text

    def plot(self, path: str | Path) -> Path:
        """Save a PNG of the dead fraction of each site against the step (matplotlib, Agg)."""
        frac = self.fractions()
        series = {name: frac[:, s].tolist() for s, name in enumerate(self.sites)}
        return plot_history(
            self.steps,
            series,
            path,
            ylabel="dead fraction over the window",
            title="Dead units during training",
        )

    def add_site(self, name: str, units: int) -> None:
        """Give ``name`` a column (no-op if it has one); earlier rows read None for it."""
        if name not in self.sites:
            self.sites.append(name)
            self.units.append(units)

    def record(self, step: int, dead: dict[str, int]) -> None:
        """Append the row of sampled step ``step``: ``{site: dead count}``."""
        self.steps.append(step)
        self.dead.append([dead.get(n) for n in self.sites])

    def state(self) -> dict[str, Any]:
        """The rows as plain lists (for a checkpoint)."""
        return {
            "steps": list(self.steps),
            "sites": list(self.sites),
            "units": list(self.units),
            "dead": [list(r) for r in self.dead],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> History:
        """Inverse of :meth:`state`."""
        return cls(
            steps=list(state["steps"]),
            sites=list(state["sites"]),
            units=list(state["units"]),
            dead=[list(r) for r in state["dead"]],
        )
