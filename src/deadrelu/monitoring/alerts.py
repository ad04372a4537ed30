"""The Monitor's alert part: the warnings it raises, each at most once per cause.

* a site's dead fraction over a full window rises to ``>= threshold`` (again only after it
  fell below);
* a sampled step saw no activation call at all (a model compiled before the Monitor was
  attached, or run in eval mode with ``training_only``);
* a known site was not called on a sampled step (a branch not taken, hooks gone);
* units saw NaN/inf on a sampled step (such units are never active, so they count as dead
  over the window: the warning says so).

Each is a :class:`MonitorWarning`; the threshold crossing is also logged.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping

from deadrelu.monitoring.window import SiteWindow

__all__ = ["Alerts", "MonitorWarning"]

logger = logging.getLogger("deadrelu.monitor")


class MonitorWarning(UserWarning):
    """A layer's dead fraction crossed the Monitor's threshold, or the Monitor sees nothing."""


class Alerts:
    """Which warnings were given; ``threshold=None`` never warns on dead fractions."""

    def __init__(self, threshold: float | None, window: int) -> None:
        if threshold is not None and not 0 < threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1] or None, got {threshold}")
        self.threshold = threshold
        self.window = window
        self.warned: set[str] = set()  # sites above the threshold (part of the state)
        self._blind = False
        self._unseen: set[str] = set()
        self._nonfinite: set[str] = set()

    def blind(self) -> None:
        """A sampled step saw no activation call."""
        if self._blind:
            return
        self._blind = True
        warnings.warn(
            "the Monitor saw no activation call during a sampled step. If the "
            "model is compiled, attach the Monitor before torch.compile (hooks "
            "added after the compiled model ran are not called) or call "
            "torch._dynamo.reset(); if the model ran in eval mode, pass "
            "training_only=False",
            MonitorWarning,
            stacklevel=4,
        )

    def unseen(self, t: int, names: list[str]) -> None:
        """Sites known but not called on the sampled step ``t``."""
        for name in names:
            if name in self._unseen:
                continue
            self._unseen.add(name)
            warnings.warn(
                f"step {t}: site {name!r} was not called during this sampled step, so its "
                "units are not judged on it (a branch not taken, or a compiled model that "
                "no longer runs the hooks: attach the Monitor before torch.compile)",
                MonitorWarning,
                stacklevel=4,
            )

    def nonfinite(self, t: int, counts: Mapping[str, int]) -> None:
        """``{site: units}`` that saw NaN/inf on the sampled step ``t``."""
        for name, count in counts.items():
            if name in self._nonfinite:
                continue
            self._nonfinite.add(name)
            warnings.warn(
                f"step {t}: {count} units of {name!r} saw NaN/inf pre-activations or "
                "outputs; their z is never > 0 (NaN > 0 is false), so they count as dead "
                "over the window: check the inputs, weights and loss for NaN/inf "
                "(mon.report().nonfinite_units(site) lists them)",
                MonitorWarning,
                stacklevel=4,
            )

    def crossings(self, t: int, dead: Mapping[str, int], windows: Mapping[str, SiteWindow]) -> None:
        """Warn for the sites whose dead count at ``t`` crossed the threshold."""
        if self.threshold is None:
            return
        for name, count in dead.items():
            win = windows[name]
            full = t - win.first_step + 1 >= self.window
            frac = count / win.units
            if full and frac >= self.threshold and name not in self.warned:
                self.warned.add(name)
                msg = (
                    f"step {t}: {count} of {win.units} units ({frac:.0%}) of {name!r} are "
                    f"dead (inactive on every sampled step of the last {self.window} steps), "
                    f">= threshold {self.threshold:.0%}. Lower the learning rate, use a "
                    "small positive bias or a ReLU variant (see deadrelu.remedies)"
                )
                warnings.warn(msg, MonitorWarning, stacklevel=4)
                logger.warning(msg)
            elif frac < self.threshold:
                self.warned.discard(name)
