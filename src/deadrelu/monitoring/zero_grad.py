"""The Monitor's zero-gradient part (claim C2 of the notes): do dead units get gradient?

On the first sampled step a :class:`~deadrelu.graph.ProducerProbe` finds the module whose
output feeds each activation (a Linear, Conv or BatchNorm). From then on gradient hooks on
that module's weight and bias record, on sampled steps, per unit whether any incoming
parameter received a non-zero gradient (``grad_step``, folded into ``grad_last``: the last
sampled step with gradient). :meth:`ZeroGradProbe.check` lists, per site, the units dead
over the window and those among them whose incoming parameters received gradient inside
the window (none, if the chain rule of the notes holds).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from deadrelu.graph import ProducerProbe, submodule
from deadrelu.monitoring.window import NEVER, SiteWindow

__all__ = ["ZeroGradCheck", "ZeroGradProbe"]


@dataclass
class ZeroGradCheck:
    """Result of :meth:`deadrelu.monitor.Monitor.check_zero_grad` for one site.

    Attributes:
        producer: name of the module feeding the activation (``None``: none found, the
            check could not be made for this site).
        dead: ``(D,)`` int64 indices of the units dead over the window.
        dead_with_grad: ``(K,)`` int64 indices of dead units whose incoming weights or
            bias received a non-zero gradient on a sampled step of the window (``K = 0``
            when the chain rule holds).
    """

    producer: str | None
    dead: Tensor
    dead_with_grad: Tensor

    @property
    def holds(self) -> bool:
        """True when a producer was found and no dead unit received any gradient."""
        return self.producer is not None and self.dead_with_grad.numel() == 0


class ZeroGradProbe:
    """Producers, gradient hooks and the per-unit gradient record of one Monitor.

    Args:
        model: the plain model.
        sampling: ``() -> bool``, whether the current step is counted (the hooks record
            only then).
    """

    def __init__(self, model: nn.Module, sampling: Callable[[], bool]) -> None:
        self.model = model
        self._sampling = sampling
        self.producers: dict[str, str | None] | None = None
        self.grad_step: dict[str, Tensor] = {}
        self.grad_last: dict[str, Tensor] = {}
        self._probe: ProducerProbe | None = None
        self._found: dict[str, str | None] = {}
        self._handles: list[Any] = []

    # ------------------------------------------------------------------ lifecycle

    def start(self, windows: Mapping[str, SiteWindow]) -> None:
        """On attach: probe the producers on the next forward, or re-hook known ones."""
        if self.producers is None:
            self._found = {}
            self._probe = ProducerProbe(self.model)
        else:
            self.hook(windows)

    def observe(self, site: str, z: Tensor) -> None:
        """Hot path, while probing: remember which module produced ``z``."""
        if self._probe is not None and site not in self._found:
            self._found[site] = self._probe.producer(z)

    def stop_probe(self) -> None:
        """Remove the probe's hooks (idempotent)."""
        if self._probe is not None:
            self._probe.remove()
            self._probe = None

    def settle(self, windows: Mapping[str, SiteWindow]) -> None:
        """After the first sampled step: fix the producers found and hook them."""
        self.stop_probe()
        if self.producers is None:
            self.producers = dict(self._found)
            self.hook(windows)

    def hook(self, windows: Mapping[str, SiteWindow]) -> None:
        """(Re-)register the gradient hooks on every known producer's weight and bias."""
        assert self.producers is not None
        self.unhook()
        for site, prod in self.producers.items():
            win = windows.get(site)
            if prod is None or win is None:
                continue
            module = submodule(self.model, prod)
            if site not in self.grad_step:
                dtype = win.pane.abs_sum.dtype
                self.grad_step[site] = torch.zeros(win.units, dtype=dtype, device=win.device)
            if site not in self.grad_last:
                self.grad_last[site] = torch.full(
                    (win.units,), NEVER, dtype=torch.int64, device=win.device
                )
            for pname in ("weight", "bias"):
                p = getattr(module, pname, None)
                if isinstance(p, Tensor) and p.requires_grad and p.shape[:1] == (win.units,):
                    self._handles.append(p.register_hook(self._grad_hook(site)))

    def unhook(self) -> None:
        """Remove the gradient hooks (idempotent)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def remove(self) -> None:
        """Remove every hook (the probe's and the gradient hooks)."""
        self.stop_probe()
        self.unhook()

    def _grad_hook(self, site: str) -> Callable[[Tensor], None]:
        def hook(grad: Tensor) -> None:
            buf = self.grad_step.get(site)
            if not self._sampling() or buf is None:
                return
            g = grad.detach().abs()
            per_unit = g.reshape(g.shape[0], -1).sum(1) if g.dim() > 1 else g
            buf.add_(per_unit.to(buf.dtype))

        return hook

    # ------------------------------------------------------------------ steps and queries

    def all_reduce(self, group: Any) -> None:
        """Sum every site's step gradient record over the process group."""
        import torch.distributed as dist

        for site in sorted(self.grad_step):
            dist.all_reduce(self.grad_step[site], group=group)

    def record(self, t: int) -> None:
        """Fold the counted step ``t`` into ``grad_last``."""
        for site, buf in self.grad_step.items():
            self.grad_last[site] = torch.where(buf > 0, t, self.grad_last[site])
            buf.zero_()

    def check(
        self, dead: Mapping[str, Tensor], windows: Mapping[str, SiteWindow], t: int, window: int
    ) -> dict[str, ZeroGradCheck]:
        """``{site: ZeroGradCheck}`` from the ``(D,)`` dead indices of each site at ``t``."""
        out: dict[str, ZeroGradCheck] = {}
        producers = self.producers or {}
        for name, dead_idx in dead.items():
            prod = producers.get(name)
            last = self.grad_last.get(name)
            if prod is None or last is None or t == NEVER:
                out[name] = ZeroGradCheck(prod, dead_idx, torch.zeros(0, dtype=torch.int64))
                continue
            win = windows[name]
            got = win.dead(t, window) & (last >= win.window_start(t, window))
            out[name] = ZeroGradCheck(prod, dead_idx, torch.nonzero(got).flatten().cpu())
        return out

    # ------------------------------------------------------------------ housekeeping

    def move(self, site: str, device: torch.device) -> None:
        """Move one site's records to ``device``."""
        if site in self.grad_last and site in self.grad_step:
            self.grad_last[site] = self.grad_last[site].to(device)
            self.grad_step[site] = self.grad_step[site].to(device)

    def nbytes(self, site: str) -> int:
        """Bytes of one site's records."""
        return sum(
            t.numel() * t.element_size()
            for t in (self.grad_step.get(site), self.grad_last.get(site))
            if t is not None
        )

    def restore(self, site: str, grad_last: Tensor, win: SiteWindow) -> None:
        """Restore one site's ``grad_last`` (from a checkpoint) onto ``win``'s device."""
        self.grad_last[site] = grad_last.to(win.device).clone()
        self.grad_step[site] = torch.zeros(
            win.units, dtype=win.pane.abs_sum.dtype, device=win.device
        )
