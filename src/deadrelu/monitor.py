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
A ReLU site is reduced from ``z`` alone (its output is ``relu(z)``); an in-place activation
module (``nn.ReLU(inplace=True)``) is reduced in its pre-hook, before it overwrites ``z``,
without copying ``z`` (with ``track_grad=True`` ``z`` is still copied, so the producers
that the zero-gradient check finds stay exactly as they were).

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

FSDP2 (``torch.distributed.fsdp.fully_shard``) works the same way
(``tests/test_fsdp.py``, 2 gloo processes on CPU): ``fully_shard`` wraps nothing, it swaps
each sharded module's class for ``FSDP<Class>`` in place, so site names are the plain
model's, activation modules are still recognised (by class hierarchy), and the
activations the hooks see are ordinary tensors computed with the all-gathered weights.
:func:`deadrelu.remedies.recycle` edits the sharded ``DTensor`` parameters (and their
optimizer state) through full copies, collectively: call it on every rank.
``track_grad=True`` is refused under FSDP2 (the sharded parameters get their gradients by
reduce-scatter, not autograd, so the gradient hooks would never fire).

Wrappers that insert a module level (FSDP1's ``FullyShardedDataParallel``, activation
checkpointing's ``checkpoint_wrapper`` / ``apply_activation_checkpointing``, a
``torch.compile``'d submodule) add ``_fsdp_wrapped_module.``, ``_checkpoint_wrapped_module.``
or ``_orig_mod.`` to module paths; site names drop them
(:func:`deadrelu.graph.plain_name`), so they are the plain model's, and
:func:`deadrelu.graph.submodule` finds the real layers back (``tests/test_wrappers.py``).
Under activation checkpointing the backward pass runs the checkpointed forwards again; the
Monitor ignores activation calls made during a backward pass (autograd's graph task is
running), so every position is counted once. FSDP1 (CPU, gloo) counts as DDP does;
``track_grad=True`` and :func:`deadrelu.remedies.recycle` refuse it (flattened, sharded
parameters): use FSDP2.

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
(:class:`deadrelu.graph.ProducerProbe`; a Linear, Conv or BatchNorm), registers gradient
hooks on its weight and bias, and on sampled steps records per unit whether any incoming
weight or bias received a non-zero gradient. :meth:`Monitor.check_zero_grad` then lists,
per site, the units dead over the window and those among them whose incoming parameters
received a non-zero gradient (empty, if the chain rule of the notes holds).

Several Monitors may watch one model at once: each has its own hooks and state, and they
count independently. ``with mon:`` blocks nest: only the block that attached detaches.

The structure: the Monitor is an orchestrator over small parts (:mod:`deadrelu.monitoring`):
:class:`~deadrelu.monitoring.Sampler` and :class:`~deadrelu.monitoring.CaptureHooks`
(which steps count, when the hooks are on), one :class:`~deadrelu.monitoring.SiteWindow`
per site (the window state and report panes), :class:`~deadrelu.monitoring.History`,
:class:`~deadrelu.monitoring.ZeroGradProbe` and :class:`~deadrelu.monitoring.Alerts`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from deadrelu.batches import require_materialised
from deadrelu.capture import Site
from deadrelu.graph import fsdp1_modules, fsdp_modules
from deadrelu.integrations.tensorboard import log_to
from deadrelu.monitoring import (
    NEVER,
    Alerts,
    CaptureHooks,
    History,
    MonitorWarning,
    Panes,
    Sampler,
    SiteWindow,
    ZeroGradCheck,
    ZeroGradProbe,
    checkpoint,
)
from deadrelu.report import Report, html_table
from deadrelu.scan_html import write_html
from deadrelu.stats import Detail, UnitStats, all_reduce_many, default_group, detail_level

__all__ = [
    "MONITOR_SCHEMA",
    "History",
    "Monitor",
    "MonitorWarning",
    "ZeroGradCheck",
]

MONITOR_SCHEMA = "deadrelu.monitor/1"
_STATE_VERSION = 2  # 2: each site also keeps its Site (activation, kind, module)


class Monitor:
    """Track dead units of a model during training; see the module docstring.

    Args:
        model: the model (a DDP/compiled wrapper is unwrapped; attach before
            ``torch.compile``). Under FSDP1 or activation-checkpoint wrappers the site
            names are the unwrapped model's (module docstring).
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
        self._sampler = Sampler(every)
        if window < every:
            raise ValueError(
                f"window ({window}) must be >= every ({every}): a window must hold at "
                "least one sampled step"
            )
        self._alerts = Alerts(threshold, window)
        self.model = _unwrap(model)
        require_materialised(self.model)
        if track_grad:
            _refuse_grad_under_fsdp(self.model)
        # in-place activation modules (nn.ReLU(inplace=True)): z reduced in the pre-hook,
        # the output in the post-hook, no copy of z; with track_grad the copy stays (the
        # producer probe identifies z by identity: its findings stay as they were)
        self._hooks = CaptureHooks(
            self.model,
            self._on_call,
            unit_dim=unit_dim,
            functional=functional,
            mode=hooks,
            inplace=None if track_grad else (self._on_z, self._on_out),
        )
        self.every = every
        self.window = window
        self.threshold = threshold
        self.detail = detail_level(detail)
        self.track_grad = track_grad
        self.training_only = training_only
        self.unit_dim = unit_dim
        self.functional = functional
        self.hooks = hooks
        self._group_arg = group
        self._panes = Panes(window)
        self._sites: dict[str, SiteWindow] = {}
        self._site_meta: dict[str, Site] = {}
        self._history = History()
        self._grad = ZeroGradProbe(self.model, lambda: self._sampler.sampling)
        self._pending: dict[str, dict[str, Any]] = {}
        self._attached = False
        self._entered: list[bool] = []

    # ---------------------------------------------------------------- lifecycle

    @property
    def step_count(self) -> int:
        """Steps ended so far (:meth:`step` calls, restored ones included)."""
        return self._sampler.step

    @property
    def pane_start(self) -> int:
        """First step of the current report pane."""
        return self._panes.start

    @property
    def attached(self) -> bool:
        """Whether the Monitor is attached (between :meth:`attach` and :meth:`detach`)."""
        return self._attached

    @property
    def hooks_registered(self) -> bool:
        """Whether the capture hooks are registered right now."""
        return self._hooks.registered

    @property
    def sampling(self) -> bool:
        """Whether the current step is counted."""
        return self._sampler.sampling

    def attach(self) -> Monitor:
        """Start monitoring (idempotent); returns ``self``.

        The capture hooks are registered now. With ``hooks="always"`` they stay until
        :meth:`detach`; with ``hooks="auto"`` :meth:`step` keeps them for the sampled
        steps only (for good, once they were seen running compiled).
        """
        if self._attached:
            return self
        if self.track_grad:
            _refuse_grad_under_fsdp(self.model)  # fully_shard may have run since __init__
        self._attached = True
        # registered now even if this step is not sampled: should the model be compiled
        # before its next call, dynamo traces the hooks and the Monitor keeps them
        self._hooks.register()
        if self.track_grad:
            self._grad.start(self._sites)
        return self

    def detach(self) -> None:
        """Remove every hook the Monitor registered (state is kept; :meth:`attach` resumes)."""
        self._attached = False
        self._hooks.unregister()
        self._grad.remove()

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
        with self._sampler.paused():
            yield

    # ---------------------------------------------------------------- hot path

    def _counting(self) -> bool:
        """Whether an activation call made now is counted."""
        if not self._sampler.sampling:
            return False
        if self.training_only and not self.model.training:
            return False
        # a forward inside backward (activation checkpointing recomputing) is not
        return torch._C._current_graph_task_id() == -1

    def _window(self, site: Site, z: Tensor) -> SiteWindow:
        """The site's window, created at its first call, on ``z``'s device."""
        win = self._sites.get(site.name)
        if win is None:
            win = self._new_site(site, z)
        elif win.device != z.device:
            win.move(z.device)
            self._grad.move(site.name, z.device)
        return win

    def _on_call(self, site: Site, z: Tensor, out: Tensor) -> None:
        """Capture callback: reduce one activation call into the step's buffers."""
        if not self._counting():
            return
        win = self._window(site, z)
        spec = site.activation.spec
        # ReLU: out = relu(z), so the one-pass kernels read z only
        win.step.update(
            z, out, site.unit_dim, out_nonnegative=spec.nonnegative, relu=spec.name == "relu"
        )
        self._grad.observe(site.name, z)

    @staticmethod
    def _abs_from_z(site: Site) -> bool:
        """An in-place ReLU: its ``abs_sum`` is summed from ``relu(z)`` in the pre-hook and
        the output is not read (measured on resnet18's shapes at every detail level: as fast
        as or faster than reducing ``z`` and the output separately, 0.13 vs 0.22 ms for
        16x64x32x32)."""
        return site.activation.spec.name == "relu"

    def _on_z(self, site: Site, z: Tensor) -> None:
        """In-place activation modules: ``z`` before it is overwritten (no copy)."""
        if not self._counting():
            return
        win = self._window(site, z)
        win.step.update_z(z, site.unit_dim, relu=self._abs_from_z(site))

    def _on_out(self, site: Site, out: Tensor) -> None:
        """In-place activation modules: the output of the call whose ``z`` went to
        :meth:`_on_z` (its ``abs_sum``)."""
        if self._abs_from_z(site) or not self._counting():
            return
        win = self._sites.get(site.name)
        if win is not None and out.numel():
            win.step.add_output(
                out, site.unit_dim, out_nonnegative=site.activation.spec.nonnegative
            )

    def _new_site(self, site: Site, z: Tensor) -> SiteWindow:
        d = site.unit_dim % max(z.dim(), 1) if z.dim() > 1 else 0
        units = int(z.shape[d]) if z.dim() >= 1 else 1
        win = SiteWindow(site.name, site.unit_dim, units, z.device, self.detail, site.activation)
        pending = self._pending.pop(site.name, None)
        if pending is not None:
            self._restore_site(win, pending)
        self._sites[site.name] = win
        self._site_meta[site.name] = site
        self._history.add_site(site.name, units)
        return win

    # ---------------------------------------------------------------- steps

    def step(self) -> None:
        """End the current training step; call once per optimizer step, on every rank.

        On a sampled step: all-reduces the step's statistics (under DDP), updates the
        per-unit state, records a history row and warns on crossings (one small host
        sync). Then advances the step counter.
        """
        if self._attached and self._sampler.sampling:
            self._finalize(self._sampler.step)
        self._sampler.advance()
        if self._attached:
            self._hooks.follow(self._sampler.sampling)

    def _group(self) -> Any:
        if self._group_arg is False:
            return None
        return self._group_arg if self._group_arg is not None else default_group()

    def _finalize(self, t: int) -> None:
        self._grad.stop_probe()
        if not self._sites:
            self._alerts.blind()
            return
        if self.track_grad:
            self._grad.settle(self._sites)
        names = sorted(self._sites)
        windows = [self._sites[n] for n in names]
        group = self._group()
        if group is not None:
            all_reduce_many([w.step for w in windows], group)  # a few packed collectives
            self._grad.all_reduce(group)
        adjacent = self._panes.rotation(t)
        if adjacent is not None:
            for w in windows:
                w.rotate(adjacent)
            self._panes.advance(t)
        self._grad.record(t)
        counts: list[Tensor] = []
        for w in windows:
            counts.extend(w.record(t, self.window))
        host = torch.stack(counts).tolist()  # the one host sync of a sampled step
        dead = dict(zip(names, host[0::3], strict=True))
        self._alerts.unseen(t, [n for n, seen in zip(names, host[1::3], strict=True) if not seen])
        self._alerts.nonfinite(t, {n: k for n, k in zip(names, host[2::3], strict=True) if k})
        self._history.record(t, dead)
        self._alerts.crossings(t, dead, self._sites)

    # ---------------------------------------------------------------- queries

    @property
    def sites(self) -> list[str]:
        """Names of the sites seen so far, in first-seen order."""
        return [n for n in self._history.sites if n in self._sites]

    def _last_step(self) -> int:
        """The last finalized sampled step (-1 if none)."""
        return self._history.steps[-1] if self._history.steps else NEVER

    def _dead_masks(self) -> dict[str, Tensor | None]:
        """``{site: (U,) bool}`` dead over the window at the last sampled step (None: the
        site was never counted)."""
        t = self._last_step()
        out: dict[str, Tensor | None] = {}
        for name in self.sites:
            w = self._sites[name]
            out[name] = None if t == NEVER or not w.started else w.dead(t, self.window)
        return out

    def _dead_indices(self) -> dict[str, Tensor]:
        """``{site: (D,) int64}`` indices of the units dead over the window."""
        return {
            n: torch.zeros(0, dtype=torch.int64) if m is None else torch.nonzero(m).flatten().cpu()
            for n, m in self._dead_masks().items()
        }

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

    @property
    def dead_since(self) -> dict[str, Tensor]:
        """``{site: (U,) int64}``: for a dead unit the step after its last active sampled step
        (its first sampled step if never active), -1 for units alive now."""
        t = self._last_step()
        out: dict[str, Tensor] = {}
        for name in self.sites:
            w = self._sites[name]
            if t == NEVER or not w.started:
                out[name] = torch.full((w.units,), NEVER, dtype=torch.int64)
            else:
                out[name] = w.dead_since(t, self.window).cpu()
        return out

    def died_since(self, step: int) -> dict[str, list[int]]:
        """``{site: indices}`` of the units dead now whose :attr:`dead_since` is ``>= step``
        (they died at or after ``step``; a never-active unit counts from its site's first
        sampled step)."""
        return {
            n: torch.nonzero((d >= step) & (d != NEVER)).flatten().tolist()
            for n, d in self.dead_since.items()
        }

    def revived_since(self, step: int) -> dict[str, list[int]]:
        """``{site: indices}`` alive now that came back from dead on a sampled step ``>= step``."""
        out: dict[str, list[int]] = {}
        for name, dead in self._dead_masks().items():
            if dead is None:
                out[name] = []
                continue
            back = ~dead & (self._sites[name].revived_at >= step)
            out[name] = torch.nonzero(back).flatten().tolist()
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

    def to_html(self, path: str | Path, *, explanation: Any = None) -> Path:
        """Write the HTML scan report of :meth:`report`, with the history, to ``path``
        (see :mod:`deadrelu.scan_html`)."""
        return write_html(self, path, explanation=explanation)

    def log_to(self, writer: Any, step: int | None = None) -> dict[str, float]:
        """Write per-site dead and dormant fractions and per-unit activity histograms to a
        TensorBoard ``SummaryWriter`` (see :func:`deadrelu.integrations.tensorboard.log_to`)."""
        return log_to(self, writer, step)

    def statistics(self) -> dict[str, UnitStats]:
        """``{site: UnitStats}`` over the last one to two windows (copies, on CPU)."""
        return {name: self._sites[name].statistics() for name in self.sites}

    def report(self) -> Report:
        """A :class:`deadrelu.report.Report` of the last one to two windows of sampled steps.

        Its ``meta`` says which steps it covers. Its statistics (dormant, rarely
        active, saturated ...) cover the panes; its "dead" units are the Monitor's own,
        over the exact sliding window (:meth:`dead_units`), so the two always agree
        (``report.given`` holds that mask, and the JSON keeps it).
        """
        stats = self.statistics()
        sites = {n: self._site_meta[n] for n in stats}
        first = min((w.first_step for w in self._sites.values()), default=NEVER)
        start = max(first, self.pane_start - self.window, 0)
        meta = {
            "source": "Monitor",
            "every": self.every,
            "window": self.window,
            "steps": [start, self._last_step()],
            "sampled_steps": len([t for t in self._history.steps if t >= start]),
            "dead": f"inactive on every sampled step of the last {self.window} steps",
            "unrecognised": self._hooks.unrecognised,
        }
        given = {n: {"dead": m.cpu()} for n, m in self._dead_masks().items() if m is not None}
        return Report(stats, sites, meta=meta, given=given)

    def state_nbytes(self) -> int:
        """Bytes of the per-unit state (every tensor the Monitor keeps; not the history)."""
        return sum(w.nbytes() + self._grad.nbytes(n) for n, w in self._sites.items())

    # ---------------------------------------------------------------- zero gradient (C2)

    def check_zero_grad(self) -> dict[str, ZeroGradCheck]:
        """Claim C2: did the dead units' incoming weights and bias get exactly zero gradient?

        Needs ``track_grad=True``. For each site: the units dead over the window, and
        those of them whose producer's weight or bias rows received a non-zero gradient
        on a sampled step inside the window.
        """
        if not self.track_grad:
            raise RuntimeError("check_zero_grad needs Monitor(..., track_grad=True)")
        return self._grad.check(self._dead_indices(), self._sites, self._last_step(), self.window)

    @property
    def producers(self) -> dict[str, str | None]:
        """``{site: producer module name}`` found on the first sampled step (``track_grad``)."""
        return dict(self._grad.producers or {})

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
            units = self._sites[name].units
            rows.append([name, units, round(frac * units), f"{100 * frac:.1f}"])
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
            "state": checkpoint.jsonify(self.state_dict()),
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
        mon.load_state_dict(checkpoint.unjsonify(data["state"]))
        return mon

    # ---------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: settings, step counter, per-site state, history."""
        sites = {
            name: checkpoint.site_entry(
                w, self._grad.grad_last.get(name), self._site_meta.get(name)
            )
            for name, w in self._sites.items()
        }
        producers = self._grad.producers
        return {
            "version": _STATE_VERSION,
            "every": self.every,
            "window": self.window,
            "step": self.step_count,
            "pane_start": self.pane_start,
            "sites": sites,
            "producers": None if producers is None else dict(producers),
            "history": self._history.state(),
            "warned": sorted(self._alerts.warned),
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
        checkpoint.check_sites(self.model, state["sites"], self._sites)
        self._sampler.set_step(int(state["step"]))
        self._panes.start = int(state["pane_start"])
        self._history = History.from_state(state["history"])
        self._alerts.warned = set(state.get("warned", []))
        prods = state.get("producers")
        self._grad.remove()
        self._grad = ZeroGradProbe(self.model, lambda: self._sampler.sampling)
        self._grad.producers = None if prods is None else dict(prods)
        old = self._sites
        self._sites = {}
        self._pending = {}
        for name, entry in state["sites"].items():
            cur = old.get(name)
            meta = self._site_meta.get(name) or checkpoint.saved_site(name, entry)
            if meta is None:  # a version-1 state: restored when the site is first called
                self._pending[name] = dict(entry)
                continue
            units = int(entry["last_active"].shape[0])
            device = cur.device if cur is not None else torch.device("cpu")
            w = SiteWindow(name, entry["unit_dim"], units, device, self.detail, meta.activation)
            self._restore_site(w, entry)
            self._sites[name] = w
            self._site_meta[name] = meta
        if self.track_grad and self.attached:
            self._grad.start(self._sites)  # hooks the producers, or probes for them

    def _restore_site(self, w: SiteWindow, entry: Mapping[str, Any]) -> None:
        w.load_state_dict(entry)
        if "grad_last" in entry:
            self._grad.restore(w.name, entry["grad_last"], w)


def _refuse_grad_under_fsdp(model: nn.Module) -> None:
    """Raise when ``model`` is sharded by FSDP2 or FSDP1: ``track_grad`` would hold
    vacuously (FSDP2) or hook tensors that are not the parameters (FSDP1)."""
    wrapped = fsdp1_modules(model)
    if wrapped:
        raise ValueError(
            "Monitor(track_grad=True) does not work under FSDP1 (FullyShardedDataParallel "
            f"at {wrapped[:3]}{' ...' if len(wrapped) > 3 else ''}): the layers' weights are "
            "views into a flattened, sharded FlatParameter, whose gradient is reduce-"
            "scattered, so per-unit gradient hooks see nothing. Use track_grad=False (dead "
            "units are tracked and all-reduced as usual), or check the zero-gradient claim "
            "under DDP or in one process."
        )
    sharded = fsdp_modules(model)
    if sharded:
        raise ValueError(
            "Monitor(track_grad=True) does not work under FSDP2 (fully_shard was applied to "
            f"{sharded[:3]}{' ...' if len(sharded) > 3 else ''}): the sharded parameters "
            "get their gradients by reduce-scatter, not through autograd, so the gradient "
            "hooks never fire and check_zero_grad would pass without looking. Use "
            "track_grad=False (dead units are tracked and all-reduced as usual), or check "
            "the zero-gradient claim under DDP or in one process."
        )


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP / DataParallel / ``torch.compile`` wrappers (FSDP2's
    ``fully_shard`` wraps nothing: it changes the modules' classes in place, so names
    stay the plain model's)."""
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
