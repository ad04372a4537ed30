"""Tracking dead units during training: :class:`Monitor`.

A :class:`Monitor` is attached to a model for the length of a training loop::

    with dr.Monitor(model) as mon:
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            mon.step()                 # once per optimizer step
    mon.report().table()
    mon.to_csv("dead.csv")

What it keeps (``U`` units per activation call site, ``S`` sites):

* ``last_active`` ``(U,)`` int64 per site: the last *sampled* step on which the unit was
  active (z > 0 on at least one position, on any process), -1 if never. A unit is **dead
  over the window** at step ``t`` when it was not active on any sampled step of the last
  ``window`` steps: ``last_active < max(first_step, t - window + 1)``. This is
  :func:`deadrelu.classify.dead_mask` applied to the window's active counts, kept as one
  integer per unit instead of a ring of ``window`` counts, so the state is O(U) whatever
  the window and the number of steps. It also gives :attr:`Monitor.dead_since` (the step
  after the last active one) and :meth:`Monitor.died_since` for free.
* ``revived_at`` ``(U,)`` int64 and ``was_dead`` ``(U,)`` bool: the last sampled step on
  which a dead unit came back, for :meth:`Monitor.revived_since`.
* two :class:`~deadrelu.stats.UnitStats` panes of ``window`` steps each (tumbling): the
  current one and the previous one. :meth:`Monitor.report` merges them, so a report covers
  the sampled steps of the last one to two windows (every statistic the scanner has:
  dead, dormant, rarely active, saturated).
* the history: one row per sampled step, the dead fraction of each site over the window.
  This is the only part that grows (S numbers per sampled step); everything per unit is
  fixed-size.

Why it samples (``every=10`` by default). Counting every unit on every step costs a few
reductions per activation, and the capture machinery itself (a pre- and a post-hook on
every submodule, and a torch-function mode over the forward for functional activations)
costs Python time on every call. The naive ``(out > 0).sum(dims)`` hook measured 1.07 to
1.28 x a training step on this project's CPU benchmarks. The Monitor counts on every
``every``-th step only, and in eager mode registers the capture hooks for those steps
only: an unsampled step runs the bare model, and attaching/removing the hooks once per
sampled step costs well under a millisecond (measured: cheaper than leaving flag-gated
hooks registered, whose torch-function mode alone intercepts every op of the forward).
A unit active on a sampled step is certainly alive; a unit inactive on all sampled steps
of the last ``window`` steps (default 100, so 10 sampled batches) is reported dead: with
sampling, "dead" means "not seen active on 10 batches", a lower bound on activity. Use
``every=1`` for exact per-step tracking. By default only the active counts, positions and
mean |out| are kept (``detail=False``), which is all dead, dormant and rarely-active need.

Host synchronisation: the hooks make none. At the end of a sampled step :meth:`step`
makes one small one (two integers per site: dead count and whether it was called) to
record the history and to warn; nothing else reads tensors back until you ask for a
report or an export.

Distributed (DDP): with ``torch.distributed`` initialised, the per-step statistics of
each sampled step are all-reduced across the process group inside :meth:`step`, before
they update the state, so every rank holds the same state and reports the same, global
totals: a unit is dead only if it was inactive on every rank's data. All call sites go in
a few packed collectives (:func:`deadrelu.stats.all_reduce_many`: about 4 per sampled
step, whatever the number of sites; one more per site with ``track_grad``). :meth:`step` is
therefore collective: every rank must call it, in step. Pass ``group=False`` to track
each rank's own data.

``torch.compile``: attach the Monitor **before** the compiled model's first call
(simplest: before ``torch.compile(model)``). Dynamo then traces the capture hooks into
the graph; the Monitor notices (``torch.compiler.is_compiling()`` inside its callback)
and keeps the hooks registered from then on, gated by its ``sampling`` flag, which dynamo
guards: the compiled model gets one graph with the counting and one without and switches
between them, and the counts are exact (``tests/test_compile.py``). Attached **after**
the compiled model has run, the hooks are silently not called: dynamo does not guard
hook dicts by default (``torch._dynamo.config.skip_nnmodule_hook_guards``), so the
cached graph runs without them. The Monitor then sees nothing, warns
(:class:`MonitorWarning`) at the first sampled step, and judges no unit (nothing is
reported dead); ``torch._dynamo.reset()`` after attaching makes dynamo retrace with the
hooks. A site that stops being called (for instance hooks removed under a compiled
model) is warned about too, and its units are not judged on such steps.

The optional zero-gradient check (``track_grad=True``, claim C2 of the notes): the
Monitor finds, on the first sampled step, the module whose output feeds each activation
(:func:`deadrelu.capture.producer_of`; a Linear, Conv or BatchNorm), registers gradient hooks on its
weight and bias, and on sampled steps records per unit whether any incoming weight or
bias received a non-zero gradient. :meth:`Monitor.check_zero_grad` then lists, per site,
the units dead over the window and those among them whose incoming parameters received
a non-zero gradient (empty, if the chain rule of the notes holds).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from deadrelu import activations
from deadrelu.capture import Site, attach
from deadrelu.classify import dead_mask
from deadrelu.graph import ProducerProbe
from deadrelu.report import Report, html_table, plot_history, tensor_from_json, tensor_to_json
from deadrelu.stats import Detail, UnitStats, all_reduce_many, detail_level

__all__ = [
    "History",
    "Monitor",
    "MonitorWarning",
    "ZeroGradCheck",
]

logger = logging.getLogger(__name__)

MONITOR_SCHEMA = "deadrelu.monitor/1"
_STATE_VERSION = 2  # 2: each site also keeps its Site (activation, kind, module)
_NEVER = -1


class MonitorWarning(UserWarning):
    """A layer's dead fraction crossed the Monitor's threshold, or the Monitor sees nothing."""


# --------------------------------------------------------------------------------------
# History
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# Producers: which module feeds an activation
# --------------------------------------------------------------------------------------

# --------------------------------------------------------------------------------------
# The Monitor
# --------------------------------------------------------------------------------------


@dataclass
class ZeroGradCheck:
    """Result of :meth:`Monitor.check_zero_grad` for one site.

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


