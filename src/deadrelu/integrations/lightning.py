"""PyTorch Lightning: :class:`DeadUnitMonitor`, a ``Callback`` that tracks dead units.

::

    import lightning as L
    from deadrelu.integrations.lightning import DeadUnitMonitor

    trainer = L.Trainer(max_steps=1000, callbacks=[DeadUnitMonitor(every=10, window=100)])
    trainer.fit(module, loader)
    print(trainer.callbacks[0].report)        # or the metrics in any Lightning logger

What it does, on the real Lightning hooks:

* ``on_fit_start``: a :class:`deadrelu.Monitor` on the ``LightningModule`` (restored from
  the checkpoint when the fit resumes one);
* ``on_train_batch_end``: ``monitor.step()`` (one Monitor step per training batch); on the
  counted steps, ``pl_module.log`` of :func:`deadrelu.integrations.metrics` (per-site and
  total dead and dormant fractions: ``deadrelu/dead_fraction/{site}`` ...), so every
  Lightning logger (TensorBoard, CSV, W&B, MLflow) gets them; with ``log_units=True`` and a
  TensorBoard logger, a histogram per site of the units' active fraction too;
* with ``recycle_every=N``: every N steps, ReDo (:func:`deadrelu.remedies.recycle`) on the
  units dead over the window, with the trainer's (first) optimizer, whose state is reset
  for them; recycle links the layers by running ``pl_module(x)`` on the batch's input
  (the first item of a tuple batch), so the module needs a ``forward``;
* ``on_fit_end``: :attr:`report` (a :class:`deadrelu.Report`), written to
  ``report_path`` as JSON (``.json``) or HTML (``.html``) when given; the Monitor detaches;
* ``state_dict`` / ``load_state_dict``: the Monitor's state goes into Lightning checkpoints,
  so a resumed fit ends with the same Monitor state as an uninterrupted one.

Under DDP the Monitor all-reduces its counts inside ``step()`` on every rank (see
:class:`deadrelu.Monitor`), so every rank logs the same, global fractions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from deadrelu.integrations import check_recycle_every, finish, is_sampled_step, metrics
from deadrelu.integrations.tensorboard import log_to
from deadrelu.monitor import Monitor
from deadrelu.remedies import recycle
from deadrelu.report import Report
from deadrelu.zoo import import_torchvision

with contextlib.suppress(ImportError):
    import_torchvision()  # Lightning's metrics import torchvision when installed
try:
    from lightning.pytorch.callbacks import Callback
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "deadrelu.integrations.lightning needs Lightning: pip install 'deadrelu[lightning]'"
    ) from exc

__all__ = ["DeadUnitMonitor"]


class DeadUnitMonitor(Callback):
    """Track, log and optionally recycle dead units during ``trainer.fit``.

    Args:
        every: the Monitor counts every ``every``-th training batch (see
            :class:`deadrelu.Monitor`).
        window: a unit is dead when inactive on every counted batch of the last ``window``.
        log_units: also log per-unit activity histograms to TensorBoard loggers.
        recycle_every: ReDo every this many training batches (None: never).
        dormant: also log dormant fractions (builds the Monitor's report on each counted
            step).
        report_path: write the final report there (``.html``: the HTML scan report with
            the history; anything else: JSON).
        prefix: first part of the metric names.
        **monitor_kwargs: passed to :class:`deadrelu.Monitor` (``threshold``, ``detail``,
            ``unit_dim`` ...).

    Attributes:
        monitor: the Monitor (None before the fit starts).
        report: the final :class:`deadrelu.Report` (None before the fit ends).
        recycled: ``(step, units recycled)`` of each ReDo call.
    """

    def __init__(
        self,
        every: int = 10,
        window: int = 100,
        log_units: bool = False,
        recycle_every: int | None = None,
        *,
        dormant: bool = True,
        report_path: str | Path | None = None,
        prefix: str = "deadrelu",
        **monitor_kwargs: Any,
    ) -> None:
        check_recycle_every(recycle_every)
        self.every = every
        self.window = window
        self.log_units = log_units
        self.recycle_every = recycle_every
        self.dormant = dormant
        self.report_path = Path(report_path) if report_path is not None else None
        self.prefix = prefix
        self.monitor_kwargs = dict(monitor_kwargs)
        self.monitor: Monitor | None = None
        self.report: Report | None = None
        self.recycled: list[tuple[int, int]] = []
        self._restored: Mapping[str, Any] | None = None

    # ------------------------------------------------------------------ lifecycle

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        """Attach a Monitor to the module (restored from a checkpoint when resuming)."""
        kwargs = {"threshold": None, **self.monitor_kwargs}
        self.monitor = Monitor(pl_module, every=self.every, window=self.window, **kwargs)
        if self._restored is not None:
            self.monitor.load_state_dict(self._restored["monitor"])
            self.recycled = [(int(t), int(n)) for t, n in self._restored.get("recycled", [])]
            self._restored = None
        self.monitor.attach()

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Step the Monitor; log on counted steps; recycle every ``recycle_every`` steps."""
        mon = self.monitor
        if mon is None:
            return
        mon.step()
        if is_sampled_step(mon):
            values = metrics(mon, prefix=self.prefix, dormant=self.dormant)
            for name, value in values.items():
                pl_module.log(name, value, on_step=True, on_epoch=False, prog_bar=False)
            if self.log_units:
                self._log_histograms(trainer, mon)
        if self.recycle_every is not None and mon.step_count % self.recycle_every == 0:
            self._recycle(trainer, pl_module, batch)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        """Keep the final report (and write it to ``report_path``); detach the Monitor."""
        mon = self.monitor
        if mon is None:
            return
        self.report = finish(mon, self.report_path, trainer.is_global_zero)

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """The Monitor's state (and the ReDo log), saved in Lightning checkpoints."""
        if self.monitor is None:
            return dict(self._restored) if self._restored is not None else {}
        return {"monitor": self.monitor.state_dict(), "recycled": list(self.recycled)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` (Lightning calls it before ``on_fit_start``)."""
        if not state_dict:
            return
        if self.monitor is not None:
            self.monitor.load_state_dict(state_dict["monitor"])
            self.recycled = [(int(t), int(n)) for t, n in state_dict.get("recycled", [])]
        else:
            self._restored = state_dict

    # ------------------------------------------------------------------ helpers

    def _log_histograms(self, trainer: Any, mon: Monitor) -> None:
        for logger in getattr(trainer, "loggers", []):
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_histogram"):
                # the scalars went through pl_module.log; step None: the counted step
                log_to(mon, experiment, None, prefix=self.prefix, scalars=False)

    def _recycle(self, trainer: Any, pl_module: Any, batch: Any) -> None:
        assert self.monitor is not None
        optimizers = list(getattr(trainer, "optimizers", []) or [])
        optimizer = getattr(optimizers[0], "optimizer", optimizers[0]) if optimizers else None
        example = batch[0] if isinstance(batch, (tuple, list)) else batch
        was_training = pl_module.training
        with self.monitor.paused():
            summary = recycle(pl_module, self.monitor, optimizer, example_inputs=example)
        pl_module.train(was_training)
        n = sum(len(v) for v in summary.units.values())
        self.recycled.append((self.monitor.step_count, n))
