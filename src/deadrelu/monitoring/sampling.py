"""The Monitor's sampling part: which steps are counted, and when the capture hooks are on.

:class:`Sampler` keeps the step counter and says whether the current step is counted
(steps 0, ``every``, 2 ``every``, ...; nothing inside :meth:`Sampler.paused`).
:class:`CaptureHooks` owns the :func:`deadrelu.capture.attach` handle: with ``mode="auto"``
it is registered for the sampled steps only (an unsampled step runs the bare model), and
for good once the hooks were seen running inside ``torch.compile`` (dynamo does not see
hooks added after it traced the model); with ``mode="always"`` from attach to detach.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from deadrelu.capture import (
    CaptureCallback,
    InplaceCallbacks,
    Site,
    UnitDim,
    attach,
    warn_unrecognised,
)

__all__ = ["HOOK_MODES", "CaptureHooks", "Sampler"]

#: The values of ``Monitor(hooks=...)``.
HOOK_MODES = ("auto", "always")


class Sampler:
    """The step counter and whether the current step is counted.

    Args:
        every: count on every ``every``-th step (>= 1).
    """

    def __init__(self, every: int) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1 (count on every k-th step), got {every}")
        self.every = every
        self.step = 0
        self.sampling = True

    def sampled(self, step: int) -> bool:
        """Whether step ``step`` is a counted one."""
        return step % self.every == 0

    def set_step(self, step: int) -> None:
        """Jump to ``step`` (a restored checkpoint)."""
        self.step = step
        self.sampling = self.sampled(step)

    def advance(self) -> None:
        """End the current step."""
        self.set_step(self.step + 1)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Within this block nothing is counted."""
        saved = self.sampling
        self.sampling = False
        try:
            yield
        finally:
            self.sampling = saved


class CaptureHooks:
    """The capture handle of one Monitor on one model; registered on demand.

    Args:
        model: the plain model (wrappers already removed).
        callback: ``callback(site, z, out)`` for every activation call.
        unit_dim, functional: passed to :func:`deadrelu.capture.attach`.
        mode: one of :data:`HOOK_MODES`.
        inplace: ``(before(site, z), after(site, out))`` for in-place activation modules,
            passed to :func:`deadrelu.capture.attach` (no copy of their ``z``); ``None``:
            ``callback`` gets a copy of ``z``.
    """

    def __init__(
        self,
        model: nn.Module,
        callback: CaptureCallback,
        *,
        unit_dim: UnitDim = None,
        functional: bool = True,
        mode: str = "auto",
        inplace: InplaceCallbacks | None = None,
    ) -> None:
        if mode not in HOOK_MODES:
            raise ValueError(f"hooks must be 'auto' or 'always', got {mode!r}")
        self.model = model
        self.mode = mode
        self.compiled = False
        self._callback = callback
        self._unit_dim = unit_dim
        self._functional = functional
        self._inplace = inplace
        self._handle: Any = None
        self._unrecognised: dict[str, str] = {}  # already warned about

    @property
    def unrecognised(self) -> dict[str, str]:
        """``{module path: class name}`` of the activation-like modules deadrelu does not
        know that ran while the hooks were registered (see
        :attr:`deadrelu.capture.CaptureHandle.unrecognised`)."""
        live = self._handle.unrecognised if self._handle is not None else {}
        return {**self._unrecognised, **live}

    @property
    def registered(self) -> bool:
        """Whether the hooks are registered right now."""
        return self._handle is not None

    def on_call(self, site: Site, z: Tensor, out: Tensor) -> None:
        """The registered callback: notes a compiled trace, then calls the Monitor's."""
        if torch.compiler.is_compiling():
            self.compiled = True  # dynamo traced the hooks: keep them registered from now
        self._callback(site, z, out)

    def on_z(self, site: Site, z: Tensor) -> None:
        """The registered ``before`` of an in-place activation module (see ``inplace``)."""
        if torch.compiler.is_compiling():
            self.compiled = True
        assert self._inplace is not None
        self._inplace[0](site, z)

    def on_out(self, site: Site, out: Tensor) -> None:
        """The registered ``after`` of an in-place activation module (see ``inplace``)."""
        if torch.compiler.is_compiling():
            self.compiled = True
        assert self._inplace is not None
        self._inplace[1](site, out)

    def register(self) -> None:
        """Register the hooks (idempotent)."""
        if self._handle is None:
            self._handle = attach(
                self.model,
                self.on_call,
                unit_dim=self._unit_dim,
                functional=self._functional,
                inplace=None if self._inplace is None else (self.on_z, self.on_out),
            )

    def unregister(self) -> None:
        """Remove the hooks (idempotent)."""
        if self._handle is not None:
            found = self._handle.unrecognised
            new = {p: c for p, c in found.items() if p not in self._unrecognised}
            self._unrecognised.update(new)
            warn_unrecognised(new, stacklevel=4)  # once per module, for the Monitor's user
            self._handle.remove()
            self._handle = None

    def follow(self, sampling: bool) -> None:
        """After a step: in "auto" mode, keep the hooks for a sampled step only."""
        if self.mode == "auto" and not self.compiled:
            if sampling:
                self.register()
            else:
                self.unregister()
