"""Plots of the ReLU family: every function and its analytic derivative on one PNG grid.

matplotlib is imported only when a plot is drawn, and only its object-oriented API with the
Agg canvas is used (no pyplot, no display, no global backend change).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from deadrelu.activations import Activation

__all__ = ["CELL_INCHES", "grid_shape", "grid_size_px", "plot_activations"]

#: Size of one cell of the grid, (width, height) in inches.
CELL_INCHES = (3.2, 2.6)


def grid_shape(count: int, columns: int = 4) -> tuple[int, int]:
    """``(rows, columns)`` of the grid for ``count`` activations (at most ``columns`` wide)."""
    if count < 1 or columns < 1:
        raise ValueError(f"need at least one activation and one column, got {count}, {columns}")
    cols = min(columns, count)
    return math.ceil(count / cols), cols


def grid_size_px(count: int, columns: int = 4, dpi: int = 100) -> tuple[int, int]:
    """``(width, height)`` in pixels of the PNG that :func:`plot_activations` writes."""
    rows, cols = grid_shape(count, columns)
    return round(cols * CELL_INCHES[0] * dpi), round(rows * CELL_INCHES[1] * dpi)


def plot_activations(
    activations: Sequence[Activation],
    path: str | Path,
    *,
    z_range: tuple[float, float] = (-5.0, 7.0),
    points: int = 1201,
    columns: int = 4,
    dpi: int = 100,
) -> Path:
    """Draw f (solid) and f' (dashed) of each activation, one cell each, and save a PNG.

    The region where f'(z) is exactly 0 (a dead unit's pre-activations) is shaded.

    Args:
        activations: bound activations, e.g. ``[get("relu"), get("elu(alpha=0.3)")]``.
        path: the PNG to write; its folder is created.
        z_range: ``(low, high)`` of the z axis, low < high, both finite.
        points: samples of z, at least 2.
        columns: cells per row.
        dpi: pixels per inch; the image is exactly :func:`grid_size_px` pixels.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    low, high = z_range
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"z_range must be two finite numbers low < high, got {z_range}")
    if points < 2 or dpi < 1:
        raise ValueError(f"points must be >= 2 and dpi >= 1, got {points}, {dpi}")
    rows, cols = grid_shape(len(activations), columns)

    from matplotlib.figure import Figure  # lazy: matplotlib is an optional dependency

    fig = Figure(figsize=(cols * CELL_INCHES[0], rows * CELL_INCHES[1]), dpi=dpi)
    axes = fig.subplots(rows, cols, squeeze=False)
    z = torch.linspace(low, high, points, dtype=torch.float64)
    for i, ax in enumerate(axes.flat):
        if i >= len(activations):
            ax.set_axis_off()
            continue
        act = activations[i]
        f = act(z).numpy()
        d = act.derivative(z).numpy()
        dead = act.zero_grad(z).numpy()
        zs = z.numpy()
        if dead.any():
            ax.fill_between(
                zs,
                0,
                1,
                where=dead,
                transform=ax.get_xaxis_transform(),
                color="0.9",
                lw=0,
                label="f'(z) = 0",
            )
        ax.axhline(0, color="0.6", lw=0.6)
        ax.axvline(0, color="0.6", lw=0.6)
        ax.plot(zs, f, color="tab:blue", lw=1.6, label="f(z)")
        ax.plot(zs, d, color="tab:orange", lw=1.4, ls="--", label="f'(z)")
        ax.set_title(str(act), fontsize=10)
        ax.set_xlim(low, high)
        ax.tick_params(labelsize=7)
        if i == 0:
            ax.legend(fontsize=7, loc="upper left")
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.06, top=0.93, wspace=0.25, hspace=0.45)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=dpi)
    return out


def figure_axes(width: float, height: float) -> tuple[Any, Any]:
    """A matplotlib ``Figure`` of ``width`` x ``height`` inches (100 dpi) on an Agg canvas,
    and its one axes, without pyplot (no global state, safe in threads and servers)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("plotting needs matplotlib: pip install 'deadrelu[plot]'") from exc
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)