class _SiteState:
    """Everything the Monitor keeps for one site; all tensors ``(U,)`` on one device."""

    def __init__(self, name: str, unit_dim: int, units: int, device: torch.device, detail: Detail):
        self.name = name
        self.unit_dim = unit_dim
        self.units = units
        self.step = UnitStats.empty(units, device, detail=detail)
        self.pane = UnitStats.empty(units, device, detail=detail)
        # allocated up front, so the state has its full size from the first call on
        self.prev: UnitStats | None = UnitStats.empty(units, device, detail=detail)
        self.last_active = torch.full((units,), _NEVER, dtype=torch.int64, device=device)
        self.last_seen = torch.tensor(_NEVER, dtype=torch.int64, device=device)
        self.revived_at = torch.full((units,), _NEVER, dtype=torch.int64, device=device)
        self.was_dead = torch.zeros(units, dtype=torch.bool, device=device)
        self.first_step = _NEVER
        self.grad_step: Tensor | None = None
        self.grad_last: Tensor | None = None

    @property
    def device(self) -> torch.device:
        return self.last_active.device

    def tensors(self) -> dict[str, Tensor]:
        out = {
            "last_active": self.last_active,
            "last_seen": self.last_seen,
            "revived_at": self.revived_at,
            "was_dead": self.was_dead,
        }
        if self.grad_last is not None:
            out["grad_last"] = self.grad_last
        return out

    def nbytes(self) -> int:
        """Bytes of every per-unit tensor (the per-step buffer included), as allocated: a
        statistics field the detail level does not update takes one element."""
        total = sum(t.numel() * t.element_size() for t in self.tensors().values())
        for stats in (self.step, self.pane, self.prev):
            if stats is not None:
                total += stats.nbytes
        if self.grad_step is not None:
            total += self.grad_step.numel() * self.grad_step.element_size()
        return total


