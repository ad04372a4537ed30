"""Adapters from :class:`deadrelu.Monitor` to the tools people train with.

* :mod:`deadrelu.integrations.lightning`: ``DeadUnitMonitor``, a Lightning ``Callback``
  (extra ``lightning``);
* :mod:`deadrelu.integrations.hf`: ``DeadUnitCallback``, a Hugging Face ``TrainerCallback``
  (extra ``hf``);
* :mod:`deadrelu.integrations.tensorboard`: ``log_to(monitor, writer, step)`` for any loop
  (extra ``tensorboard``).

Each is imported on its own, so this package needs none of them. :func:`metrics` is the one
place the metric names are made, so every integration logs the same names:
``{prefix}/dead_fraction/{site}``, ``{prefix}/dormant_fraction/{site}`` and the totals
``{prefix}/dead_fraction``, ``{prefix}/dormant_fraction`` (fractions of the units).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["check_recycle_every", "finish", "is_sampled_step", "metrics"]


def metrics(source: Any, *, prefix: str = "deadrelu", dormant: bool = True) -> dict[str, float]:
    """Per-site and total dead (and dormant) fractions of a Monitor or Report.

    Args:
        source: a :class:`~deadrelu.monitor.Monitor` (dead over its window, at its last
            sampled step; dormant over its report panes) or a
            :class:`~deadrelu.report.Report`.
        prefix: the first part of every name.
        dormant: also the dormant fractions.

    For a Monitor this builds its :meth:`~deadrelu.monitor.Monitor.report` (a copy of
    the statistics to the CPU), whose dead units are the Monitor's own.

    Returns:
        ``{name: fraction}``, sites in the order the source lists them; empty before the
        source has seen any site.
    """
    report = source if hasattr(source, "layers") else source.report()
    rows = report.layers
    if not rows:
        return {}
    out: dict[str, float] = {}
    for row in rows:
        out[f"{prefix}/dead_fraction/{row.name}"] = row.dead_fraction
        if dormant:
            out[f"{prefix}/dormant_fraction/{row.name}"] = row.dormant_fraction
    out[f"{prefix}/dead_fraction"] = report.dead_fraction
    if dormant:
        out[f"{prefix}/dormant_fraction"] = report.dormant_fraction
    return out


def is_sampled_step(monitor: Any) -> bool:
    """Whether the step the Monitor just ended (by :meth:`~deadrelu.monitor.Monitor.step`)
    was a counted one, i.e. its numbers changed."""
    return monitor.step_count >= 1 and (monitor.step_count - 1) % monitor.every == 0


def check_recycle_every(recycle_every: int | None) -> None:
    """Raise ValueError unless ``recycle_every`` is None or an int >= 1."""
    if recycle_every is not None and (isinstance(recycle_every, bool) or recycle_every < 1):
        raise ValueError(f"recycle_every must be an int >= 1 or None, got {recycle_every!r}")


def finish(monitor: Any, report_path: Path | None, main_process: bool) -> Any:
    """End of training: the Monitor's final :class:`~deadrelu.report.Report`, written to
    ``report_path`` (``.html``: :meth:`~deadrelu.monitor.Monitor.to_html`, else the report's
    JSON) by the main process only; the Monitor is detached. Returns the report."""
    report = monitor.report()
    if report_path is not None and main_process:
        if report_path.suffix == ".html":
            monitor.to_html(report_path)
        else:
            report.to_json(report_path)
    monitor.detach()
    return report
