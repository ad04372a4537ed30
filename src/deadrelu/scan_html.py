"""The HTML scan report: one self-contained page for a user's model.

:func:`write_html` (and :func:`render_html`, which returns the text) take a
:class:`~deadrelu.report.Report` (from :func:`deadrelu.scan`) or a
:class:`~deadrelu.monitor.Monitor` (its :meth:`~deadrelu.monitor.Monitor.report`, plus its
history) and write, in order:

1. the totals (units, dead, dormant, rarely active) and the summary table, one row per
   site, **worst first** (dead fraction, then dormant, then rarely active);
2. a bar chart of the dead, dormant and rarely-active fraction of every site, in the order
   the sites run;
3. the dead fraction by depth (site index in running order);
4. the activation frequency per site (:meth:`~deadrelu.report.Report.frequencies`): the
   dead and rarely-active fractions and the histogram of the units' fraction of positions
   with z > 0 over fixed log-spaced bins, as a table (units per bin) and a heat map (one
   row per site, the share of its units in each bin);
5. the pre-activation range per site: for each site the band from the smallest z_min to
   the largest z_max over its units and the spread of the units' z_max (10th to 90th
   percentile), with z = 0 marked: a unit whose z_max is <= 0 is dead, so the plot shows
   why units die (needs the statistics of detail "range", the scan's default);
6. the causes of death per unit, when an :class:`~deadrelu.explain.Explanation` is given;
7. the dead fraction of every site over training steps, for a Monitor;
8. the report's settings and meta (collapsed).

Style, embedded figures and the self-check script come from :mod:`deadrelu.htmlkit`;
figures are drawn with matplotlib's Agg canvas (the ``plot`` extra) without pyplot.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from deadrelu.htmlkit import collapsed, esc, figure, grid, page
from deadrelu.plots import figure_axes

__all__ = ["render_html", "write_html"]

#: Sites shown by name in a chart; beyond, the charts show every site but label some.
_MAX_LABELS = 60
#: Site names longer than this are cut in the middle on the charts' axes.
_MAX_LABEL_CHARS = 48
#: Units listed in the causes table; the rest are counted.
_MAX_CAUSE_ROWS = 500


def _png(fig: Any) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _label_every(n: int) -> int:
    return max(1, math.ceil(n / _MAX_LABELS))


def _short(name: str, width: int = _MAX_LABEL_CHARS) -> str:
    """``name`` cut in the middle to at most ``width`` characters (the tables have it whole)."""
    if len(name) <= width:
        return name
    head = (width - 1) // 3
    return name[:head] + "…" + name[len(name) - (width - 1 - head) :]


def _site_axis(ax: Any, names: Sequence[str]) -> None:
    step = _label_every(len(names))
    ticks = list(range(0, len(names), step))
    ax.set_yticks(ticks)
    ax.set_yticklabels([_short(names[i]) for i in ticks], fontsize=7 if len(names) > 20 else 9)
    ax.set_ylim(len(names) - 0.5, -0.5)


def _height(n: int) -> float:
    return min(2.0 + 0.22 * min(n, _MAX_LABELS * 2), 30.0)


def _bars(report: Any) -> bytes:
    rows = report.layers
    names = [r.name for r in rows]
    fig, ax = figure_axes(9.0, _height(len(rows)))
    y = torch.arange(len(rows), dtype=torch.float64)
    width = 0.27
    series = (("dead", "#c0392b"), ("dormant", "#e67e22"), ("rarely_active", "#f1c40f"))
    for k, (kind, color) in enumerate(series):
        frac = [getattr(r, kind) / r.units if r.units else 0.0 for r in rows]
        ax.barh((y + (k - 1) * width).tolist(), frac, height=width, color=color, label=kind)
    _site_axis(ax, names)
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of the site's units")
    ax.legend(fontsize="small", loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def _depth(report: Any) -> bytes:
    rows = report.layers
    fig, ax = figure_axes(9.0, 3.6)
    x = list(range(len(rows)))
    ax.plot(x, [r.dead_fraction for r in rows], marker="o", color="#c0392b", label="dead")
    ax.plot(x, [r.dormant_fraction for r in rows], marker=".", color="#e67e22", label="dormant")
    ax.set_xlabel("depth (site index, in the order the sites run)")
    ax.set_ylabel("fraction of units")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return _png(fig)


def _frequency_table(layers: Sequence[Any], labels: Sequence[str]) -> str:
    cols = ["site", "units", "positions", "dead %", "rarely active %", *labels]
    rows = [
        [
            r.name,
            r.units,
            r.positions,
            round(100 * r.dead_fraction, 2),
            round(100 * r.rarely_active_fraction, 2),
            *r.counts,
        ]
        for r in layers
    ]
    classes = ["bad" if r.dead_fraction else None for r in layers]
    return grid(cols, rows, table_id="frequency-table", row_classes=classes)


def _frequency_map(layers: Sequence[Any], labels: Sequence[str]) -> bytes:
    """Rows: sites in running order; columns: frequency bins; colour: share of the site's
    units in the bin; the unit counts written in the cells when there is room."""
    names = [r.name for r in layers]
    share = torch.tensor(
        [[c / r.units if r.units else 0.0 for c in r.counts] for r in layers], dtype=torch.float64
    ).reshape(len(layers), len(labels))
    height = _height(len(layers)) + 0.6  # + the colour bar
    fig, ax = figure_axes(9.0, height)
    image = ax.imshow(share.numpy(), aspect="auto", cmap="Blues", vmin=0.0, vmax=1.0)
    if len(layers) <= 40:
        for i, r in enumerate(layers):
            for k, c in enumerate(r.counts):
                if c:
                    dark = share[i, k] > 0.6
                    ax.text(
                        k,
                        i,
                        str(c),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if dark else "black",
                    )
    ax.set_xticks(list(range(len(labels))))
    ax.set_xticklabels(list(labels), fontsize=8)
    ax.get_xticklabels()[0].set_color("#c0392b")  # the never-active (dead) bin
    ax.set_xlabel("fraction of positions with z > 0 (bin's lower edge; 0: never active)")
    _site_axis(ax, names)
    fig.colorbar(
        image,
        ax=ax,
        location="top",
        label="share of the site's units",
        shrink=0.5,
        fraction=0.15 / height,
        pad=0.3 / height,
    )
    return _png(fig)


def _frequency(report: Any) -> str:
    layers = report.frequencies()
    if not layers:
        return ""
    labels = layers[0].labels
    tokens = report.meta.get("tokens")
    seen = f" over {tokens} tokens" if isinstance(tokens, int) else ""
    intro = (
        f"How often each unit fires{seen}: its fraction of positions with z > 0, binned "
        "by decade (as in Voita et al. 2023, Neurons in Large Language Models: Dead, "
        "N-gram, Positional). The first bin holds the units that never fired."
    )
    return "".join(
        [
            '<h2 id="frequency">Activation frequency</h2>',
            f'<p class="note">{esc(intro)}</p>',
            _frequency_table(layers, labels),
            figure(
                _frequency_map(layers, labels),
                "activation frequency histogram per site",
                "One row per site (running order), one column per frequency bin; colour: "
                "the share of the site's units in the bin, numbers: units.",
            ),
        ]
    )


def _ranges(report: Any) -> bytes | None:
    names = [n for n, s in report.stats.items() if s.has_range and s.positions > 0]
    if not names:
        return None
    fig, ax = figure_axes(9.0, _height(len(names)))
    for i, name in enumerate(names):
        s = report.stats[name]
        z_max = s.z_max.to(torch.float64)
        z_min = s.z_min.to(torch.float64)
        finite_max = z_max[torch.isfinite(z_max)]
        finite_min = z_min[torch.isfinite(z_min)]
        if finite_max.numel() == 0 or finite_min.numel() == 0:
            continue
        lo, hi = float(finite_min.min()), float(finite_max.max())
        ax.plot([lo, hi], [i, i], "|-", color="#7f8c8d", linewidth=1.2, markersize=7)
        q10, q90 = (
            float(v)
            for v in torch.quantile(finite_max, torch.tensor([0.1, 0.9], dtype=torch.float64))
        )
        ax.plot([q10, q90], [i, i], color="#2c7fb8", linewidth=5, solid_capstyle="butt")
        dead = finite_max[finite_max <= 0]
        if dead.numel():
            ax.plot(dead.tolist(), [i] * dead.numel(), "x", color="#c0392b", markersize=4)
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_xscale("symlog", linthresh=1.0)
    _site_axis(ax, names)
    ax.set_xlabel("pre-activation z (symlog)")
    return _png(fig)


def _history(monitor: Any) -> bytes | None:
    hist = monitor.history
    if not hist.steps:
        return None
    frac = hist.fractions()
    fig, ax = figure_axes(9.0, 4.0)
    for s, name in enumerate(hist.sites):
        ax.plot(hist.steps, frac[:, s].tolist(), label=name, linewidth=1.3)
    ax.set_xlabel("step")
    ax.set_ylabel(f"dead fraction (window {monitor.window})")
    ax.set_ylim(-0.02, 1.02)
    if len(hist.sites) <= 12:
        ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return _png(fig)


def _worst_first(report: Any) -> list[Any]:
    return sorted(
        report.layers,
        key=lambda r: (-r.dead_fraction, -r.dormant_fraction, -r.rarely_active / max(r.units, 1)),
    )


def _summary_table(report: Any) -> str:
    cols = ["site", "activation", "units", "dead", "dead %", "dormant", "rarely active"]
    cols += ["saturated", "non-finite", "active %", "z min", "z max"]
    rows, classes = [], []
    for r in _worst_first(report):
        s = report.stats[r.name]
        z_lo = z_hi = None
        if s.has_range and s.positions > 0:
            z_lo, z_hi = float(s.z_min.min()), float(s.z_max.max())
        sat = r.saturated if report.computable("saturated", r.name) else "-"
        rows.append(
            [
                r.name,
                r.activation,
                r.units,
                r.dead,
                round(100 * r.dead_fraction, 2),
                r.dormant,
                r.rarely_active,
                sat,
                r.nonfinite,
                round(100 * r.mean_active_fraction, 2),
                z_lo,
                z_hi,
            ]
        )
        classes.append("bad" if r.dead else None)
    numeric = [False, False] + [True] * (len(cols) - 2)
    return grid(cols, rows, table_id="summary-table", numeric=numeric, row_classes=classes)


def _cards(report: Any) -> str:
    s = report.summary()
    cards = [("sites", s["sites"]), ("units", s["units"])]
    for kind in ("dead", "dormant", "rarely_active"):
        cards.append((kind.replace("_", " "), f"{s[kind]} ({100 * s[f'{kind}_fraction']:.2f} %)"))
    inner = "".join(f'<div class="card">{esc(k)}<b>{esc(v)}</b></div>' for k, v in cards)
    return f'<div class="cards">{inner}</div>'


def _causes(explanation: Any) -> str:
    counts = {k: v for k, v in explanation.by_cause().items() if v}
    parts = ['<h2 id="causes">Why the units died</h2>']
    parts.append(
        grid(["cause", "dead units"], [[k, v] for k, v in counts.items()], table_id="causes-table")
    )
    rows = [
        [u.site, u.unit, u.cause, float(u.z_max), u.note]
        for u in explanation.units[:_MAX_CAUSE_ROWS]
    ]
    more = len(explanation.units) - len(rows)
    inner = grid(
        ["site", "unit", "cause", "z max", "note"], rows, numeric=[False, True, False, True, False]
    )
    if more > 0:
        inner += f'<p class="note">{more} more dead unit(s) not listed</p>'
    parts.append(collapsed(f"every dead unit ({len(explanation.units)})", inner))
    if explanation.notes:
        parts.append("<ul>" + "".join(f"<li>{esc(n)}</li>" for n in explanation.notes) + "</ul>")
    return "".join(parts)


def _meta(report: Any) -> str:
    settings = {"tau": report.tau, "rarely_fraction": report.rarely_fraction}
    settings["saturation_threshold"] = report.saturation_threshold
    rows = [[k, str(v)] for k, v in {**settings, **report.meta}.items()]
    return collapsed("settings and run information", grid(["key", "value"], rows))


def render_html(
    source: Any,
    *,
    explanation: Any = None,
    title: str | None = None,
) -> str:
    """The scan report page as a string (see the module docstring).

    Args:
        source: a :class:`~deadrelu.report.Report` or a :class:`~deadrelu.monitor.Monitor`.
        explanation: an :class:`~deadrelu.explain.Explanation` of the same model, or None.
        title: page title (default: names the model class from the report's meta).

    Raises:
        TypeError: ``source`` is neither a Report nor a Monitor.
    """
    monitor = None
    report = source
    if not hasattr(source, "stats") and callable(getattr(source, "report", None)):
        monitor, report = source, source.report()
    if not hasattr(report, "layers") or not hasattr(report, "stats"):
        raise TypeError(
            f"the HTML scan report needs a Report or a Monitor, got {type(source).__name__}"
        )
    model = report.meta.get("model_spec") or report.meta.get("model")
    if not model and monitor is not None:
        model = type(monitor.model).__name__
    model = model or "model"
    title = title or f"deadrelu scan: {model}"
    s = report.summary()
    th = report.thresholds
    parts = [
        f"<h1>{esc(title)}</h1>",
        '<p class="sub">'
        + esc(
            f"{s['dead']} of {s['units']} units dead in {s['sites']} activation sites. "
            f"Dead: never active (z > 0) on any position seen; dormant: ReDo score <= "
            f"{th.tau:g}; rarely active: active on fewer than "
            f"{100 * th.rarely_fraction:g} % of positions."
            + (
                f" From a Monitor: dead over the last {monitor.window} steps, counting "
                + ("every step." if monitor.every == 1 else f"every {monitor.every}th step.")
                if monitor is not None
                else ""
            )
        )
        + "</p>",
        _cards(report),
        '<h2 id="summary">Sites, worst first</h2>',
        _summary_table(report),
        '<h2 id="per-site">Per site</h2>',
        figure(
            _bars(report),
            "dead, dormant and rarely active fraction per site",
            "Fraction of each site's units that are dead, dormant, rarely active.",
        ),
        '<h2 id="depth">By depth</h2>',
        figure(
            _depth(report),
            "dead fraction by depth",
            "Dead and dormant fraction against the site's position in the network.",
        ),
        _frequency(report),
    ]
    ranges = _ranges(report)
    parts.append('<h2 id="ranges">Pre-activation range</h2>')
    if ranges is not None:
        parts.append(
            figure(
                ranges,
                "pre-activation range per site",
                "Grey: smallest z_min to largest z_max over the site's units; blue: 10th to "
                "90th percentile of the units' z_max; red x: units whose z_max <= 0 (dead). "
                "A site whose band lies left of 0 cannot fire.",
            )
        )
    else:
        parts.append(
            '<p class="note">No z range in these statistics: scan with detail="range" '
            '(the default) or a Monitor with detail="range".</p>'
        )
    if explanation is not None:
        parts.append(_causes(explanation))
    if monitor is not None:
        hist = _history(monitor)
        parts.append('<h2 id="history">During training</h2>')
        if hist is not None:
            parts.append(
                figure(
                    hist,
                    "dead fraction per site over steps",
                    "Dead fraction of each site over the Monitor's window, per sampled step.",
                )
            )
        else:
            parts.append('<p class="note">The Monitor has recorded no sampled step yet.</p>')
    parts.append('<h2 id="run">Settings</h2>')
    parts.append(_meta(report))
    return page(title, "\n".join(parts))


def write_html(
    source: Any,
    path: str | Path,
    *,
    explanation: Any = None,
    title: str | None = None,
) -> Path:
    """Write :func:`render_html` to ``path`` (parent folders created); return the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(source, explanation=explanation, title=title), encoding="utf-8")
    return out