def _jsonify(obj: Any) -> Any:
    """Tensors anywhere in dicts/lists -> ``{"tensor": tensor_to_json(t)}``."""
    if isinstance(obj, Tensor):
        return {"tensor": tensor_to_json(obj)}
    if isinstance(obj, Mapping):
        return {k: _jsonify(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonify(v) for v in obj]
    return obj


def _unjsonify(obj: Any) -> Any:
    """Inverse of :func:`_jsonify`."""
    if isinstance(obj, Mapping):
        if set(obj) == {"tensor"}:
            return tensor_from_json(obj["tensor"])
        return {k: _unjsonify(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unjsonify(v) for v in obj]
    return obj


def _site_module(name: str) -> str:
    """The module path a site name lives in: ``"blk.mlp:gelu#1"`` -> ``"blk.mlp"``."""
    return name.split("#", 1)[0].split(":", 1)[0]


def _saved_site(name: str, entry: Mapping[str, Any]) -> Site | None:
    """The :class:`Site` saved with a site's state (None in version-1 states)."""
    meta = entry.get("site")
    if meta is None:
        return None
    act = activations.get(meta["activation"])
    assert act is not None
    return Site(name, act, int(entry["unit_dim"]), meta["kind"], meta["module"])


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP / DataParallel / ``torch.compile`` wrappers."""
    for _ in range(4):
        inner = getattr(model, "_orig_mod", None)
        if isinstance(inner, nn.Module):
            model = inner
            continue
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
            continue
        break
    return model


def _default_group() -> Any:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.group.WORLD
    return None


class Monitor:
    """Track dead units of a model during training; see the module docstring.

    Args:
        model: the model (a DDP/compiled wrapper is unwrapped; attach before
            ``torch.compile``).
        every: count on every ``every``-th step (steps 0, every, 2*every, ...). 1 counts
            every step. Default 10: the Monitor then costs <= 5 % of a training step on
            the benchmarks of ``benchmarks/monitor_overhead.py``.
        window: a unit is dead when it was inactive on every sampled step of the last
            ``window`` steps. Default 100 (10 sampled batches at ``every=10``). Also the
            length of the report's panes.
        threshold: warn (:class:`MonitorWarning`) when a site's dead fraction over a full
            window rises to ``>= threshold``; again only after it fell below. ``None``:
            never warn.
        detail: which statistics to keep (:data:`deadrelu.stats.DETAIL_LEVELS`):
            "range" adds the z extrema and non-finite counts, needed for "saturated" in
            reports of ELU-like activations; "full" (or ``True``) also the z mean and
            variance. Default ``False`` ("counts"): dead, dormant and rarely active need
            only the active counts and mean |out|, and a sampled step of the benchmark
            CNN then costs several times less.
        track_grad: record whether dead units' incoming weights/bias receive gradient
            (see :meth:`check_zero_grad`).
        training_only: count only forwards run in ``model.training`` mode (evaluation
            passes inside the loop are ignored).
        unit_dim, functional: passed to :func:`deadrelu.capture.attach`.
        group: process group for the all-reduce; default: the world group when
            ``torch.distributed`` is initialised, else no reduction. ``False``: never
            reduce (each rank tracks its own data).
        hooks: ``"auto"`` (default): in eager mode the capture hooks are registered
            only during sampled steps and removed in between, so unsampled steps run the
            bare model (capture hooks every submodule and, with ``functional=True``, runs
            a torch-function mode over the whole forward: too costly to leave on). When
            the hooks run inside ``torch.compile`` (the Monitor was attached before the
            compiled model's first call), they stay registered from then on, gated by a
            flag, because dynamo does not see hooks added after it traced the model.
            ``"always"``: registered from :meth:`attach` to :meth:`detach`, gated by the
            flag.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        every: int = 10,
        window: int = 100,
        threshold: float | None = 0.5,
        detail: Detail = False,
        track_grad: bool = False,
        training_only: bool = True,
        unit_dim: int | None = None,
        functional: bool = True,
        group: Any = None,
        hooks: str = "auto",
    ) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1 (count on every k-th step), got {every}")
        if window < every:
            raise ValueError(
                f"window ({window}) must be >= every ({every}): a window must hold at "
                "least one sampled step"
            )
        if threshold is not None and not 0 < threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1] or None, got {threshold}")
        if hooks not in ("auto", "always"):
            raise ValueError(f"hooks must be 'auto' or 'always', got {hooks!r}")
        self.hooks = hooks
        self.model = _unwrap(model)
        self.every = every
        self.window = window
        self.threshold = threshold
        self.detail = detail_level(detail)
        self.track_grad = track_grad
        self.training_only = training_only
        self.unit_dim = unit_dim
        self.functional = functional
        self._group_arg = group
        self.step_count = 0
        self.pane_start = 0
        self._sampling = True
        self._attached = False
        self._sites: dict[str, _SiteState] = {}
        self._site_meta: dict[str, Site] = {}
        self._history = History()
        self._warned: set[str] = set()
        self._handle: Any = None
        self._grad_handles: list[Any] = []
        self._producers: dict[str, str | None] | None = None
        self._probe: ProducerProbe | None = None
        self._producers_found: dict[str, str | None] = {}
        self._pending: dict[str, dict[str, Tensor]] = {}
        self._warned_blind = False
        self._warned_unseen: set[str] = set()
        self._compiled = False
        self._entered: list[bool] = []
        self._update_sampling()

    # ---------------------------------------------------------------- lifecycle

    @property
    def attached(self) -> bool:
        """Whether the Monitor is attached (between :meth:`attach` and :meth:`detach`)."""
        return self._attached

    @property
    def hooks_registered(self) -> bool:
        """Whether the capture hooks are registered right now."""
        return self._handle is not None

    def attach(self) -> Monitor:
        """Start monitoring (idempotent); returns ``self``.

        The capture hooks are registered now. With ``hooks="always"`` they stay until
        :meth:`detach`; with ``hooks="auto"`` :meth:`step` keeps them for the sampled
        steps only (for good, once they were seen running compiled).
        """
        if self._attached:
            return self
        self._attached = True
        # registered now even if this step is not sampled: should the model be compiled
        # before its next call, dynamo traces the hooks and the Monitor keeps them
        self._register()
        if self.track_grad:
            if self._producers is None:
                self._start_probe()
            else:
                self._register_grad_hooks()
        return self

    def detach(self) -> None:
        """Remove every hook the Monitor registered (state is kept; :meth:`attach` resumes)."""
        self._attached = False
        self._unregister()
        self._remove_probe()
        for h in self._grad_handles:
            h.remove()
        self._grad_handles.clear()

    def _register(self) -> None:
        if self._handle is None:
            self._handle = attach(
                self.model, self._on_call, unit_dim=self.unit_dim, functional=self.functional
            )

    def _unregister(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def __enter__(self) -> Monitor:
        # nested or re-entered blocks: only the block that attached detaches
        self._entered.append(not self._attached)
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        if self._entered.pop():
            self.detach()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Within this block nothing is counted (e.g. an evaluation pass)."""
        saved = self._sampling
        self._sampling = False
        try:
            yield
        finally:
            self._sampling = saved

    # ---------------------------------------------------------------- hot path

    @property
    def sampling(self) -> bool:
        """Whether the current step is counted."""
        return self._sampling

    def _update_sampling(self) -> None:
        self._sampling = self.step_count % self.every == 0

    def _on_call(self, site: Site, z: Tensor, out: Tensor) -> None:
        """Capture callback: reduce one activation call into the step's buffers."""
        if torch.compiler.is_compiling():
            self._compiled = True  # dynamo traced the hooks: keep them registered from now
        if not self._sampling:
            return
        if self.training_only and not self.model.training:
            return
        state = self._sites.get(site.name)
        if state is None:
            state = self._new_site(site, z)
        elif state.device != z.device:
            self._move(state, z.device)
        state.step.update(z, out, site.unit_dim)
        if self._probe is not None and site.name not in self._producers_found:
            self._producers_found[site.name] = self._probe.producer(z)

    def _new_site(self, site: Site, z: Tensor) -> _SiteState:
        d = site.unit_dim % max(z.dim(), 1) if z.dim() > 1 else 0
        units = int(z.shape[d]) if z.dim() >= 1 else 1
        state = _SiteState(site.name, site.unit_dim, units, z.device, self.detail)
        pending = self._pending.pop(site.name, None)
        if pending is not None:
            self._restore_site(state, pending)
        self._sites[site.name] = state
        self._site_meta[site.name] = site
        if site.name not in self._history.sites:
            self._history.sites.append(site.name)
            self._history.units.append(units)
        return state

    def _move(self, state: _SiteState, device: torch.device) -> None:
        state.step = state.step.to(device)
        state.pane = state.pane.to(device)
        if state.prev is not None:
            state.prev = state.prev.to(device)
        state.last_active = state.last_active.to(device)
        state.last_seen = state.last_seen.to(device)
        state.revived_at = state.revived_at.to(device)
        state.was_dead = state.was_dead.to(device)
        if state.grad_last is not None and state.grad_step is not None:
            state.grad_last = state.grad_last.to(device)
            state.grad_step = state.grad_step.to(device)

    # ---------------------------------------------------------------- steps

    def step(self) -> None:
        """End the current training step; call once per optimizer step, on every rank.

        On a sampled step: all-reduces the step's statistics (under DDP), updates the
        per-unit state, records a history row and warns on crossings (one small host
        sync). Then advances the step counter.
        """
        if not self._attached:
            self.step_count += 1
            self._update_sampling()
            return
        if self._sampling:
            self._finalize(self.step_count)
        self.step_count += 1
        self._update_sampling()
        if self.hooks == "auto" and not self._compiled:
            if self._sampling:
                self._register()
            else:
                self._unregister()

    def _group(self) -> Any:
        if self._group_arg is False:
            return None
        return self._group_arg if self._group_arg is not None else _default_group()

    def _finalize(self, t: int) -> None:
        self._remove_probe()
        group = self._group()
        if not self._sites:
            if not self._warned_blind:
                self._warned_blind = True
                warnings.warn(
                    "the Monitor saw no activation call during a sampled step. If the "
                    "model is compiled, attach the Monitor before torch.compile (hooks "
                    "added after the compiled model ran are not called) or call "
                    "torch._dynamo.reset(); if the model ran in eval mode, pass "
                    "training_only=False",
                    MonitorWarning,
                    stacklevel=3,
                )
            return
        if self.track_grad and self._producers is None:
            self._producers = dict(self._producers_found)
            self._register_grad_hooks()
        names = sorted(self._sites)
        states = [self._sites[n] for n in names]
        if group is not None:
            all_reduce_many([st.step for st in states], group)  # a few packed collectives
            for st in states:
                if st.grad_step is not None:
                    import torch.distributed as dist

                    dist.all_reduce(st.grad_step, group=group)
        if t >= self.pane_start + self.window:  # panes [k*window, (k+1)*window)
            adjacent = t < self.pane_start + 2 * self.window
            for st in states:
                old = st.prev
                st.prev = st.pane
                if not adjacent:
                    st.prev.reset()
                if old is None:
                    old = UnitStats.empty(st.units, st.device, detail=self.detail)
                old.reset()
                st.pane = old
            self.pane_start += (t - self.pane_start) // self.window * self.window
        counts: list[Tensor] = []
        for st in states:
            if st.first_step == _NEVER:
                st.first_step = t
            seen = st.step.positions > 0
            st.last_seen = torch.where(seen, t, st.last_seen)
            st.last_active = torch.where(st.step.active > 0, t, st.last_active)
            if st.grad_step is not None and st.grad_last is not None:
                st.grad_last = torch.where(st.grad_step > 0, t, st.grad_last)
                st.grad_step.zero_()
            dead = self._dead(st, t)
            revived = st.was_dead & ~dead
            st.revived_at = torch.where(revived, t, st.revived_at)
            st.was_dead = dead
            st.pane.merge(st.step)
            st.step.reset()
            counts.append(dead.sum())
            counts.append(seen.to(torch.int64))
        host = torch.stack(counts).tolist()  # the one host sync of a sampled step
        by_name = dict(zip(names, host[0::2], strict=True))
        self._warn_unseen(t, [n for n, flag in zip(names, host[1::2], strict=True) if not flag])
        self._history.steps.append(t)
        self._history.dead.append([by_name.get(n) for n in self._history.sites])
        if self.threshold is not None:
            self._maybe_warn(t, by_name)

    def _window_start(self, st: _SiteState, t: int) -> int:
        return max(st.first_step, t - self.window + 1)

    def _dead(self, st: _SiteState, t: int) -> Tensor:
        """``(U,)`` bool: dead over the window ending at step ``t`` (classify's definition).

        Only a site that was called on a sampled step of the window is judged: a site
        not run at all (a branch not taken) has no evidence, and its units are not dead.
        """
        start = self._window_start(st, t)
        in_window = (st.last_active >= start).to(torch.int64)
        return dead_mask(in_window) & (st.last_seen >= start)

    def _warn_unseen(self, t: int, unseen: list[str]) -> None:
        for name in unseen:
            if name in self._warned_unseen:
                continue
            self._warned_unseen.add(name)
            warnings.warn(
                f"step {t}: site {name!r} was not called during this sampled step, so its "
                "units are not judged on it (a branch not taken, or a compiled model that "
                "no longer runs the hooks: attach the Monitor before torch.compile)",
                MonitorWarning,
                stacklevel=4,
            )

    def _maybe_warn(self, t: int, dead_counts: Mapping[str, int]) -> None:
        assert self.threshold is not None
        for name, count in dead_counts.items():
            st = self._sites[name]
            full = t - st.first_step + 1 >= self.window
            frac = count / st.units
            if full and frac >= self.threshold and name not in self._warned:
                self._warned.add(name)
                msg = (
                    f"step {t}: {count} of {st.units} units ({frac:.0%}) of {name!r} are dead "
                    f"(inactive on every sampled step of the last {self.window} steps), "
                    f">= threshold {self.threshold:.0%}. Lower the learning rate, use a "
                    "small positive bias or a ReLU variant (see deadrelu.remedies)"
                )
                warnings.warn(msg, MonitorWarning, stacklevel=4)
                logger.warning(msg)
            elif frac < self.threshold:
                self._warned.discard(name)

    # ---------------------------------------------------------------- queries

    @property
    def sites(self) -> list[str]:
        """Names of the sites seen so far, in first-seen order."""
        return [n for n in self._history.sites if n in self._sites]

    def _last_step(self) -> int:
        """The last finalized sampled step (-1 if none)."""
        return self._history.steps[-1] if self._history.steps else _NEVER

    def _per_site(self, fn: Callable[[_SiteState, int], Tensor]) -> dict[str, Tensor]:
        t = self._last_step()
        out: dict[str, Tensor] = {}
        for name in self.sites:
            st = self._sites[name]
            if t == _NEVER or st.first_step == _NEVER:
                out[name] = torch.zeros(0, dtype=torch.int64)
            else:
                out[name] = torch.nonzero(fn(st, t)).flatten().cpu()
        return out

    def _dead_indices(self) -> dict[str, Tensor]:
        """``{site: (D,) int64}`` indices of the units dead over the window."""
        return self._per_site(self._dead)

    def dead_units(self, site: str) -> list[int]:
        """Indices of the units of ``site`` dead over the window at the last sampled step,
        e.g. ``mon.dead_units("relu1")``; :meth:`all_units` gives every site."""
        if site not in self.sites:
            raise KeyError(f"no call site {site!r} seen by this Monitor; sites: {self.sites}")
        return self._dead_indices()[site].tolist()

    def all_units(self, kind: str = "dead") -> dict[str, list[int]]:
        """``{site: indices}`` of class ``kind`` for every site (empty lists included).

        "dead" is the Monitor's own (over the exact sliding window, as :meth:`dead_units`);
        the other classes come from :meth:`report` (the last one to two windows).
        """
        if kind == "dead":
            return {n: idx.tolist() for n, idx in self._dead_indices().items()}
        return self.report().all_units(kind)

    def dead_fraction(self) -> dict[str, float]:
        """``{site: fraction}`` of units dead over the window, at the last sampled step."""
        return {n: idx.numel() / self._sites[n].units for n, idx in self._dead_indices().items()}

    def died_since(self, step: int) -> dict[str, list[int]]:
        """``{site: indices}`` of the units dead now whose :attr:`dead_since` is ``>= step``
        (they died at or after ``step``; a never-active unit counts from its site's first
        sampled step)."""
        return {
            n: torch.nonzero((d >= step) & (d != _NEVER)).flatten().tolist()
            for n, d in self.dead_since.items()
        }

    def revived_since(self, step: int) -> dict[str, list[int]]:
        """``{site: indices}`` alive now that came back from dead on a sampled step ``>= step``."""
        found = self._per_site(lambda st, t: ~self._dead(st, t) & (st.revived_at >= step))
        return {n: idx.tolist() for n, idx in found.items()}

    @property
    def dead_since(self) -> dict[str, Tensor]:
        """``{site: (U,) int64}``: for a dead unit the step after its last active sampled step
        (its first sampled step if never active), -1 for units alive now."""
        t = self._last_step()
        out: dict[str, Tensor] = {}
        for name in self.sites:
            st = self._sites[name]
            if t == _NEVER or st.first_step == _NEVER:
                out[name] = torch.full((st.units,), _NEVER, dtype=torch.int64)
                continue
            since = torch.where(st.last_active == _NEVER, st.first_step, st.last_active + 1)
            out[name] = torch.where(self._dead(st, t), since, _NEVER).cpu()
        return out

    @property
    def history(self) -> History:
        """The dead fraction per site over steps (one row per sampled step)."""
        return self._history

    def to_csv(self, path: str | Path | None = None) -> str:
        """The history as CSV (see :meth:`History.to_csv`)."""
        return self._history.to_csv(path)

    def to_json(self) -> str:
        """The history as JSON (see :meth:`History.as_dict`)."""
        return self._history.to_json()

    def plot_history(self, path: str | Path) -> Path:
        """Save the history as a PNG (see :meth:`History.plot`)."""
        return self._history.plot(path)

    def statistics(self) -> dict[str, UnitStats]:
        """``{site: UnitStats}`` over the last one to two windows (copies, on CPU)."""
        out: dict[str, UnitStats] = {}
        for name in self.sites:
            st = self._sites[name]
            stats = st.pane.to("cpu")
            if st.prev is not None:
                stats.merge(st.prev)
            out[name] = stats
        return out

    def report(self) -> Report:
        """A :class:`deadrelu.report.Report` of the last one to two windows of sampled steps.

        Its ``meta`` says which steps it covers. Its statistics (dormant, rarely
        active, saturated ...) cover the panes; its "dead" units are the Monitor's own,
        over the exact sliding window (:meth:`dead_units`), so the two always agree
        (``report.given`` holds that mask, and the JSON keeps it).
        """
        stats = self.statistics()
        sites = {n: self._site_meta[n] for n in stats}
        first = min((st.first_step for st in self._sites.values()), default=_NEVER)
        start = max(first, self.pane_start - self.window, 0)
        meta = {
            "source": "Monitor",
            "every": self.every,
            "window": self.window,
            "steps": [start, self._last_step()],
            "sampled_steps": len([t for t in self._history.steps if t >= start]),
            "dead": f"inactive on every sampled step of the last {self.window} steps",
        }
        t = self._last_step()
        given = {}
        for name in stats:
            st = self._sites[name]
            if t != _NEVER and st.first_step != _NEVER:
                given[name] = {"dead": self._dead(st, t).cpu()}
        return Report(stats, sites, meta=meta, given=given)

    def state_nbytes(self) -> int:
        """Bytes of the per-unit state (every tensor the Monitor keeps; not the history)."""
        return sum(st.nbytes() for st in self._sites.values())

    # ---------------------------------------------------------------- zero gradient (C2)

    def _start_probe(self) -> None:
        """Before the first sampled forward: remember which module produced which tensor."""
        self._producers_found = {}
        self._probe = ProducerProbe(self.model)

    def _remove_probe(self) -> None:
        if self._probe is not None:
            self._probe.remove()
            self._probe = None

    def _register_grad_hooks(self) -> None:
        assert self._producers is not None
        for h in self._grad_handles:
            h.remove()
        self._grad_handles = []
        for site, prod in self._producers.items():
            st = self._sites.get(site)
            if prod is None or st is None:
                continue
            module = self.model.get_submodule(prod)
            if st.grad_step is None:
                st.grad_step = torch.zeros(st.units, dtype=st.pane.abs_sum.dtype, device=st.device)
            if st.grad_last is None:
                st.grad_last = torch.full((st.units,), _NEVER, dtype=torch.int64, device=st.device)
            for pname in ("weight", "bias"):
                p = getattr(module, pname, None)
                if isinstance(p, Tensor) and p.requires_grad and p.shape[:1] == (st.units,):
                    self._grad_handles.append(p.register_hook(self._grad_hook(st)))

    def _grad_hook(self, st: _SiteState) -> Callable[[Tensor], None]:
        def hook(grad: Tensor) -> None:
            if not self._sampling or st.grad_step is None:
                return
            g = grad.detach().abs()
            per_unit = g.reshape(g.shape[0], -1).sum(1) if g.dim() > 1 else g
            st.grad_step.add_(per_unit.to(st.grad_step.dtype))

        return hook

    def check_zero_grad(self) -> dict[str, ZeroGradCheck]:
        """Claim C2: did the dead units' incoming weights and bias get exactly zero gradient?

        Needs ``track_grad=True``. For each site: the units dead over the window, and
        those of them whose producer's weight or bias rows received a non-zero gradient
        on a sampled step inside the window.
        """
        if not self.track_grad:
            raise RuntimeError("check_zero_grad needs Monitor(..., track_grad=True)")
        t = self._last_step()
        out: dict[str, ZeroGradCheck] = {}
        producers = self._producers or {}
        for name, dead_idx in self._dead_indices().items():
            st = self._sites[name]
            prod = producers.get(name)
            if prod is None or st.grad_last is None or t == _NEVER:
                out[name] = ZeroGradCheck(prod, dead_idx, torch.zeros(0, dtype=torch.int64))
                continue
            got = self._dead(st, t) & (st.grad_last >= self._window_start(st, t))
            out[name] = ZeroGradCheck(prod, dead_idx, torch.nonzero(got).flatten().cpu())
        return out

    @property
    def producers(self) -> dict[str, str | None]:
        """``{site: producer module name}`` found on the first sampled step (``track_grad``)."""
        return dict(self._producers or {})

    # ---------------------------------------------------------------- the result protocol

    def __repr__(self) -> str:
        dead = sum(len(v) for v in self.all_units("dead").values())
        units = sum(self._sites[n].units for n in self.sites)
        return (
            f"Monitor(step={self.step_count}, every={self.every}, window={self.window}, "
            f"sites={len(self.sites)}, dead={dead}/{units}, attached={self.attached})"
        )

    def _repr_html_(self) -> str:
        rows = []
        for name, frac in self.dead_fraction().items():
            st = self._sites[name]
            rows.append([name, st.units, round(frac * st.units), f"{100 * frac:.1f}"])
        title = (
            f"deadrelu Monitor at step {self.step_count} (dead: inactive on every sampled "
            f"step of the last {self.window} steps, every={self.every})"
        )
        return html_table(title, ["site", "units", "dead", "dead %"], rows)

    def settings(self) -> dict[str, Any]:
        """The constructor arguments that :meth:`from_dict` rebuilds (``group`` excepted)."""
        return {
            "every": self.every,
            "window": self.window,
            "threshold": self.threshold,
            "detail": self.detail,
            "track_grad": self.track_grad,
            "training_only": self.training_only,
            "unit_dim": self.unit_dim,
            "functional": self.functional,
            "hooks": self.hooks,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"schema", "settings", "dead", "state"}``: the settings, the dead
        units per site at the last sampled step, and :meth:`state_dict` with every tensor
        as ``{"tensor": {"dtype", "shape", "data"}}``. :meth:`from_dict` resumes from it."""
        settings = self.settings()
        if not (settings["unit_dim"] is None or isinstance(settings["unit_dim"], int)):
            settings["unit_dim"] = None  # a mapping/callable: pass unit_dim= to from_dict
        return {
            "schema": MONITOR_SCHEMA,
            "settings": settings,
            "dead": self.all_units("dead"),
            "state": _jsonify(self.state_dict()),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], model: nn.Module, **overrides: Any) -> Monitor:
        """A Monitor on ``model`` resumed from :meth:`to_dict` (``overrides``: constructor
        arguments to change, e.g. ``group``); not attached."""
        if not isinstance(data, Mapping) or data.get("schema") != MONITOR_SCHEMA:
            raise ValueError(
                f"not a Monitor dict (schema {MONITOR_SCHEMA!r} expected): was it made by "
                "Monitor.to_dict()?"
            )
        mon = cls(model, **{**data["settings"], **overrides})
        mon.load_state_dict(_unjsonify(data["state"]))
        return mon

    # ---------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: settings, step counter, per-site state, history."""
        sites: dict[str, Any] = {}
        for name, st in self._sites.items():
            entry: dict[str, Any] = {k: v.detach().cpu().clone() for k, v in st.tensors().items()}
            entry["unit_dim"] = st.unit_dim
            entry["first_step"] = st.first_step
            meta = self._site_meta.get(name)
            if meta is not None:
                entry["site"] = {
                    "activation": str(meta.activation),
                    "kind": meta.kind,
                    "module": meta.module,
                }
            entry["pane"] = st.pane.to("cpu").state_dict()
            entry["prev"] = None if st.prev is None else st.prev.to("cpu").state_dict()
            sites[name] = entry
        h = self._history
        return {
            "version": _STATE_VERSION,
            "every": self.every,
            "window": self.window,
            "step": self.step_count,
            "pane_start": self.pane_start,
            "sites": sites,
            "producers": None if self._producers is None else dict(self._producers),
            "history": {
                "steps": list(h.steps),
                "sites": list(h.sites),
                "units": list(h.units),
                "dead": [list(r) for r in h.dead],
            },
            "warned": sorted(self._warned),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from :meth:`state_dict` (before or after :meth:`attach`).

        Checked up front, before anything changes: the version, ``every`` and ``window``,
        that every saved site names a module of this model, and, for the sites this
        Monitor has already seen, the number of units. The restored state answers
        queries (:meth:`dead_fraction`, :meth:`report` ...) at once; its tensors move to
        the activation's device at the next counted forward.

        Raises:
            ValueError: naming the mismatch (another model's state, other settings).
        """
        version = state.get("version")
        if version not in (1, _STATE_VERSION):
            raise ValueError(
                f"Monitor state version {version!r} is not supported "
                f"(expected {_STATE_VERSION}); was it made by Monitor.state_dict()?"
            )
        if state["every"] != self.every or state["window"] != self.window:
            raise ValueError(
                f"state was saved with every={state['every']}, window={state['window']}; "
                f"this Monitor has every={self.every}, window={self.window}: build it with "
                "the same settings"
            )
        self._check_sites(state["sites"])
        self.step_count = int(state["step"])
        self.pane_start = int(state["pane_start"])
        self._update_sampling()
        hist = state["history"]
        self._history = History(
            steps=list(hist["steps"]),
            sites=list(hist["sites"]),
            units=list(hist["units"]),
            dead=[list(r) for r in hist["dead"]],
        )
        self._warned = set(state.get("warned", []))
        prods = state.get("producers")
        self._producers = None if prods is None else dict(prods)
        old = self._sites
        self._sites = {}
        self._pending = {}
        for name, entry in state["sites"].items():
            cur = old.get(name)
            units = int(entry["last_active"].shape[0])
            device = cur.device if cur is not None else torch.device("cpu")
            meta = self._site_meta.get(name) or _saved_site(name, entry)
            if meta is None:  # a version-1 state: restored when the site is first called
                self._pending[name] = dict(entry)
                continue
            st = _SiteState(name, entry["unit_dim"], units, device, self.detail)
            self._restore_site(st, entry)
            self._sites[name] = st
            self._site_meta[name] = meta
        if self.track_grad and self._producers is not None and self.attached:
            self._register_grad_hooks()

    def _check_sites(self, saved: Mapping[str, Any]) -> None:
        """Raise, naming them, on saved sites that cannot belong to this model."""
        modules = dict(self.model.named_modules())
        missing = [n for n in saved if _site_module(n) not in modules]
        if missing:
            raise ValueError(
                f"the saved Monitor state has sites {missing} whose modules this model "
                f"({type(self.model).__name__}) does not have: it was saved from another "
                "model; load it into the same architecture"
            )
        wrong = [
            f"{n!r}: saved {int(e['last_active'].shape[0])}, model {self._sites[n].units}"
            for n, e in saved.items()
            if n in self._sites and int(e["last_active"].shape[0]) != self._sites[n].units
        ]
        if wrong:
            raise ValueError(
                f"the saved Monitor state has other unit counts than this model "
                f"({'; '.join(wrong)}): load it into the same architecture"
            )

    def _restore_site(self, st: _SiteState, entry: Mapping[str, Any]) -> None:
        units = int(entry["last_active"].shape[0])
        if units != st.units:
            raise ValueError(
                f"site {st.name!r}: saved state has {units} units, the model has {st.units}; "
                "load the state into the same architecture"
            )
        dev = st.device
        st.last_active = entry["last_active"].to(dev).clone()
        st.last_seen = entry["last_seen"].to(dev).clone()
        st.revived_at = entry["revived_at"].to(dev).clone()
        st.was_dead = entry["was_dead"].to(dev).clone()
        st.first_step = int(entry["first_step"])
        st.pane = UnitStats.from_state_dict(entry["pane"], dev)
        st.prev = None if entry["prev"] is None else UnitStats.from_state_dict(entry["prev"], dev)
        if "grad_last" in entry:
            st.grad_last = entry["grad_last"].to(dev).clone()
            st.grad_step = torch.zeros(units, dtype=st.pane.abs_sum.dtype, device=dev)
