"""Hugging Face ``Trainer``: :class:`DeadUnitCallback`, a ``TrainerCallback``.

::

    from transformers import Trainer
    from deadrelu.integrations.hf import DeadUnitCallback

    trainer = Trainer(model=model, args=args, train_dataset=ds)
    trainer.add_callback(DeadUnitCallback(trainer, every=10, window=100))
    trainer.train()

Like :class:`deadrelu.integrations.lightning.DeadUnitMonitor`: a :class:`deadrelu.Monitor`
on the model from ``on_train_begin``, one Monitor step per optimizer step
(``on_step_end``), and on the counted steps the per-site and total dead and dormant
fractions of :func:`deadrelu.integrations.metrics` logged **through the Trainer's**
``log`` (so ``report_to`` integrations, TensorBoard, W&B, MLflow, and
``trainer.state.log_history`` all get them); the final :attr:`DeadUnitCallback.report`
at ``on_train_end`` (written to ``report_path``: ``.html`` or JSON); optional ReDo every
``recycle_every`` steps with the Trainer's optimizer.

Checkpoints: :meth:`DeadUnitCallback.on_save` writes the Monitor's state into each
checkpoint folder (``OUTPUT_DIR/checkpoint-STEP/deadrelu_monitor.json``) and a Trainer that
resumes from ``checkpoint-STEP`` of its ``output_dir`` resumes the Monitor from it, so the
resumed run ends with the Monitor state of an uninterrupted one.

Without the ``trainer`` argument the metrics are added to the next log the Trainer writes
itself (every ``logging_steps``), which the integrations that run before this callback
miss: pass the Trainer.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path
from typing import Any

from deadrelu.integrations import check_recycle_every, finish, is_sampled_step, metrics
from deadrelu.monitor import Monitor
from deadrelu.remedies import recycle
from deadrelu.report import Report
from deadrelu.zoo import import_torchvision

with contextlib.suppress(ImportError):
    import_torchvision()  # transformers imports torchvision when installed
try:
    from transformers import TrainerCallback
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "deadrelu.integrations.hf needs transformers: pip install 'deadrelu[hf]'"
    ) from exc

__all__ = ["STATE_FILE", "DeadUnitCallback"]

#: The Monitor's state in each checkpoint folder (``checkpoint-STEP/``), as JSON.
STATE_FILE = "deadrelu_monitor.json"


def _state_file(args: Any, step: int) -> Path:
    return Path(args.output_dir) / f"checkpoint-{step}" / STATE_FILE


class DeadUnitCallback(TrainerCallback):
    """Track, log and optionally recycle dead units during ``Trainer.train``.

    Args:
        trainer: the Trainer whose ``log`` gets the metrics (recommended; see the module
            docstring).
        every, window: the Monitor's (see :class:`deadrelu.Monitor`); steps are optimizer
            steps.
        recycle_every: ReDo every this many optimizer steps (None: never).
        dormant: also log dormant fractions.
        report_path: write the final report there (``.html`` or JSON).
        prefix: first part of the metric names.
        **monitor_kwargs: passed to :class:`deadrelu.Monitor`.

    Attributes:
        monitor: the Monitor (None before training starts).
        report: the final :class:`deadrelu.Report` (None before training ends).
        logged: every ``{name: value}`` dict logged, with its ``step``.
    """

    def __init__(
        self,
        trainer: Any = None,
        *,
        every: int = 10,
        window: int = 100,
        recycle_every: int | None = None,
        dormant: bool = True,
        report_path: str | Path | None = None,
        prefix: str = "deadrelu",
        **monitor_kwargs: Any,
    ) -> None:
        check_recycle_every(recycle_every)
        self.trainer = trainer
        self.every = every
        self.window = window
        self.recycle_every = recycle_every
        self.dormant = dormant
        self.report_path = Path(report_path) if report_path is not None else None
        self.prefix = prefix
        self.monitor_kwargs = dict(monitor_kwargs)
        self.monitor: Monitor | None = None
        self.report: Report | None = None
        self.logged: list[dict[str, float]] = []
        self._pending: dict[str, float] = {}

    def on_train_begin(
        self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any
    ) -> None:
        """Attach a Monitor to the model; when the Trainer resumes from a checkpoint, the
        Monitor resumes from the state saved there (:meth:`on_save`)."""
        if model is None:
            raise ValueError("DeadUnitCallback: the Trainer passed no model to on_train_begin")
        saved = _state_file(args, state.global_step) if state.global_step > 0 else None
        if saved is not None and saved.is_file():
            data = json.loads(saved.read_text(encoding="utf-8"))
            self.monitor = Monitor.from_dict(data, model)
        else:
            if saved is not None:
                warnings.warn(
                    f"DeadUnitCallback: training resumes at step {state.global_step} but "
                    f"{saved} does not exist; the Monitor starts afresh",
                    stacklevel=2,
                )
            kwargs = {"threshold": None, **self.monitor_kwargs}
            self.monitor = Monitor(model, every=self.every, window=self.window, **kwargs)
        self.monitor.attach()

    def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        """Write the Monitor's state (JSON) into the checkpoint folder just saved."""
        if self.monitor is None or not state.is_world_process_zero:
            return
        path = _state_file(args, state.global_step)
        if path.parent.is_dir():
            path.write_text(json.dumps(self.monitor.to_dict()), encoding="utf-8")

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        """Step the Monitor; log on counted steps; recycle every ``recycle_every`` steps."""
        mon = self.monitor
        if mon is None:
            return
        mon.step()
        if is_sampled_step(mon):
            values = metrics(mon, prefix=self.prefix, dormant=self.dormant)
            if values:
                self.logged.append({**values, "step": float(state.global_step)})
                if self.trainer is not None:
                    self.trainer.log(dict(values))
                else:
                    self._pending = dict(values)
        if self.recycle_every is not None and mon.step_count % self.recycle_every == 0:
            self._recycle(kw.get("model"), kw.get("optimizer"), kw.get("train_dataloader"))

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
        """Without a Trainer: add the pending metrics to the Trainer's own log."""
        if self._pending and isinstance(logs, dict):
            logs.update(self._pending)
            self._pending = {}

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        """Keep the final report (and write it to ``report_path``); detach the Monitor."""
        mon = self.monitor
        if mon is None:
            return
        self.report = finish(mon, self.report_path, state.is_world_process_zero)

    def _recycle(self, model: Any, optimizer: Any, loader: Any) -> None:
        assert self.monitor is not None
        if model is None:
            return
        optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper
        example = next(iter(loader)) if loader is not None else None
        if isinstance(example, dict):
            example = {k: v.to(model.device) for k, v in example.items() if k != "labels"}
        was_training = model.training
        with self.monitor.paused():
            recycle(model, self.monitor, optimizer, example_inputs=example)
        model.train(was_training)
