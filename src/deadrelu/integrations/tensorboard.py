"""TensorBoard without a training framework: :func:`log_to`.

::

    from torch.utils.tensorboard import SummaryWriter
    from deadrelu.integrations.tensorboard import log_to

    writer = SummaryWriter("runs/exp1")
    with dr.Monitor(model) as mon:
        for step, (x, y) in enumerate(loader):
            ...
            mon.step()
            if step % 100 == 0:
                log_to(mon, writer, step)

Writes the scalars of :func:`deadrelu.integrations.metrics` (per-site and total dead and
dormant fractions) and, per site, a histogram of per-unit activity: the fraction of
positions on which each unit was active (z > 0) over the Monitor's report panes (the
Report's statistics), tag ``{prefix}/active_fraction/{site}``. A unit at 0 is dead. The
writer is anything with ``add_scalar`` and ``add_histogram`` (``SummaryWriter`` of
``torch.utils.tensorboard``, which needs the ``tensorboard`` package:
``pip install 'deadrelu[tensorboard]'``; or tensorboardX).
"""

from __future__ import annotations

from typing import Any

from deadrelu.integrations import metrics

__all__ = ["log_to"]


def log_to(
    source: Any,
    writer: Any,
    step: int | None = None,
    *,
    prefix: str = "deadrelu",
    histograms: bool = True,
    dormant: bool = True,
    scalars: bool = True,
) -> dict[str, float]:
    """Write the dead-unit scalars (and per-unit histograms) of ``source`` to ``writer``.

    Args:
        source: a :class:`~deadrelu.monitor.Monitor` or a :class:`~deadrelu.report.Report`.
        writer: a TensorBoard ``SummaryWriter`` (``add_scalar``, ``add_histogram``).
        step: the global step of the points (default: the Monitor's last ended step,
            ``monitor.step_count - 1``; 0 for a Report).
        prefix: the first part of every tag.
        histograms: also one histogram per site of the units' active fraction ``(U,)``.
        dormant: also the dormant fractions.
        scalars: write the scalars (False: only the histograms, for a logger that gets
            the scalars another way).

    Returns:
        The scalars, ``{tag: value}`` (written when ``scalars``).
    """
    report = source if hasattr(source, "layers") else source.report()
    if step is None:
        step = max(int(getattr(source, "step_count", 1)) - 1, 0)
    values = metrics(report, prefix=prefix, dormant=dormant)
    if scalars:
        for tag, value in values.items():
            writer.add_scalar(tag, value, step)
    if histograms:
        for name, stats in report.stats.items():
            if stats.positions > 0:
                writer.add_histogram(
                    f"{prefix}/active_fraction/{name}", stats.active_fraction.float(), step
                )
    return values
